"""bench/service.py's reading of wrk: what bench/wrk_report.lua prints, parsed without needing wrk itself."""

import pytest

from bench import wrk_load

SUMMARY = (
    'WRK_JSON {"duration_us": 5000000, "requests": 1000, "bytes": 843344, "connect": 0, "read": 2, "write": 0, '
    '"status": 10, "timeout": 3, "mean_us": 1959.8, "max_us": 5543, "p50_us": 1400, "p95_us": 5057, "p99_us": 5495}'
)


def test_parse_reads_the_summary_line_among_wrks_own_output():
    """Non-2xx responses are completed requests but not ok ones; every other error kind is listed by name."""
    stdout = f"Running 5s test @ http://127.0.0.1:8000/generate\n  1 threads and 32 connections\n{SUMMARY}\n"
    result = wrk_load.parse(stdout)
    assert result["ok"] == 990 and result["ok_per_s"] == pytest.approx(198.0)
    assert (result["p50_ms"], result["p95_ms"], result["p99_ms"]) == (1.4, 5.057, 5.495)
    assert result["errors"] == {"read": 2, "timeout": 3, "not 2xx/3xx": 10}


def test_parse_fails_loudly_without_a_summary():
    with pytest.raises(ValueError, match="WRK_JSON"):
        wrk_load.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_command_is_one_closed_loop_thread_running_the_report_script(tmp_path, monkeypatch):
    monkeypatch.setattr(wrk_load.shutil, "which", lambda name: f"/usr/bin/{name}")
    body = tmp_path / "body"
    args = wrk_load.command("http://h/generate", "POST", body, "application/json", 32, 4.6, 60)
    assert args[:5] == ["/usr/bin/wrk", "-t1", "-c32", "-d5s", "--timeout=60s"]
    assert args[-4:] == ["--", "POST", "application/json", str(body)] and wrk_load.SCRIPT.is_file()
