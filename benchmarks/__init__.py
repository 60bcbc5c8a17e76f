"""Speed tools (not shipped in the wheel): run from the repository root, e.g. ``python benchmarks/bench_speed.py``."""
