"""``ServerProcess``: the launcher's CLI as a child process, as the demo and the benchmarks start servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clients.server_process import ServerProcess, ServerProcessError
from tests.test_launcher import X, infer_grpc, infer_http, write_echo_repository

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def echo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_echo_repository(tmp_path_factory.mktemp("echo_repository"))


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.server
def test_serves_on_free_ports_and_stops_cleanly_on_exit(echo_repo: Path, tmp_path: Path) -> None:
    with ServerProcess(echo_repo, log=tmp_path / "server.log") as server:
        np.testing.assert_array_equal(infer_http(server, X), 2 * X)
        np.testing.assert_array_equal(infer_grpc(server, X[:1]), 2 * X[:1])
        pid = server.pid
        assert pid is not None and Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver"
        assert "--exit-with-parent" in server.command() and str(echo_repo) in server.command()
    assert server.proc.returncode == 0, server.log_tail()
    assert _gone(pid, 10), "the launcher stops its server before it exits"
    assert "tritonserver ready" in (tmp_path / "server.log").read_text()


@pytest.mark.server
def test_a_launcher_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServerProcessError, match="does not exist"):
        with ServerProcess(tmp_path / "no-such-repository", ready_timeout=10):
            pass


@pytest.mark.server
def test_the_server_goes_when_the_program_that_started_it_is_killed(echo_repo: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    program = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from clients.server_process import ServerProcess
        server = ServerProcess(Path({str(echo_repo)!r}))
        server.__enter__()
        Path({str(pids)!r}).write_text(f"{{server.launcher_pid}} {{server.pid}}")
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", program], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while not pids.is_file() and parent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pids.is_file(), "the child program never had a ready server"
        launcher, server = (int(p) for p in pids.read_text().split())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(launcher, 60) and _gone(server, 60), "no orphan launcher or server after SIGKILL"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
