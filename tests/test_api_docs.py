"""docs/api.md's examples, run as tests/test_readme.py runs the README's: every curl example against the app,
every shown field matched, and the example request file equal to what /score makes of the example digit."""

from __future__ import annotations

import json

import pytest

from .conftest import REPO
from .test_readme import check_curl_example, curl_examples
from .test_v2_protocol import digit_pixels

API = (REPO / "docs" / "api.md").read_text()
V2_ROUTES = ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/", "/ready", "/config", "/infer")


def test_every_v2_route_has_an_example():
    paths = [command.split()[2].removeprefix("localhost:8000") for command, _ in curl_examples(API)]
    for route in V2_ROUTES:
        assert any(route in path for path in paths), f"docs/api.md has no curl example for {route}"
    for command, shown in curl_examples(API):  # its answer shown, or an image saved to a file
        assert shown is not None or " -o " in command, f"docs/api.md shows no answer to {command}"


@pytest.mark.parametrize("command, shown", curl_examples(API), ids=lambda value: str(value)[:70])
def test_curl_example(client, command, shown):
    check_curl_example(client, command, shown)


def test_example_request_holds_the_digit_as_score_prepares_it():
    request = json.loads((REPO / "docs" / "examples" / "digit-v2.json").read_text())
    images = request["inputs"][0]
    assert images["shape"] == [1, 1, 28, 28] and images["data"] == digit_pixels().reshape(-1).tolist()
