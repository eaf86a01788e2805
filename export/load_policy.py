"""Switch a repository's load-aware gate on or off: ``python -m export.load_policy REPOSITORY ...``.

The policy's settings are deployment settings, so they live in the repository's manifest
(``adaptive_diffusion/1/assets/deployment.json``, key ``load_policy``); the server reads them when
it loads the model. What the numbers mean: ``bll_python/load_policy.py``; how to choose
``--high-load`` for a machine: ``benchmarks/README.md`` ("A tau that follows the queue").

    python -m export.load_policy artifacts/tiny/repository --floor-k 0 --high-load 4 --low-load 1
    python -m export.load_policy artifacts/tiny/repository --off
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from bll_python.deployment import Deployment
from bll_python.layout import assets_dir
from bll_python.load_policy import LoadPolicySettings
from bll_python.settings import SettingsError


def set_load_policy(repository: Path, settings: LoadPolicySettings | None) -> Path:
    """Store ``settings`` (None: a static k) in ``repository``'s manifest; returns the manifest path."""
    deployment = Deployment.load(assets_dir(repository))
    return replace(deployment, load_policy=settings).save(assets_dir(repository))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.load_policy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repository", type=Path)
    p.add_argument("--off", action="store_true", help="a static k again (no load policy)")
    defaults = LoadPolicySettings(floor_k=0.0, high_load=1.0, low_load=0.0)
    p.add_argument("--floor-k", type=float, default=None, help="the lowest effective k under load (0..100)")
    p.add_argument("--high-load", type=float, default=None, help="rows in flight, server-wide, above which k steps down")
    p.add_argument("--low-load", type=float, default=None, help="rows in flight at or below which k steps back up (< --high-load)")
    p.add_argument("--step", type=float, default=defaults.step, help=f"fraction of the way to the floor per step (default {defaults.step})")
    p.add_argument("--step-down-every", type=float, default=defaults.step_down_every_s, metavar="S", help=f"at most one step down per S seconds (default {defaults.step_down_every_s})")
    p.add_argument("--step-up-after", type=float, default=defaults.step_up_after_s, metavar="S", help=f"S seconds of calm per step up (default {defaults.step_up_after_s})")
    args = p.parse_args(argv)
    if args.off:
        path = set_load_policy(args.repository, None)
        print(f"load policy off (a static k) in {path}")
        return 0
    missing = [f"--{n.replace('_', '-')}" for n in ("floor_k", "high_load", "low_load") if getattr(args, n) is None]
    if missing:
        p.error(f"{', '.join(missing)} required (or --off)")
    try:
        settings = LoadPolicySettings(args.floor_k, args.high_load, args.low_load, args.step, args.step_down_every, args.step_up_after)
    except SettingsError as e:
        p.error(str(e))
    path = set_load_policy(args.repository, settings)
    print(f"load policy {settings.to_json()} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
