"""The benchmarks of docs/benchmarks.md, each run as `python bench/NAME.py` or `python -m bench.NAME`;
harness.py is what they and the tests share (servers on loopback, their metrics, process measurements)."""
