"""Bad input gets a clear 4xx in one JSON shape; the service keeps serving."""

from __future__ import annotations

import pytest

from .bad_inputs import CASES, RGBA


def test_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name, method, path, kwargs, status", CASES, ids=[case[0] for case in CASES])
def test_bad_input(client, name, method, path, kwargs, status):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]


def test_service_still_serves_after_the_corpus(client):
    for _, method, path, kwargs, _ in CASES:
        getattr(client, method)(path, **kwargs)
    assert client.post("/generate", json={"n": 1, "seed": 1}).status_code == 200
    assert client.post("/score", files={"file": ("rgba.png", RGBA)}).status_code == 200


def test_error_messages_name_the_problem(client):
    assert "n" in client.post("/generate", json={"n": 0}).json()["error"]["message"]
    assert "empty" in client.post("/score", files={"file": ("a.png", b"")}).json()["error"]["message"]
    assert "a.txt" in client.post("/score", files={"file": ("a.txt", b"hi")}).json()["error"]["message"]
