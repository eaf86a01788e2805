"""``python -m export.gateway --repository PATH --upstream HOST:PORT [...]``: HAProxy in the foreground.

The limits come from the repository (``GatewayConfig.for_repository``); several ``--upstream``
servers share the load (least connections). ``--print-config`` prints the HAProxy config and exits.
The launcher starts one in front of its own server with ``--gateway-port``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from export.gateway.config import DEFAULT_PORT, GatewayConfig
from export.gateway.haproxy import render
from export.gateway.process import Gateway, GatewayError


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True, help="the repository the servers serve (limits are derived from it)")
    parser.add_argument("--upstream", type=_hostport, action="append", required=True, metavar="HOST:PORT", help="a server's HTTP address; repeat for several")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to serve other hosts)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--requests-per-10s", type=int, default=GatewayConfig.requests_per_10s, help="per client address")
    parser.add_argument("--print-config", action="store_true")
    args = parser.parse_args(argv)
    config = GatewayConfig.for_repository(args.repository, args.upstream, host=args.host, port=args.port, requests_per_10s=args.requests_per_10s)
    if args.print_config:
        print(render(config))
        return 0
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    try:
        with Gateway(config) as gateway:
            print(f"gateway on http://{gateway.url} -> {', '.join(f'{u.host}:{u.http_port}' for u in config.upstreams)}", flush=True)
            while not stop.wait(1.0):
                if not gateway.is_alive():
                    print(f"error: haproxy exited:\n{gateway.log_path.read_text(errors='replace')[-2000:]}", file=sys.stderr)
                    return 1
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
