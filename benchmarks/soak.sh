#!/usr/bin/env bash
# Soak test: perf_analyzer at concurrency 8 against adaptive_diffusion on the tiny default for
# --minutes (default 10); reports failed requests, server RSS growth and p99 drift, and writes
# benchmarks/results/soak/soak-<time>.json. Arguments go to benchmarks/soak.py (--help).
# Exit 0 when the targets hold (no failed request, RSS growth after warm-up < 5 %), else 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m benchmarks.soak "$@"
