"""Command line client: prompts in, PNG files and a table of route / score / UNet steps out.

    python -m clients "a red fox in the snow" "an old lighthouse" --out out/ --protocol grpc
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from bll_python.contract import SETTING_FIELDS, field
from bll_python.prompts import read_prompts
from bll_python.settings import Strategy
from clients.client import AdaptiveClient, Generation

DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adaptive-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", nargs="*", help="prompts to generate (or --prompts-file)")
    p.add_argument("--prompts-file", type=Path, help="one prompt per line; lines starting with # are skipped")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--url", help="server address (default 127.0.0.1:8000 for http, :8001 for grpc)")
    p.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNG files")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (one prompt per request, so the server can batch them)")
    for name in SETTING_FIELDS:
        f = field(name)
        if f.dtype == "bool":  # a flag: present means true, absent leaves the server's default
            p.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_const", const=True, default=None, help=f.doc)
            continue
        kind = {"float32": float, "int32": int}.get(f.dtype, str)
        extra = {"choices": [s.value for s in Strategy]} if name == "strategy" else {}
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=f"{f.doc} {f.allowed}".strip(), **extra)
    return p


def prompts_of(args: argparse.Namespace) -> list[str]:
    """The prompts given as arguments, then those of ``--prompts-file``."""
    return list(args.prompts) + (read_prompts(args.prompts_file) if args.prompts_file else [])


def generate_all(client_factory, prompts: Sequence[str], seed: int, negative: str | None, concurrency: int, settings: dict) -> list[Generation]:
    """One request per prompt, ``concurrency`` at a time; results in prompt order."""

    def one(i: int) -> Generation:
        with client_factory() as client:
            neg = [negative] if negative is not None else None
            return client.generate([prompts[i]], [seed + i], neg, **settings)[0]

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(pool.map(one, range(len(prompts))))


def save_pngs(results: Sequence[Generation], out: Path, tag: str = "") -> list[Path]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, r in enumerate(results):
        path = out / f"{tag}{i:03d}_{r.route}_seed{r.seed}.png"
        Image.fromarray(r.image).save(path)
        paths.append(path)
    return paths


def table(results: Sequence[Generation], paths: Sequence[Path] | None = None) -> str:
    rows = [f"{'#':>3}  {'route':<11} {'score':>8} {'k':>5} {'steps':>5} {'latency':>8}  prompt"]
    for i, r in enumerate(results):
        prompt = r.prompt if len(r.prompt) <= 60 else r.prompt[:57] + "..."
        mark = " (truncated)" if r.truncated else ""
        k = "-" if r.effective_k < 0 else f"{r.effective_k:g}"  # -1: no percentile
        rows.append(f"{i:>3}  {r.route:<11} {r.score:>8.4f} {k:>5} {r.unet_steps:>5} {r.latency_s * 1000:>6.0f}ms  {prompt}{mark}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    prompts = prompts_of(args)
    if not prompts:
        parser().error("give prompts as arguments or with --prompts-file")
    url = args.url or DEFAULT_URLS[args.protocol]
    settings = {name: getattr(args, name) for name in SETTING_FIELDS}
    try:
        results = generate_all(lambda: AdaptiveClient(url, args.protocol), prompts, args.seed, args.negative_prompt, args.concurrency, settings)
    except Exception as e:  # tritonclient raises its own exception types per protocol
        print(f"error: {e}", file=sys.stderr)
        return 1
    paths = save_pngs(results, args.out, tag=f"{args.protocol}_")
    print(table(results))
    print(f"{len(paths)} images written to {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
