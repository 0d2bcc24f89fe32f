"""Benchmarks (``make bench``): ratios against a baseline run in the same session, never
timing asserts in tests. ``python -m sweep.benchmarks`` writes bench/results.md."""
