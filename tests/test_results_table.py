"""python -m train.results: docs/results.md's main table is what the command prints for docs/results/*.json."""

from __future__ import annotations

import pytest

from train import results

from .conftest import REPO, run_offline

JSONS = sorted((REPO / "docs" / "results").glob("*.json"))


def test_the_docs_table_is_the_commands_output_over_every_result_file():
    """The command of docs/results.md runs as written (a judge's JSON among the files is skipped)."""
    assert any(not results.is_evaluation(results.json.loads(p.read_text())) for p in JSONS)  # the case is real
    assert results.table(JSONS) in (REPO / "docs" / "results.md").read_text()


def test_help_and_a_missing_argument_are_answered_by_argparse():
    assert "evaluation JSONs" in run_offline("train.results", "--help").stdout
    done = run_offline("train.results")
    assert done.returncode == 2 and "the following arguments are required: files" in done.stderr


def test_a_file_that_is_not_an_evaluation_is_named_on_stderr(capsys):
    loco = REPO / "docs" / "results" / "mnist-outlier-judge-loco.json"
    results.main([str(loco), str(JSONS[0])])
    captured = capsys.readouterr()
    assert f"skipped {loco}: not a train.evaluate result" in captured.err
    assert captured.out.startswith("| checkpoint | test NLL")


def test_a_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        results.main([str(tmp_path / "nope.json")])
    assert stopped.value.code == 2


def test_a_result_from_before_seeds_and_intervals_says_so():
    """Its -ELBO is the old column and its K was per label: the row must not pass for today's protocol."""
    old = next(results.json.loads(p.read_text()) for p in JSONS if p.name == "mnist-vae-gauss.json")
    assert "seeds" not in old  # measured before this protocol
    cells = [cell.strip() for cell in results.row(old).strip("|").split("|")]
    assert cells[2].endswith("(old def.)") and "per label" in cells[10] and cells[11] == "single seed (old)"
    assert " .. " not in results.row(old)
