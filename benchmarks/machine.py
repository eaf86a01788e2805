"""What a measurement ran on: the numbers mean little without it on a shared 2-core machine."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import onnxruntime

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average_1_5_15": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def describe(info: dict[str, Any]) -> str:
    load = "/".join(f"{x:.1f}" for x in info["load_average_1_5_15"])
    return f"{info['nproc']} x {info['cpu_model']}, load {load} at start, {info['date']}"
