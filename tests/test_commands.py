"""The `latent-cnf` console script: each command is its module's `python -m` entry point, flags and all."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from latent_cnf.commands import COMMANDS, main

ROOT = Path(__file__).parent.parent


EXTRAS = importlib.metadata.metadata("latent-cnf").get_all("Provides-Extra") or []


def test_the_console_script_is_declared() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="latent-cnf")
    assert script.value == "latent_cnf.commands:main"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_prints_the_help_of_its_module(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    command = COMMANDS[name]
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    through_script = capsys.readouterr().out
    with pytest.raises(SystemExit):
        importlib.import_module(command.module).main(["--help"])
    assert through_script == capsys.readouterr().out and "usage:" in through_script
    assert command.extra in EXTRAS


def test_usage_lists_every_command_and_an_unknown_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in COMMANDS) and "python -m train.evaluate" in listed
    with pytest.raises(SystemExit, match="no command 'serv'"):
        main(["serv"])


def test_a_command_runs_with_its_arguments(tmp_path: Path) -> None:
    """`latent-cnf results FILE` prints what `python -m train.results FILE` prints (the installed script)."""
    shipped = str(ROOT / "docs" / "results" / "mnist-final-cond.json")
    script = Path(sys.executable).with_name("latent-cnf")
    via_script = subprocess.run([script, "results", shipped], capture_output=True, text=True, check=True)
    via_module = subprocess.run(
        [sys.executable, "-m", "train.results", shipped], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert via_script.stdout == via_module.stdout and "mnist-final-cond" in via_script.stdout
