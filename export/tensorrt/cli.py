"""``python -m export.tensorrt``: FP16 engines from an ONNX Runtime repository, written as a GPU repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from bll_python.deployment import Deployment
from bll_python.layout import assets_dir
from export.tensorrt.availability import TensorRTUnavailable
from export.tensorrt.engine_precision import EnginePrecisionError
from export.tensorrt.plan import BuildOptions
from export.tensorrt.repository import build_tensorrt_repository
from export.triton.configs import BACKENDS
from export.triton.placement import Placement
from export.triton.tensorrt import MIB


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__)
    parser.add_argument("--source", type=Path, required=True, help="ONNX Runtime repository written by python -m export")
    parser.add_argument("--target", type=Path, required=True, help="TensorRT repository to write")
    parser.add_argument("--backend", choices=BACKENDS, default="tensorrt", help="tensorrt: NVIDIA container; python-trt: pip server")
    parser.add_argument("--gpus", type=int, nargs="*", help="device ids for instance_group (default: every visible GPU)")
    parser.add_argument("--accept-rate", type=float, help="expected student accept rate; sizes student/teacher instances")
    parser.add_argument("--unet-instances", type=int, default=2, help="UNet instances per GPU, split by --accept-rate")
    parser.add_argument("--cost-ratio", type=float, default=1.0, help="teacher UNet step cost / student UNet step cost")
    parser.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level (0-5)")
    parser.add_argument("--timing-cache", type=Path, help="persistent timing cache (default: next to --target)")
    args = parser.parse_args(argv)
    placement = None
    if args.accept_rate is not None:
        defaults = Deployment.load(assets_dir(args.source)).defaults
        placement = Placement.from_accept_rate(
            args.accept_rate, student_steps=defaults.student_steps, teacher_steps=defaults.teacher_steps, unet_instances=args.unet_instances, cost_ratio=args.cost_ratio
        )
    try:
        written, results = build_tensorrt_repository(
            args.source, args.target, backend=args.backend, placement=placement, gpus=args.gpus,
            timing_cache=args.timing_cache, options=BuildOptions(builder_optimization_level=args.opt_level),
        )  # fmt: skip
    except (TensorRTUnavailable, EnginePrecisionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"  {r.component:<13} {r.plan_bytes / MIB:9.1f} MiB  {r.seconds:7.1f} s  {len(r.fp32_nodes)} ONNX nodes in FP32; engine: {r.precision.summary()}")
    print(f"repository: {written.repository} ({written.backend})\nserve with: python -m export.launcher --repository {written.repository}")
    return 0
