"""Benchmarks: perf_analyzer sweeps, in-process limit, tau calibration, quality harness."""
