#!/usr/bin/env bash
# GPU smoke test, end to end: export tiny -> FP16 TensorRT engines -> validate vs ONNX Runtime ->
# serve (python-trt) -> served vs in-process images -> perf_analyzer. Arguments go to
# benchmarks/gpu_smoke.py (--help). Exit 0 pass, 1 fail, 2 no GPU here (stopped before GPU stages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m benchmarks.gpu_smoke "$@"
