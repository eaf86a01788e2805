"""``python -m export.launcher [--repository PATH | --preset tiny]``: tritonserver in the foreground.

Ctrl-C/SIGTERM stops it cleanly (exit status 0). The repository's own server flags (recorded by its
writer, e.g. the TensorRT CUDA pool) are passed on; arguments after ``--`` go to tritonserver
unchanged and come last. The server is supervised: any exit it was not asked for, and any dead
Python-backend stub, restarts it with backoff within a restart budget, or ends the launcher with
status 3 for an orchestrator to restart (``--on-crash exit``, and when the budget is spent).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from export.launcher.config import (
    ADMIN_KEY_ENV,
    DEFAULT_ADMIN_HEADER,
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    GRPC_RESTRICTED_PREFIX,
    RESTRICTED_APIS,
)
from export.launcher.process import ServerStartError, TritonServer, exit_with_parent
from bll_python.restarts import restarts_env
from export.gateway.process import GatewayError
from export.launcher.watchdog import ON_CRASH, RestartPolicy, supervise

# The status for "down, restart me": a crash under --on-crash exit, or a spent restart budget.
CRASH_EXIT_STATUS = 3


class _Interrupted(Exception):
    pass


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m export.launcher",
        description="Run tritonserver (from the nvidia-pytriton wheel) in the foreground on a model repository. "
        "Arguments after `--` go to tritonserver unchanged.",
    )
    parser.add_argument("--repository", type=Path, help="model repository (default: build the --preset one)")
    parser.add_argument("--preset", default="tiny", help="preset whose repository is built/reused when --repository is absent")
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address for HTTP, gRPC and metrics")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument("--log-file", type=Path, help="also write the server log here")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--exit-timeout", type=int, default=10, help="seconds the server waits for in-flight work on stop")
    parser.add_argument(
        "--admin-key",
        default=None,
        help=f"key that opens the admin APIs ({', '.join(RESTRICTED_APIS)}); default: ${ADMIN_KEY_ENV}, else random per start "
        "(admin calls refused). Prefer the environment variable: arguments are visible in ps",
    )
    parser.add_argument("--admin-header", default=DEFAULT_ADMIN_HEADER, help="HTTP header carrying the admin key (gRPC: triton-grpc-protocol-<header>)")
    parser.add_argument("--admin-key-file", type=Path, help="write the admin key here (mode 0600), e.g. to use a generated one")
    parser.add_argument(
        "--on-crash",
        "--on-stub-crash",
        dest="on_crash",
        choices=ON_CRASH,
        default="restart",
        help="when tritonserver exits on its own or a Python-backend stub dies (Triton 2.51 leaves its model "
        f"failing): restart tritonserver, or exit with status {CRASH_EXIT_STATUS} for a supervisor to restart",
    )
    policy = RestartPolicy()
    parser.add_argument("--max-restarts", type=int, default=policy.max_restarts, help=f"restart budget: at most this many restarts within --restart-window, then exit with status {CRASH_EXIT_STATUS}")
    parser.add_argument("--restart-window", type=float, default=policy.window_s, metavar="SECONDS")
    parser.add_argument("--restart-backoff", type=float, default=policy.backoff_s, metavar="SECONDS", help="wait before the second restart in a window; doubles for each further one")
    parser.add_argument("--max-restart-backoff", type=float, default=policy.max_backoff_s, metavar="SECONDS")
    parser.add_argument("--gateway-port", type=int, help="also run the HAProxy gateway (export/gateway) on this port in front of the server")
    parser.add_argument("--gateway-host", default=DEFAULT_HOST, help="the gateway's bind address (0.0.0.0: reachable from other hosts)")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the process that started this one exits (for programs that run the launcher as a child)")
    return parser.parse_args(argv), extra


def _write_key(path: Path, key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


def _banner(server: TritonServer) -> str:
    return (
        f"tritonserver ready in {server.start_seconds:.1f}s (pid {server.pid}), repository {server.repository}\n"
        f"  HTTP     http://{server.http_url}\n"
        f"  gRPC     {server.grpc_url}\n"
        f"  metrics  http://{server.metrics_url}/metrics\n"
        f"  admin    {', '.join(server.restricted_apis)} need header {server.admin_header!r} "
        f"(gRPC metadata {GRPC_RESTRICTED_PREFIX + server.admin_header!r})\n"
        "Ctrl-C or SIGTERM stops it."
    )


def _start_gateway(repository: Path, server: TritonServer, host: str, port: int):
    from export.gateway.config import GatewayConfig
    from export.gateway.process import Gateway

    # The gateway outlives server restarts: its health checks route around a server that is down.
    gateway = Gateway(GatewayConfig.for_repository(repository, [(server.config.http_url.rsplit(":", 1)[0], server.http_port)], host=host, port=port))
    gateway.start()
    return gateway


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; 0 after a clean stop, else the server's status (or 1)."""
    args, extra = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.exit_with_parent:
        exit_with_parent(os.getppid())
    if args.repository is None:
        from export.build import repository_or_preset  # heavy (torch/diffusers): only when building

        repository, _ = repository_or_preset(None, args.preset, progress=True)
    else:
        repository = args.repository

    server = TritonServer(
        repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=args.log_verbose,
        extra_args=extra,
        log_file=args.log_file,
        ready_timeout=args.ready_timeout,
        exit_timeout=args.exit_timeout,
        echo_logs=True,
        admin_key=args.admin_key,
        admin_header=args.admin_header,
    )
    server.env_overrides = restarts_env({})  # the restart series exist, at zero, from the first start
    if args.admin_key_file is not None:
        _write_key(args.admin_key_file, server.admin_key)
    received: list[int] = []
    stop_requested = threading.Event()
    ready = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop_requested.set()
        if not ready.is_set():
            raise _Interrupted  # unblock wait_ready()

    crashed = False
    gateway = None
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        server.wait_ready()
        ready.set()
        if args.gateway_port:
            gateway = _start_gateway(repository, server, args.gateway_host, args.gateway_port)
        print(_banner(server) + (f"\n  gateway  http://{gateway.url} (inference, health and metadata of adaptive_diffusion only)" if gateway else ""), flush=True)
        outcome = supervise(
            server,
            stop_requested,
            on_crash=args.on_crash,
            policy=RestartPolicy(args.max_restarts, args.restart_window, args.restart_backoff, args.max_restart_backoff),
            restart_timeout=min(5.0, float(args.exit_timeout)),
            on_restart=ready.clear,
            on_restarted=ready.set,
        )
        crashed = not outcome.stopped
    except _Interrupted:
        pass
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        server.stop()
        return 1
    except ServerStartError as exc:
        # Its log was already echoed; the message repeats the tail for when it scrolled away.
        print(f"error: {exc}", file=sys.stderr)
        server.stop()
        return exc.returncode if exc.returncode and exc.returncode > 0 else 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if gateway is not None:
            gateway.stop()
        code = server.stop(sig=received[0] if received else signal.SIGTERM)

    if received:
        return 0 if code == 0 else (code if code and code > 0 else 1)
    if crashed:
        return CRASH_EXIT_STATUS
    print(f"error: tritonserver exited on its own with status {code}\n{server.log_tail()}", file=sys.stderr)
    return code if code and code > 0 else 1
