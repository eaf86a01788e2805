"""Helpers for tests that need a live tritonserver.

Tests that require a server should start it with ``running_server(repository)`` (and carry
``@pytest.mark.server``) rather than on fixed ports: several servers may run at once (parallel
tests, a developer's ``make demo`` on 8000-8002), and the helper picks free ports, retries once if
one was taken meanwhile, waits until ready and always stops the server::

    from tests.triton_fixtures import running_server

    with running_server(repo) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

Close ``tritonclient.http`` clients before the block ends: an open keep-alive connection makes the
server wait its whole exit timeout on stop.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from clients.ports import free_ports  # noqa: F401  (tests import it from here)
from export.launcher.process import ServerStartError, TritonServer

_PORT_KEYS = ("http_port", "grpc_port", "metrics_port")


@contextmanager
def running_server(repository: Path, **kw: Any) -> Iterator[TritonServer]:
    """Start ``TritonServer(repository, **kw)`` on free ports, yield it once ready, stop it after.

    Ports given in ``kw`` are kept; the others are picked free. A start that fails because a picked
    port was grabbed in between is retried once on new ports.
    """
    attempts = 2
    for attempt in range(attempts):
        chosen = dict(zip(_PORT_KEYS, free_ports(len(_PORT_KEYS), kw.get("host", "127.0.0.1"))))
        chosen.update({k: v for k, v in kw.items() if k in _PORT_KEYS})
        server = TritonServer(repository, **{**kw, **chosen})
        try:
            server.start()
            server.wait_ready()
        except ServerStartError as exc:
            server.stop()
            picked_some = not all(k in kw for k in _PORT_KEYS)
            if exc.address_in_use and picked_some and attempt + 1 < attempts:
                continue
            raise
        except BaseException:
            server.stop()
            raise
        try:
            yield server
        finally:
            server.stop()
        return
