"""The model repository: versions on disk, load and unload without a restart (Triton's repository extension),
versioned v2 paths, the native API's `version`, the control token, and traffic that keeps flowing meanwhile."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from bench.harness import running_service
from latent_cnf import model_folder
from service.app import create_app
from service.repository import ModelRepository
from service.settings import Settings
from train.loop import Trainer

from .conftest import REPO
from .service_helpers import ONE_THREAD, wait_ready
from .test_readme import blocks, check_curl_example, curl_examples, request_of, send
from .test_train import options

SHIPPED = model_folder.MODELS_DIR / "mnist-final"  # the smallest shipped model: the repository's steady one
TOKEN = "s3cret-token"


def trained(tiny_dataset: Path, out: Path, steps: int) -> Path:
    """A freshly trained tiny model folder, as training exports it."""
    Trainer(options(tiny_dataset, out, "vae-cnf-prior", run={"max_steps": steps})).run()
    return out / "checkpoint"


@pytest.fixture
def folders(tiny_dataset: Path, tmp_path: Path) -> tuple[Path, Path]:
    return trained(tiny_dataset, tmp_path / "a", 2), trained(tiny_dataset, tmp_path / "b", 3)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    shutil.copytree(SHIPPED, root / "digits")  # a model folder as it is: version 1
    return root


def drop(folder: Path, destination: Path) -> None:
    """Put a model folder into the repository as operators should: complete elsewhere, then renamed in at once."""
    staged = destination.parent.parent / f".staged-{destination.parent.name}-{destination.name}"
    shutil.copytree(folder, staged)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(destination)


def test_layout_and_version_policy(tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(SHIPPED, root / "plain")
    for version in ("1", "3", "12"):
        shutil.copytree(SHIPPED, root / "versioned" / version)
    (root / "versioned" / "07").mkdir()  # not a version: leading zero
    (root / "versioned" / "draft").mkdir()
    (root / "empty").mkdir()
    latest, every = ModelRepository(root), ModelRepository(root, "all")
    assert latest.names() == ["plain", "versioned"]
    assert latest.versions("plain") == [1] and latest.versions("versioned") == [1, 3, 12]
    assert latest.to_serve("versioned") == [12] and every.to_serve("versioned") == [1, 3, 12]
    assert latest.folder("versioned", 3) == root / "versioned" / "3" and latest.folder("plain", 1) == root / "plain"
    assert latest.versions("..") == [] and latest.versions("../r") == [] and latest.versions("nope") == []
    assert ModelRepository(tmp_path / "missing").names() == []


@pytest.fixture
def client(repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=repository, default_model="digits", model_process=False, threads=1)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def generate(client: TestClient, **body) -> httpx.Response:
    return client.post("/generate", json={"n": 2, "seed": 4} | body)


def test_train_drop_in_load_compare_unload(client: TestClient, repository: Path, folders: tuple[Path, Path]) -> None:
    """The operations workflow: a model dropped into the repository is served only once loaded; a new version
    replaces it under the latest policy; unloading stops it; the steady model never notices."""
    steady = generate(client, model="digits").json()
    assert client.post("/v2/repository/index").json() == [
        {"name": "digits", "version": "1", "state": "READY", "reason": ""}
    ]
    shutil.copytree(folders[0], repository / "tiny" / "1")
    index = client.post("/v2/repository/index").json()
    assert {"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"} in index
    refused = generate(client, model="tiny")
    assert refused.status_code == 404 and "/v2/repository/models/tiny/load" in refused.json()["error"]["message"]

    loaded = client.post("/v2/repository/models/tiny/load")
    assert loaded.status_code == 200 and loaded.json() == {"name": "tiny", "versions": ["1"]}
    first = generate(client, model="tiny").json()
    assert first["model"] == "tiny" and len(first["images"]) == 2
    assert client.get("/v1/models/tiny").json()["versions"] == [1]

    shutil.copytree(folders[1], repository / "tiny" / "2")
    assert client.post("/v2/repository/models/tiny.generate/load").json() == {"name": "tiny", "versions": ["2"]}
    second = generate(client, model="tiny").json()
    assert second["latents"] != first["latents"]  # other weights, same seed
    assert generate(client, model="tiny", version=2).json()["latents"] == second["latents"]
    gone = generate(client, model="tiny", version=1)
    assert gone.status_code == 404 and "loaded: [2]" in gone.json()["error"]["message"]
    states = {(e["name"], e["version"]): e["state"] for e in client.post("/v2/repository/index").json()}
    assert states == {("digits", "1"): "READY", ("tiny", "1"): "UNAVAILABLE", ("tiny", "2"): "READY"}

    v2 = {"inputs": [{"name": "N", "datatype": "INT32", "shape": [1], "data": [2]}]}
    v2["inputs"].append({"name": "SEED", "datatype": "INT64", "shape": [1], "data": [4]})
    assert client.get("/v2/models/tiny.generate").json()["versions"] == ["2"]
    assert client.get("/v2/models/tiny.generate/versions/2/ready").json() == {"name": "tiny.generate", "ready": True}
    out = client.post("/v2/models/tiny.generate/versions/2/infer", json=v2).json()["outputs"]
    latents = next(o for o in out if o["name"] == "LATENTS")["data"]
    np.testing.assert_allclose(latents, np.ravel(second["latents"]), rtol=1e-6)
    missing = client.post("/v2/models/tiny.generate/versions/1/infer", json=v2)
    assert missing.status_code == 404 and "no version 1" in missing.json()["error"]
    assert client.get("/v2/models/tiny.generate/versions/x1/ready").status_code == 404

    assert client.post("/v2/repository/models/tiny/unload").json() == {"name": "tiny", "versions": ["2"]}
    assert generate(client, model="tiny").status_code == 404
    again = client.post("/v2/repository/models/tiny/unload")
    assert again.status_code == 404 and "not loaded" in again.json()["error"]
    assert client.post("/v2/repository/index", json={"ready": True}).json() == [
        {"name": "digits", "version": "1", "state": "READY", "reason": ""}
    ]
    assert generate(client, model="digits").json()["latents"] == steady["latents"]
    assert client.post("/v2/repository/models/nothing/load").status_code == 404
    metrics = client.get("/metrics").text
    assert "latent_cnf_model_info{checkpoint_sha256" in metrics and 'model="tiny"' not in metrics


def test_a_broken_version_keeps_the_old_one_serving(client: TestClient, repository: Path, folders) -> None:
    shutil.copytree(folders[0], repository / "tiny" / "1")
    client.post("/v2/repository/models/tiny/load")
    broken = repository / "tiny" / "2"
    shutil.copytree(folders[1], broken)
    (broken / model_folder.CONFIG_FILE).write_text("{not json")
    failed = client.post("/v2/repository/models/tiny/load")
    assert failed.status_code == 400 and "version 2 failed to load" in failed.json()["error"]
    assert generate(client, model="tiny").status_code == 200  # version 1 still serves
    index = {(e["name"], e["version"]): e for e in client.post("/v2/repository/index").json()}
    assert index[("tiny", "1")]["state"] == "READY" and index[("tiny", "2")]["state"] == "UNAVAILABLE"
    assert "version 2" in index[("tiny", "2")]["reason"]


def test_unloading_drains_the_requests_already_running(client: TestClient, repository: Path, folders) -> None:
    """A request that holds the model when the unload comes gets its answer; the next one gets 404."""
    shutil.copytree(folders[0], repository / "tiny")
    client.post("/v2/repository/models/tiny/load")
    hub = client.app.state.hub
    answers: list[httpx.Response] = []
    slow = {"model": "tiny", "n": 256, "solver": {"method": "rk4", "steps": 64}}
    running = threading.Thread(target=lambda: answers.append(client.post("/generate", json=slow)))
    running.start()
    while not hub.registry._in_flight and running.is_alive():  # held: queued or running
        threading.Event().wait(0.001)
    assert running.is_alive(), "the request ended before the unload could meet it"
    assert client.post("/v2/repository/models/tiny/unload").status_code == 200
    running.join()
    assert answers[0].status_code == 200 and len(answers[0].json()["images"]) == 256
    assert generate(client, model="tiny").status_code == 404


def test_all_versions_policy_serves_each(repository: Path, folders) -> None:
    for version, folder in zip((1, 2), folders, strict=True):
        shutil.copytree(folder, repository / "tiny" / str(version))
    settings = Settings(
        model_repository=repository, version_policy="all", default_model="digits", model_process=False, threads=1
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.get("/v1/models/tiny").json()["versions"] == [1, 2]
        one, two = (generate(client, model="tiny", version=v).json()["latents"] for v in (1, 2))
        assert one != two and generate(client, model="tiny").json()["latents"] == two  # the newest by default


def test_poll_mode_follows_the_folder(repository: Path, folders) -> None:
    settings = Settings(
        model_repository=repository, default_model="digits", repository_poll_s=0.05, model_process=False
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)

        def served_versions() -> list[int] | None:
            answer = client.get("/v1/models/tiny")
            return answer.json()["versions"] if answer.status_code == 200 else None

        def until(expected: list[int] | None) -> None:
            deadline = time.monotonic() + 60
            while served_versions() != expected:
                assert time.monotonic() < deadline, f"the service did not follow the folder to {expected}"
                time.sleep(0.02)

        drop(folders[0], repository / "tiny" / "1")
        until([1])
        drop(folders[1], repository / "tiny" / "2")
        until([2])
        shutil.rmtree(repository / "tiny")
        until(None)
        assert generate(client, model="digits").status_code == 200


def test_control_calls_need_the_token_and_inference_does_not(repository: Path, folders) -> None:
    shutil.copytree(folders[0], repository / "tiny")
    settings = Settings(
        model_repository=repository, models=["digits"], default_model="digits", control_token=TOKEN, model_process=False
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = client.post("/v2/repository/models/tiny/load", headers=header)
            assert refused.status_code == 401 and "LATENT_CNF_CONTROL_TOKEN" in refused.json()["error"]
        assert client.post("/v2/repository/index").status_code == 200  # reading the index needs none
        good = client.post("/v2/repository/models/tiny/load", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200 and generate(client, model="tiny").status_code == 200


def test_tritonclient_drives_the_repository_while_traffic_flows(repository: Path, folders) -> None:
    """NVIDIA's client loads, infers on and unloads a freshly trained model on a real server, while /generate
    traffic for the steady model runs beside it: no request fails, and answers keep coming during the load.
    Requests for the model itself while its version 2 replaces version 1 all succeed too."""
    shutil.copytree(folders[0], repository / "tiny" / "1")
    env = {"LATENT_CNF_MODEL_REPOSITORY": str(repository), "LATENT_CNF_DEFAULT_MODEL": "digits", **ONE_THREAD}
    env["LATENT_CNF_MODELS"] = "digits"
    with running_service(env, timeout_s=180) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        index = client.get_model_repository_index()
        assert {"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"} in index
        statuses: list[int] = []
        switching: list[int] = []  # requests for tiny itself while its version 2 replaces version 1
        during: list[int] = []
        stop, switched = threading.Event(), threading.Event()

        def traffic(model: str, answers: list[int], until: threading.Event) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not until.is_set():
                    answers.append(http.post("/generate", json={"n": 1, "model": model}).status_code)

        worker = threading.Thread(target=traffic, args=("digits", statuses, stop))
        worker.start()
        try:
            while len(statuses) < 5:
                stop.wait(0.01)
            before = len(statuses)
            client.load_model("tiny")
            during.append(len(statuses) - before)
            assert client.is_model_ready("tiny.generate")
            request = triton.InferInput("N", [1], "INT32")
            request.set_data_from_numpy(np.array([3], dtype=np.int32))
            images = client.infer("tiny.generate", [request]).as_numpy("IMAGES")
            assert images.shape == (3, 1, 28, 28)
            shutil.copytree(folders[1], repository / "tiny" / "2")
            same_model = threading.Thread(target=traffic, args=("tiny", switching, switched))
            same_model.start()
            client.load_model("tiny")
            switched.set()
            same_model.join()
            assert client.get_model_metadata("tiny.generate")["versions"] == ["2"]
            unloading, unloaded = [], threading.Event()
            mid_unload = threading.Thread(target=traffic, args=("tiny", unloading, unloaded))
            mid_unload.start()
            while not unloading:
                unloaded.wait(0.01)
            client.unload_model("tiny")
            while unloading[-1] == 200:  # in flight: answered; after: 503 while it unloads, then 404
                unloaded.wait(0.01)
            unloaded.set()
            mid_unload.join()
            with pytest.raises(InferenceServerException, match="not loaded"):
                client.infer("tiny.generate", [request])
        finally:
            stop.set()
            worker.join()
        assert set(statuses) == {200} and during[0] >= 1, (set(statuses), during)
        assert set(switching) == {200} and switching, set(switching)  # version 1 or 2, never an error
        assert unloading[0] == 200 and set(unloading) <= {200, 404, 503}, set(unloading)  # answered or refused


OPERATIONS = (REPO / "docs" / "operations.md").read_text()
WORKFLOW = OPERATIONS[OPERATIONS.index("## Retraining without a restart") : OPERATIONS.index("## The model process")]


def test_the_documented_workflow_runs_as_written(tiny_dataset: Path, tmp_path: Path) -> None:
    """docs/operations.md's repository workflow: its service settings and training command as written, then
    every curl command in order against a repository laid out as the commands lay it out."""
    shell = [code for lang, code, _ in blocks(text=WORKFLOW) if lang == "sh"]
    serve = next(line for code in shell for line in code.splitlines() if line.endswith("python -m service"))
    env = dict(word.split("=", 1) for word in serve.split()[:-3])
    train_line = next(line for code in shell for line in code.splitlines() if line.startswith("python -m train "))
    from train.__main__ import build_parser

    assert build_parser().parse_args(train_line.split()[3:]).preset == "vae-cnf-prior"  # the command parses
    repository = tmp_path / env["LATENT_CNF_MODEL_REPOSITORY"]
    shutil.copytree(SHIPPED, repository / "digits")
    fresh = trained(tiny_dataset, tmp_path / "runs" / "fresh", 2)
    settings = Settings(
        model_repository=repository,
        default_model=env["LATENT_CNF_DEFAULT_MODEL"],
        control_token=env["LATENT_CNF_CONTROL_TOKEN"],
        model_process=False,
    )
    examples = curl_examples(WORKFLOW)
    assert len(examples) == 5 and all(shown is not None for _, shown in examples)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        drop(fresh, repository / "fresh" / "1")  # trained while the service runs
        for command, shown in examples:
            if "/load" in command:  # as the text says: without the token, 401
                request = request_of(command)
                request["headers"].pop("authorization")
                assert send(client, request).status_code == 401
            check_curl_example(client, command, shown)
