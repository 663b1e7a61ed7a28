"""python -m service --help: every option and every LATENT_CNF_* setting explained."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

from service.settings import GROUPS, Settings

from .conftest import REPO


def test_help_describes_the_options_and_every_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    help_text = result.stdout
    for phrase in ("address to listen on", "TCP port", "uvicorn's log level", "LATENT_CNF_* environment variables"):
        assert phrase in help_text
    for name, field in Settings.model_fields.items():
        assert f"LATENT_CNF_{name.upper()}" in help_text and field.description in help_text, name
    assert f"LATENT_CNF_MAX_BATCH (default: {Settings.model_fields['max_batch'].default})" in help_text


def test_every_setting_is_in_exactly_one_group_and_help_shows_the_groups() -> None:
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields), "service/settings.py GROUPS must list each setting once"
    from service.__main__ import settings_help, settings_table

    for group in GROUPS:
        assert f" {group}:" in settings_help() and f"| **{group}** | | |" in settings_table()


def test_a_port_in_use_is_reported_at_once_before_any_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "service", "--port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is in use by another process" in result.stderr and "--port" in result.stderr
    assert "loaded" not in result.stderr + result.stdout  # said before loading anything


def test_start_up_says_where_the_page_is_and_when_it_is_ready() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"LATENT_CNF_MODELS": "mnist-final", "LATENT_CNF_DEFAULT_MODEL": "mnist-final"}
    command = [sys.executable, "-u", "-m", "service", "--port", str(port)]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = threading.Timer(120, server.kill)  # a server that never says ready ends the read loop
    deadline.start()
    try:
        assert server.stdout is not None
        for line in server.stdout:
            lines.append(line)
            if "ready:" in line:
                break
    finally:
        deadline.cancel()
        server.terminate()
        server.wait(timeout=60)
    output = "".join(lines)
    assert f"the page is at http://127.0.0.1:{port}/ and the API docs at http://127.0.0.1:{port}/docs" in output
    assert "ready: serving mnist-final (default mnist-final)" in output, output
