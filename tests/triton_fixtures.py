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

import hashlib
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from clients.ports import free_ports  # noqa: F401  (tests import it from here)
from export.launcher.environment import server_env
from export.launcher.process import ServerStartError, TritonServer

_PORT_KEYS = ("http_port", "grpc_port", "metrics_port")
TREE = Path(__file__).resolve().parent.parent  # the checkout under test
BLS_MODEL = "adaptive_diffusion"

# The Python-backend stub puts the model's version folder first on sys.path, then imports the way
# the venv's python3 (found on the server's PATH) does: from a bll_python copied into the model
# folder if there is one, else from wherever the venv's (editable) install points.
_WHERE = "import sys; sys.path.insert(0, sys.argv[1]); import bll_python; print(bll_python.__path__[0])"


def served_package_dir(repository: Path, model: str = BLS_MODEL, env: dict[str, str] | None = None) -> Path:
    """Where the stub serving ``model`` imports ``bll_python`` from, asked of the venv's interpreter
    with the launcher's server environment."""
    env = server_env(env)
    python = shutil.which("python3", path=env["PATH"])
    assert python, "no python3 on the server's PATH"
    model_dir = Path(repository) / model / "1"
    done = subprocess.run([python, "-c", _WHERE, str(model_dir)], env=env, cwd=model_dir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the served model cannot import bll_python: {done.stderr[-2000:]}"
    return Path(done.stdout.strip()).resolve()


def _digest(package: Path) -> dict[str, str]:
    return {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts}


def assert_serves_tree_under_test(repository: Path, model: str = BLS_MODEL, env: dict[str, str] | None = None) -> None:
    """The server would run this checkout's bll_python: that very folder, or a byte-identical copy.

    Fails when the venv's editable install points at another checkout (a venv borrowed from a
    neighbour silently serves the neighbour's code) or when a copy in the repository is stale.
    """
    served, ours = served_package_dir(repository, model, env), TREE / "bll_python"
    if served == ours.resolve():
        return
    differ = sorted(set(_digest(served).items()) ^ set(_digest(ours).items()))
    assert not differ, (
        f"the server would import bll_python from {served}, not from the tree under test {ours}: "
        f"files that differ: {sorted({name for name, _ in differ})}. Install this checkout's venv (make venv)."
    )


@contextmanager
def running_server(repository: Path, *, check_tree: bool = True, **kw: Any) -> Iterator[TritonServer]:
    """Start ``TritonServer(repository, **kw)`` on free ports, yield it once ready, stop it after.

    Ports given in ``kw`` are kept; the others are picked free. A start that fails because a picked
    port was grabbed in between is retried once on new ports. A repository with the BLS model is
    first checked to serve the code of this checkout (``assert_serves_tree_under_test``), unless
    ``check_tree`` is off for a test that serves an altered copy on purpose.
    """
    if check_tree and (Path(repository) / BLS_MODEL).is_dir():
        assert_serves_tree_under_test(repository)
    attempts = 2
    for attempt in range(attempts):
        chosen = dict(zip(_PORT_KEYS, free_ports(len(_PORT_KEYS), kw.get("host", "127.0.0.1"))))
        chosen.update({k: v for k, v in kw.items() if k in _PORT_KEYS})
        # A busy CI machine can take minutes to load the tiny models: waiting longer costs nothing
        # when the server is quick, and the wait ends as soon as it is ready (or has exited).
        server = TritonServer(repository, **{"ready_timeout": 300.0, **kw, **chosen})
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
