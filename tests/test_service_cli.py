"""python -m service --help: every option and every LATENT_CNF_* setting explained."""

from __future__ import annotations

import subprocess
import sys

from service.settings import Settings

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
