import json

from bench import train_step


def test_train_step_bench_times_every_variant_from_a_checkpoint_config(data_dir, tmp_path, capsys):
    """The table has every variant; ours runs the checkpoint's own training solve (rk4 x 8 = 32 NFE)."""
    out = tmp_path / "bench.json"
    argv = ["--checkpoint", "mnist-final-cond", "--data-dir", str(data_dir), "--batch-size", "8", "--steps", "1"]
    train_step.main([*argv, "--json", str(out)])
    result = json.loads(out.read_text())
    rows = {row["variant"]: row for row in result["rows"]}
    assert result["preset"] == "final-cond" and result["batch_size"] == 8 and len(rows) == 5
    ours = result["rows"][-1]
    assert ours["variant"].startswith("ours") and ours["forward_nfe"] == 32 and ours["speedup_of_ours"] == 1.0
    assert rows["closed-form trace + rk4 x8, backprop"]["forward_nfe"] == 32
    assert all(row["seconds_per_step"] > 0 and row["forward_nfe"] > 0 for row in rows.values())
    assert "without discriminator" in capsys.readouterr().out
