"""A fleet on one machine: several tritonservers behind HAProxy, as a Kubernetes Service would front them.

    with LocalFleet(repository, servers=2) as fleet:      # servers ready, every one UP in the balancer
        client = AdaptiveClient(fleet.grpc_url, "grpc")
        fleet.kill(0)                                      # SIGKILL one tritonserver
        fleet.wait_state(fleet.upstreams[0].name, "DOWN")  # the balancer's health checks saw it

Each server runs the launcher as a child (``ServerProcess``) on free ports, from one repository whose
configs are written for one core's share of the host and two BLS instances (``fleet_repository``: N
servers on a small machine share its cores, and each BLS instance is a process of ~0.4 GB). The
balancer's configuration is ``export.deploy.balancer``'s, the same generator as the cluster's; its
state is read from HAProxy's stats socket (``show stat``), never guessed from time.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from bll_python.deployment import Deployment
from bll_python.layout import assets_dir
from clients.ports import free_ports
from clients.server_process import ServerProcess
from export.deploy.balancer import BalancerConfig, HealthCheck, Upstream, haproxy_config
from export.deploy.manifests import SERVER_FLAGS, STUB_CRASH_MODE

# As in a pod: a server that dies takes its launcher with it, and whoever runs the fleet restarts it.
LAUNCHER_ARGS = ("--on-stub-crash", STUB_CRASH_MODE)
from export.triton.onnxruntime import write_onnxruntime_repository
from export.triton.placement import CpuPlacement

HAPROXY = "haproxy"


class FleetError(RuntimeError):
    pass


def haproxy_binary() -> str:
    path = shutil.which(HAPROXY) or (f"/usr/sbin/{HAPROXY}" if Path(f"/usr/sbin/{HAPROXY}").exists() else None)
    if path is None:
        raise FleetError("haproxy not found: apt-get install -y haproxy (make test installs it as root)")
    return path


@dataclass(frozen=True)
class FleetPlacement(CpuPlacement):
    """One server's share of a host that runs several: its cores' component instances, and ``bls``
    BLS instances instead of ``BLS_PER_CORE`` per core (each is a process of ~0.4 GB; a fleet of
    servers on one small machine keeps them to what its clients keep in flight)."""

    bls: int = 2

    @property
    def bls_instances(self) -> int:
        return self.bls


def fleet_repository(source: Path, target: Path, placement: CpuPlacement = FleetPlacement(cores=1)) -> Path:
    """A copy of the ONNX Runtime repository ``source`` with the instances of ``placement``."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    write_onnxruntime_repository(target, Deployment.load(assets_dir(target)), placement)
    return target


def _stats(socket_path: str) -> list[dict[str, str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(socket_path)
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode().lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


class LocalFleet:
    def __init__(
        self,
        repository: Path,
        servers: int = 2,
        *,
        health: HealthCheck = HealthCheck(),
        log_dir: Path | None = None,
        ready_timeout: float = 300.0,
        retry_dropped: bool = True,
    ) -> None:
        self.repository = Path(repository)
        self.workdir = Path(tempfile.mkdtemp(prefix="fleet_"))
        self.log_dir = Path(log_dir) if log_dir else self.workdir
        self.health = health
        self.retry_dropped = retry_dropped
        self.servers = [
            ServerProcess(self.repository, ready_timeout=ready_timeout, log=self.log_dir / f"server{i}.log", launcher_args=LAUNCHER_ARGS, server_args=SERVER_FLAGS)
            for i in range(servers)
        ]
        self.http_port, self.grpc_port = free_ports(2)
        self.stats_socket = str(self.workdir / "haproxy.sock")
        self.config_path = self.workdir / "haproxy.cfg"
        self.balancer: subprocess.Popen[bytes] | None = None

    @property
    def upstreams(self) -> list[Upstream]:
        return [Upstream(f"server{i}", s.host, s.http_port, s.grpc_port) for i, s in enumerate(self.servers)]

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def config(self) -> BalancerConfig:
        return BalancerConfig(
            "127.0.0.1", self.http_port, self.grpc_port, upstreams=self.upstreams, health=self.health, stats_socket=self.stats_socket, retry_dropped=self.retry_dropped
        )

    def start(self) -> None:
        # One at a time: two tiny servers loading at once on 2 cores take longer than one after the other.
        for server in self.servers:
            server.__enter__()
        self.config_path.write_text(haproxy_config(self.config()))
        with open(self.log_dir / "haproxy.log", "wb") as log:
            self.balancer = subprocess.Popen([haproxy_binary(), "-db", "-f", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT)
        for u in self.upstreams:
            self.wait_state(u.name, "UP")

    def states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> HAProxy's status (UP, DOWN, ``UP 1/2`` while a check is pending...)."""
        return {(r["pxname"], r["svname"]): r["status"] for r in _stats(self.stats_socket) if r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_state(self, server: str, state: str, timeout: float = 120.0) -> float:
        """Until ``server`` has ``state`` in both backends (HTTP and gRPC); returns the monotonic time it did."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            if self.balancer is None or self.balancer.poll() is not None:
                raise FleetError(f"haproxy is not running; log {self.log_dir / 'haproxy.log'}")
            try:
                last = self.states()
            except OSError:
                last = {}
            mine = [status for (_, name), status in last.items() if name == server]
            if len(mine) == 2 and all(s == state for s in mine):
                return time.monotonic()
            time.sleep(0.05)
        raise FleetError(f"{server} not {state} after {timeout:.0f} s: {last}")

    def answered(self) -> int:
        """Requests the live servers have answered successfully (Triton's own statistics)."""
        import tritonclient.http as httpclient

        total = 0
        for server in self.servers:
            if not server.is_alive():
                continue
            with httpclient.InferenceServerClient(server.http_url) as c:
                stats = c.get_inference_statistics("adaptive_diffusion")
            total += sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])
        return total

    def kill(self, index: int) -> float:
        """SIGKILL server ``index``'s tritonserver (as a node or OOM kill would); returns the monotonic time."""
        pid = self.servers[index].pid
        if pid is None:
            raise FleetError(f"server{index} has no running tritonserver")
        os.kill(pid, signal.SIGKILL)
        return time.monotonic()

    def restart(self, index: int) -> None:
        """A new launcher on the same ports (what a pod restart is), ready, and back UP in the balancer."""
        old = self.servers[index]
        old.stop()
        new = ServerProcess(self.repository, ports=(old.http_port, old.grpc_port, old.metrics_port), ready_timeout=old.ready_timeout, log=old.log.with_suffix(".restart.log"), launcher_args=LAUNCHER_ARGS, server_args=SERVER_FLAGS)
        self.servers[index] = new
        new.__enter__()

    def stop(self) -> None:
        if self.balancer is not None and self.balancer.poll() is None:
            self.balancer.terminate()
            try:
                self.balancer.wait(10)
            except subprocess.TimeoutExpired:
                self.balancer.kill()
                self.balancer.wait()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> "LocalFleet":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

