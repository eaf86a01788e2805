"""The tritonserver launcher (export/launcher/) against a throwaway one-model repository."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from benchmarks.perf_analyzer import perf_analyzer_command, perf_analyzer_env
from export.launcher.process import TritonServer
from export.launcher.shm import SHM_DEFAULT_PREFIX, SHM_DIR
from tests import triton_fixtures
from tests.triton_fixtures import free_ports, running_server

REPO_ROOT = Path(__file__).resolve().parents[1]

ECHO_CONFIG = """\
name: "echo"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ECHO_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (2 * x).astype(np.float32))]))
        return responses
"""

X = np.array([[1, 2, 3, 4], [-0.5, 0, 0.25, 100]], dtype=np.float32)


def write_echo_repository(root: Path) -> Path:
    model = root / "echo"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(ECHO_CONFIG)
    (model / "1" / "model.py").write_text(ECHO_MODEL)
    return root


@pytest.fixture(scope="module")
def echo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_echo_repository(tmp_path_factory.mktemp("echo_repository"))


@pytest.fixture(scope="module")
def shared_server(echo_repo: Path):
    with running_server(echo_repo) as server:
        yield server


def own_regions(server: TritonServer) -> list[str]:
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(server.shm_prefix))


def infer_http(server: TritonServer, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("echo", [inp]).as_numpy("OUTPUT0")
    finally:
        client.close()  # an open keep-alive connection would hold up the server's shutdown


def infer_grpc(server: TritonServer, x: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("echo", [inp]).as_numpy("OUTPUT0")
    finally:
        client.close()


def wait_exited_unreaped(pid: int, timeout: float) -> None:
    """Wait until ``pid`` is a zombie: exited, but its status not yet collected by Popen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still running after {timeout}s")


def read_until(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """The process's stdout up to the first line starting with ``prefix``.

    A reader thread does the blocking reads, so a process that prints nothing (or hangs) fails
    the test after ``timeout`` instead of hanging it.
    """
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # EOF

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line starting with {prefix!r} within {timeout:g}s; got:\n{''.join(seen)}") from None
        if line is None:
            raise AssertionError(f"stdout closed (exit status {proc.poll()}) before a line starting with {prefix!r}; got:\n{''.join(seen)}")
        seen.append(line)
        if line.startswith(prefix):
            return "".join(seen)


def test_read_until_gives_up_on_a_process_that_prints_nothing() -> None:
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        with pytest.raises(AssertionError, match="within 0.5s"):
            read_until(silent, "Ctrl-C", timeout=0.5)
    finally:
        silent.kill()
        silent.wait()


def test_command_line_defaults(tmp_path: Path) -> None:
    server = TritonServer(tmp_path)
    cmd = server.command()
    assert Path(cmd[0]).name == "tritonserver"
    assert "--disable-auto-complete-config" in cmd
    assert "--model-control-mode=none" in cmd
    assert f"--model-repository={tmp_path.resolve()}" in cmd
    for service, port in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        assert f"--{service}-address=127.0.0.1" in cmd
        assert f"--{service}-port={port}" in cmd
    assert server.http_url == "127.0.0.1:8000" and server.grpc_url == "127.0.0.1:8001"
    assert f"--backend-config=python,shm-region-prefix-name={server.shm_prefix}" in cmd

    backend_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("--backend-directory=")))
    python_dir = backend_dir / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"):
        assert (python_dir / name).is_file(), name
    assert os.access(python_dir / "triton_python_backend_stub", os.X_OK)

    extra = TritonServer(tmp_path, extra_args=["--exit-timeout-secs=3", "--log-info=false"], log_verbose=1).command()
    assert extra[-2:] == ["--exit-timeout-secs=3", "--log-info=false"]
    assert sum(a.startswith("--exit-timeout-secs") for a in extra) == 1
    assert "--log-verbose=1" in extra


@pytest.mark.server
def test_serves_http_and_grpc_then_stops_on_sigterm(echo_repo: Path) -> None:
    with running_server(echo_repo) as server:
        # Start-up here is ~0.2 s (CPU container); the budget is 30 s.
        assert server.start_seconds is not None and server.start_seconds < 30
        pid = server.pid
        assert pid is not None

        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--disable-auto-complete-config" in argv and b"--model-control-mode=none" in argv
        assert b"--http-address=127.0.0.1" in argv and b"--grpc-address=127.0.0.1" in argv
        assert not (Path(os.readlink(f"/proc/{pid}/cwd")) / "triton").exists()

        np.testing.assert_array_equal(infer_http(server, X), 2 * X)
        np.testing.assert_array_equal(infer_grpc(server, X[:1]), 2 * X[:1])

        assert own_regions(server), "the Python backend should hold a region with this server's prefix"
        os.kill(pid, signal.SIGTERM)
        wait_exited_unreaped(pid, timeout=20)
        # Checked before wait(): that is when the launcher would sweep the prefix itself.
        assert own_regions(server) == []
        assert server.wait(timeout=5) == 0


@pytest.mark.server
def test_sigkilled_server_regions_are_swept_by_its_launcher(echo_repo: Path) -> None:
    with running_server(echo_repo) as server:
        assert own_regions(server)
        os.kill(server.pid, signal.SIGKILL)
        assert server.stop() == -signal.SIGKILL
        assert own_regions(server) == []


@pytest.mark.server
def test_stale_shm_removed_on_start_live_kept(echo_repo: Path, shared_server: TritonServer) -> None:
    live = own_regions(shared_server)
    assert live

    dead = subprocess.Popen(["true"])
    dead.wait()
    # Our naming scheme with a dead launcher pid: what a SIGKILLed server leaves behind.
    stale_ours = SHM_DIR / f"{SHM_DEFAULT_PREFIX}ads{dead.pid}x0badc0de_{uuid.uuid4()}"
    # The default naming (a plain tritonserver), unmapped and old.
    stale_default = SHM_DIR / f"{SHM_DEFAULT_PREFIX}{uuid.uuid4()}"
    # Unmapped, but its name claims a live launcher: may belong to a server still starting.
    claimed = SHM_DIR / f"{SHM_DEFAULT_PREFIX}ads{os.getpid()}x00c0ffee_{uuid.uuid4()}"
    fakes = (stale_ours, stale_default, claimed)
    try:
        for path in fakes:
            path.write_bytes(b"\0" * 4096)
        hour_ago = time.time() - 3600
        os.utime(stale_default, (hour_ago, hour_ago))

        with running_server(echo_repo) as other:
            assert not stale_ours.exists()
            assert not stale_default.exists()
            assert claimed.exists()
            assert all((SHM_DIR / name).exists() for name in live)
            assert own_regions(other)
            np.testing.assert_array_equal(infer_grpc(shared_server, X), 2 * X)
    finally:
        for path in fakes:
            path.unlink(missing_ok=True)


@pytest.mark.server
def test_running_server_retries_when_a_port_was_taken(echo_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    calls = []

    def racy_free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
        ports = free_ports(n, host)
        calls.append(ports)
        return [blocker.getsockname()[1], *ports[1:]] if len(calls) == 1 else ports

    monkeypatch.setattr(triton_fixtures, "free_ports", racy_free_ports)
    try:
        with running_server(echo_repo) as server:
            assert len(calls) == 2
            assert server.http_port != blocker.getsockname()[1]
            np.testing.assert_array_equal(infer_http(server, X), 2 * X)
    finally:
        blocker.close()


def test_perf_analyzer_without_libb64_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import perf_analyzer as serve

    monkeypatch.setattr(serve, "_libb64_available", lambda env: False)
    with pytest.raises(RuntimeError, match="apt-get install -y libb64-0d"):
        perf_analyzer_command()


@pytest.mark.server
def test_perf_analyzer_measures_without_errors(shared_server: TritonServer, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    # Raises with the `apt-get install -y libb64-0d` hint when libb64 is missing: fail, not skip.
    cmd = perf_analyzer_command() + [
        "-m", "echo",
        "-u", shared_server.grpc_url,
        "-i", "grpc",
        "--concurrency-range", "1:1",
        "--measurement-mode", "count_windows",
        "--measurement-request-count", "50",
        # What is checked is that perf_analyzer runs against the server, not that a shared machine
        # is steady: a stall during a neighbour's job moved 3 windows apart by more than 100 %.
        "--max-trials", "10",
        "--stability-percentage", "500",
        "-f", str(tmp_path / "perf.csv"),
    ]
    result = subprocess.run(cmd, env=perf_analyzer_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Throughput:" in result.stdout
    assert (tmp_path / "perf.csv").read_text().startswith("Concurrency,Inferences/Second")

    client = grpcclient.InferenceServerClient(shared_server.grpc_url)
    try:
        stats = client.get_inference_statistics("echo", as_json=True)["model_stats"][0]["inference_stats"]
    finally:
        client.close()
    assert int(stats["success"]["count"]) >= 50
    assert int(stats.get("fail", {}).get("count", 0)) == 0


@pytest.mark.server
def test_cli_runs_in_foreground_until_sigterm(echo_repo: Path) -> None:
    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "export.launcher", "--repository", str(echo_repo),
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the server's own log is echoed there
        text=True,
    )
    try:
        text = read_until(proc, "Ctrl-C", timeout=60)
        assert "tritonserver ready" in text, text
        assert f"http://127.0.0.1:{http}" in text and f"127.0.0.1:{grpc}" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# the served code is the tree under test


def _bls_folder(root: Path) -> Path:
    (root / "adaptive_diffusion" / "1").mkdir(parents=True)
    return root


def test_the_server_would_import_this_checkouts_bll_python(tmp_path: Path) -> None:
    repository = _bls_folder(tmp_path)
    assert triton_fixtures.served_package_dir(repository) == (REPO_ROOT / "bll_python").resolve()
    triton_fixtures.assert_serves_tree_under_test(repository)


def test_a_venv_that_imports_another_checkouts_bll_python_is_refused(tmp_path: Path) -> None:
    repository = _bls_folder(tmp_path / "repository")
    other = tmp_path / "other_checkout" / "bll_python"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("# someone else's code\n")
    env = {**os.environ, "PYTHONPATH": str(other.parent)}
    assert triton_fixtures.served_package_dir(repository, env=env) == other.resolve()
    with pytest.raises(AssertionError, match="not from the tree under test"):
        triton_fixtures.assert_serves_tree_under_test(repository, env=env)


def test_a_copy_of_bll_python_in_the_model_folder_must_equal_the_tree(tmp_path: Path) -> None:
    import shutil

    repository = _bls_folder(tmp_path)
    copy = repository / "adaptive_diffusion" / "1" / "bll_python"
    shutil.copytree(REPO_ROOT / "bll_python", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert triton_fixtures.served_package_dir(repository) == copy.resolve()
    triton_fixtures.assert_serves_tree_under_test(repository)
    (copy / "settings.py").write_text((copy / "settings.py").read_text() + "\n# stale\n")
    with pytest.raises(AssertionError, match=r"settings\.py"):
        triton_fixtures.assert_serves_tree_under_test(repository)
