"""The README's and docs' examples, run as written: every curl example against the app, every Python example as
code, every offline command's options, the settings and calibration tables against their sources.

A shown output is a contract: each field shown must match what the app returns now, strings that end in
"..." by their prefix and numbers to the decimals shown (within one unit of the last shown digit, so the
test does not depend on float rounding of another CPU). Editing the model without updating the README
fails here, with the response that the README should show.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

import latent_cnf
from latent_cnf import SolverConfig, model_folder

from .conftest import REPO, shipped_models

README = (REPO / "README.md").read_text()
MODEL_DOC = (REPO / "docs" / "model.md").read_text()  # the Python API and the calibrated solvers
TRAINING_DOC = (REPO / "docs" / "training.md").read_text()  # training, pictures and evaluation commands
SETTINGS_DOC = (REPO / "docs" / "settings.md").read_text()
DOCS = sorted(["README.md", *(f"docs/{path.name}" for path in (REPO / "docs").glob("*.md"))])
# where the README's own sections went: their offline commands are checked as the README's were
MOVED_FROM_README = [
    "README.md",
    *(f"docs/{name}.md" for name in ("page", "model", "settings", "training", "architecture")),
]
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(shown_as: str = "json", text: str = README) -> list[tuple[str, str, str | None]]:
    """(language, code, the `shown_as` block right after it or None) for every fenced block of `text`."""
    found = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    out = []
    for i, (lang, code, _, end) in enumerate(found):
        following = found[i + 1] if i + 1 < len(found) else None
        adjacent = following and following[0] == shown_as and not text[end : following[2]].strip()
        out.append((lang, code, following[1] if adjacent else None))
    return out


def curl_examples(text: str = README) -> list[tuple[str, str | None]]:
    examples = []
    for lang, code, shown in blocks(text=text):
        if lang != "sh":
            continue
        commands = [line for line in code.replace("\\\n", " ").splitlines() if line.startswith("curl ")]
        examples += [(command, shown if len(commands) == 1 else None) for command in commands]
    return examples


def request_of(command: str) -> dict[str, Any]:
    """The HTTP request a curl command line sends (the options the README uses)."""
    words = shlex.split(command)[1:]
    request: dict[str, Any] = {"headers": {}, "form": {}, "files": [], "output": None, "body": None, "method": None}
    while words:
        word = words.pop(0)
        if word == "-s":
            continue
        if word == "-X":
            request["method"] = words.pop(0)
            continue
        if word == "-H":
            name, value = words.pop(0).split(":", 1)
            request["headers"][name.strip().lower()] = value.strip()
        elif word == "-d":
            body = words.pop(0)  # @path: the file's contents, which the repo must ship
            request["body"] = (REPO / body[1:]).read_bytes() if body.startswith("@") else body
        elif word == "-F":
            name, value = words.pop(0).split("=", 1)
            if value.startswith("@"):
                path = REPO / value[1:]
                assert path.exists(), f"the README uploads {value[1:]}, which the repo must ship"
                request["files"].append((name, (path.name, path.read_bytes())))
            else:
                request["form"][name] = value
        elif word == "-o":
            request["output"] = words.pop(0)
        elif not word.startswith("-"):
            url = urlsplit(word if "://" in word else f"http://{word}")
            request["path"] = url.path + (f"?{url.query}" if url.query else "")
        else:
            raise AssertionError(f"the README's curl uses {word}, which this test does not understand")
    return request


def send(client, request: dict[str, Any]):
    headers = request["headers"]
    if request["files"]:
        return client.post(request["path"], data=request["form"], files=request["files"], headers=headers)
    if request["body"] is not None:
        return client.post(request["path"], content=request["body"], headers=headers)
    return client.request(request["method"] or "GET", request["path"], headers=headers)


def decimals(number: float) -> int:
    text = repr(number)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def assert_shown(shown: Any, actual: Any, where: str = "") -> None:
    """Every shown field matches: prefixes for "...", numbers to their shown decimals, the rest exactly."""
    if isinstance(shown, dict):
        assert isinstance(actual, dict), where
        for key, value in shown.items():
            assert key in actual, f"{where}.{key} is shown but not returned"
            assert_shown(value, actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list) and len(actual) == len(shown), where
        for i, (a, b) in enumerate(zip(shown, actual, strict=True)):
            assert_shown(a, b, f"{where}[{i}]")
    elif isinstance(shown, str) and shown.endswith("..."):
        assert isinstance(actual, str) and actual.startswith(shown[:-3]), where
    elif isinstance(shown, float) and not isinstance(actual, bool):
        assert abs(actual - shown) <= 10 ** -decimals(shown), f"{where}: shown {shown}, returned {actual}"
    else:
        assert actual == shown, f"{where}: shown {shown!r}, returned {actual!r}"


def test_the_readme_has_examples_to_check():
    examples = curl_examples()
    assert len(examples) >= 5 and sum(shown is not None for _, shown in examples) >= 3


@pytest.mark.parametrize("command, shown", curl_examples(), ids=lambda value: str(value)[:60])
def test_curl_example(client, command, shown):
    check_curl_example(client, command, shown)


def check_curl_example(client, command: str, shown: str | None) -> None:
    """The command's answer from the app: a saved PNG, or JSON with every field the document shows."""
    request = request_of(command)
    response = send(client, request)
    if shown is None:  # an image: the README saves it to a file
        assert response.status_code == 200, response.text
        assert request["output"], f"{command}: an example without shown output should save its result"
        assert Image.open(io.BytesIO(response.content)).format == "PNG"
        return
    body = response.json()
    try:
        assert_shown(json.loads(shown), body)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nthe document shows an outdated answer to\n{command}\nit is now:\n{json.dumps(body)}"
        ) from None


def test_python_examples_run_as_written(data_dir, monkeypatch):
    monkeypatch.setenv("LATENT_CNF_DATA", str(data_dir))
    snippets = [code for lang, code, _ in blocks(text=MODEL_DOC) if lang == "python"]
    assert snippets
    for code in snippets:
        namespace: dict[str, Any] = {}
        exec(compile(code, "docs/model.md", "exec"), namespace)  # noqa: S102 - the docs' own code
    assert namespace["samples"].images.shape == (16, 1, 28, 28)
    assert namespace["samples"].labels.tolist() == [3] * 16
    assert namespace["path"].images.shape == (11, 4, 1, 28, 28)
    assert namespace["score"].log_likelihood.shape == (8,) and (namespace["score"].log_likelihood < 0).all()
    assert namespace["density"].log_prob.shape == (16,) and namespace["density"].log_prob.requires_grad


def test_shipped_example_image_is_the_first_mnist_test_digit(data_dir):
    from latent_cnf.data import load_split

    image = Image.open(Path(REPO / "docs" / "examples" / "digit.png"))
    test = load_split("mnist", "test", data_dir, download=False)
    assert test.labels[0] == 7
    assert torch.equal(torch.from_numpy(np.array(image)), test.images[0])


def cli_commands() -> list[str]:
    """Every `python -m train... --option` command the README and docs give, in code blocks or inline code."""
    texts = [(REPO / path).read_text() for path in MOVED_FROM_README]
    lines = [
        line for text in texts for _, code, _ in blocks(text=text) for line in code.replace("\\\n", " ").splitlines()
    ]
    inline = [" ".join(code.split()) for text in texts for code in re.findall(r"`([^`]+)`", FENCE.sub("", text))]
    found = [re.match(r"(?:\.venv/bin/)?python -m (train\S*)( -.*)", text.strip()) for text in lines + inline]
    return [" ".join(match.groups()) for match in found if match]


def parser_of(module: str):
    return importlib.import_module("train.__main__" if module == "train" else module).build_parser()


@pytest.mark.parametrize("command", cli_commands())
def test_cli_example_parses(command):
    """The docs' training and evaluation commands use options that exist (parsed, not run)."""
    module, *words = shlex.split(command)
    if words != ["--help"]:
        parser_of(module).parse_args(words)


def test_every_training_option_is_documented():
    options = {o for action in parser_of("train")._actions for o in action.option_strings if o.startswith("--")}
    missing = {o for o in options - {"--help"} if f"`{o}" not in TRAINING_DOC}
    assert not missing, f"python -m train options missing from docs/training.md: {sorted(missing)}"


@pytest.mark.slow
def test_quick_evaluation_prints_the_rows_the_readme_shows(data_dir, tmp_path, capsys):
    from train import evaluate

    command, shown = next(
        (code, following) for _, code, following in blocks("text", TRAINING_DOC) if "train.evaluate" in code
    )
    words = shlex.split(command.replace("\\\n", " "))
    words = words[words.index("train.evaluate") + 1 :]
    words[words.index("--data-dir") + 1] = str(data_dir)
    words += ["--json", str(tmp_path / "out.json")]
    evaluate.main(words)
    printed = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines() if line.strip())
    for line in shown.strip().splitlines():
        name, value = line.split()
        assert_shown(float(value), float(printed[name]), name)


def calibration_rows() -> dict[str, list[str]]:
    section = MODEL_DOC[MODEL_DOC.index("**Calibrated solvers.**") :]
    rows = re.findall(r"^\| `([\w-]+)` \|(.*)\|$", section[: section.index("\n\n", section.index("| ---"))], re.M)
    return {name: [cell.strip() for cell in cells.split("|")] for name, cells in rows}


@pytest.mark.parametrize("name", latent_cnf.available())
def test_calibration_table_matches_the_cards(name):
    sample, score = (model_folder.read_serving(name)["solvers"][use] for use in ("sample", "score"))

    def label(entry: dict) -> str:
        spec = SolverConfig(**{k: entry[k] for k in ("method", "steps", "rtol", "atol")})
        return f"{spec} ({entry['nfe']})"

    cells = calibration_rows()[name]
    assert cells[0] == label(sample) and cells[3] == label(score)
    assert_shown(float(cells[1]), sample["max_pixel_error"], f"{name} pixel error")
    assert_shown(float(cells[2].rstrip(" %")), 100 * sample["fid_change"], f"{name} FID change")
    worst, mean = (float(v) for v in cells[4].split(" / "))
    assert_shown(worst, score["max_error_nats"], f"{name} worst score error")
    assert_shown(mean, score["mean_error_nats"], f"{name} mean score error")


@pytest.mark.parametrize("name", shipped_models())
def test_calibration_table_shows_the_held_out_errors(name):
    sample, score = (model_folder.read_serving(name)["solvers"][use]["heldout"] for use in ("sample", "score"))
    pixel, fid_change, score_error = calibration_rows()[name][5].split(" / ")
    assert_shown(float(pixel), sample["max_pixel_error"], f"{name} held-out pixel error")
    assert_shown(float(fid_change.rstrip(" %")), 100 * sample["fid_change"], f"{name} held-out FID change")
    assert_shown(float(score_error), score["max_error_nats"], f"{name} held-out worst score error")


def test_the_settings_table_is_the_one_settings_generates():
    """Every LATENT_CNF_* variable is in docs/settings.md with its default and meaning, as `Settings` says."""
    from service.__main__ import settings_table

    assert settings_table() in SETTINGS_DOC, "docs/settings.md's table is stale: `python -m service --settings-table`"


@pytest.mark.parametrize("path", DOCS)
def test_curl_urls_with_a_query_are_quoted(path):
    """zsh (macOS's shell) expands an unquoted `?` and fails with 'no matches found'."""
    text = (REPO / path).read_text()
    for _, code, _ in blocks(text=text):
        for line in code.replace("\\\n", " ").splitlines():
            if line.startswith("curl "):
                bare = [word for word in shlex.split(line, posix=False) if "?" in word and word[0] not in "'\""]
                assert not bare, f"{path}: quote {bare} in: {line}"
