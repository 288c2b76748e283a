"""Serving benchmark: `python -m benchmarks.serving [--quick]` (see run.py)."""
