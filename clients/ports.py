"""Free TCP ports, for servers started next to others (tests, the demo, benchmarks)."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    with ExitStack() as stack:
        ports = []
        # Held open together, so the kernel cannot hand out the same port twice.
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing accepts connections on ``host:port`` now."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0
