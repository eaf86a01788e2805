"""Supervision (issue 16): the launcher restarts tritonserver after any exit it did not ask for.

- a dead Python-backend stub, or the server itself exiting or killed by a signal, restarts it
  (``--on-crash restart``, the default), with exponential backoff and within a restart budget;
- ``--on-crash exit`` (and a spent budget) ends the launcher with status 3 for an orchestrator;
- every restart says why, on stderr and in the ``adaptive_launcher_restarts{reason}`` gauge the
  restarted server publishes (the reason reaches its BLS through the environment).

The CLI is driven here with a scripted stand-in for ``TritonServer``; tests/test_gateway.py crashes
a real tritonserver 2.51 and checks that the launcher brings it back.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bll_python.restarts import RESTART_REASONS, RESTARTS_ENV, launcher_restarts, restarts_env
from export.launcher import watchdog
from export.launcher.watchdog import RestartPolicy, exit_reason


def test_backoff_doubles_from_the_second_restart_and_the_budget_refills_as_its_window_passes():
    policy = RestartPolicy(max_restarts=4, window_s=100.0, backoff_s=1.0, max_backoff_s=3.0)
    delays = []
    for t in range(5):
        delays.append(policy.next_delay(now=float(t)))
        if delays[-1] is not None:
            policy.record(now=float(t))
    assert delays == [0.0, 1.0, 2.0, 3.0, None]  # capped at 3; the fifth within 100 s is refused
    assert policy.next_delay(now=100.5) == 3.0  # the first restart left the window: one more allowed
    assert policy.next_delay(now=500.0) == 0.0  # a quiet window: back to an immediate restart


@pytest.mark.parametrize("bad", [dict(max_restarts=-1), dict(window_s=0), dict(backoff_s=-1), dict(backoff_s=5, max_backoff_s=1)])
def test_a_nonsensical_restart_policy_is_refused(bad):
    with pytest.raises(ValueError):
        RestartPolicy(**bad)


def test_exit_reasons_are_bounded_labels():
    assert exit_reason(-signal.SIGSEGV) == "SIGSEGV" and exit_reason(-signal.SIGABRT) == "SIGABRT"
    assert exit_reason(1) == exit_reason(0) == exit_reason(None) == "exit_status"


def test_restart_counts_travel_to_the_bls_as_json_in_the_environment():
    env = restarts_env({"SIGSEGV": 2})
    assert launcher_restarts(env) == {**{r: 0 for r in RESTART_REASONS}, "SIGSEGV": 2}
    assert launcher_restarts({}) == {r: 0 for r in RESTART_REASONS}, "every series exists from the first start"
    assert launcher_restarts({RESTARTS_ENV: "not json"}) == {r: 0 for r in RESTART_REASONS}
    assert launcher_restarts({RESTARTS_ENV: json.dumps({"x" * 100: 1, "y": "no", "z": True})}) == {**{r: 0 for r in RESTART_REASONS}, "x" * 32: 1}


class _ScriptedServer:
    """Stands in for TritonServer under ``export.launcher.cli.main``. ``script`` says what each
    life does after its start: ``"stub"`` (a stub dies), a negative status (killed by that signal),
    a positive one (exits with it), or ``"stay"`` (serves; then the test sends SIGTERM)."""

    script: list[Any] = []
    last: "_ScriptedServer"
    restricted_apis, admin_header, start_seconds, pid, http_url, grpc_url, metrics_url = ("trace",), "admin-key", 0.1, 1, "h", "g", "m"

    def __init__(self, repository: Path, **kwargs: Any) -> None:
        self.repository, self.admin_key = repository, "k" * 32
        self.events: list[str] = []
        self.envs: list[dict[str, str]] = []
        self.env_overrides: dict[str, str] = {}
        self.lives = list(type(self).script)
        self.life: Any = None
        self.running = False
        _ScriptedServer.last = self

    def start(self) -> None:
        self.events.append("start")
        self.envs.append(dict(self.env_overrides))
        self.life = self.lives.pop(0) if self.lives else "stay"
        self.running = True

    def wait_ready(self) -> None:
        self.events.append("ready")
        if self.life == "stay" and self.events.count("start") > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the operator stops the healed server

    def is_alive(self) -> bool:
        return self.running and not isinstance(self.life, int)

    @property
    def returncode(self) -> int | None:
        return self.life if isinstance(self.life, int) else None

    def crashed_stubs(self) -> list[str]:
        return ["unet_teacher_0_0"] if self.life == "stub" and self.running else []

    def stop(self, sig: int | None = None, timeout: float | None = None) -> int:
        self.events.append("stop")
        self.running = False
        return 0

    def log_tail(self, n: int = 40) -> str:
        return "Signal (11) received." if self.life == -11 else ""


def _run(monkeypatch, script: list[Any], *args: str) -> int:
    from export.launcher import cli

    monkeypatch.setattr(watchdog, "POLL_S", 0.005)
    monkeypatch.setattr(watchdog, "EXIT_GRACE_S", 0.01)
    monkeypatch.setattr(cli, "TritonServer", _ScriptedServer)
    _ScriptedServer.script = script
    return cli.main(["--repository", "unused", "--restart-backoff", "0", "--max-restart-backoff", "0", *args])


@pytest.mark.parametrize(
    "life, reason, said",
    [("stub", "stub_died", "unet_teacher_0_0 died"), (-11, "SIGSEGV", "was killed by SIGSEGV"), (-6, "SIGABRT", "killed by SIGABRT"), (1, "exit_status", "exited with status 1")],
)
def test_a_crash_restarts_the_server_says_why_and_counts_it_for_the_metric(monkeypatch, capsys, life, reason, said):
    code = _run(monkeypatch, [life, "stay"])
    server = _ScriptedServer.last
    assert code == 0  # stopped by SIGTERM after the restart
    # A live server with a dead stub is stopped first; one that is gone is simply started again.
    assert server.events == ["start", "ready"] + (["stop"] if life == "stub" else []) + ["start", "ready", "stop"]
    err = capsys.readouterr().err
    assert said in err and f"reason {reason}" in err
    assert launcher_restarts(server.envs[0])[reason] == 0, "the first start publishes zeros"
    assert launcher_restarts(server.envs[1])[reason] == 1, "the restarted server publishes the restart"


def test_a_server_that_dies_just_after_its_stubs_is_reported_by_its_signal(monkeypatch, capsys):
    # Triton aborting takes its stubs down first: the stubs are seen dead while the server still runs.
    class DyingServer(_ScriptedServer):
        def crashed_stubs(self) -> list[str]:
            if self.life == "abort":
                self.life = -6  # the server is gone by the time the watchdog looks again
                return ["adaptive_diffusion_0_0"]
            return []

    from export.launcher import cli

    monkeypatch.setattr(watchdog, "POLL_S", 0.005)
    monkeypatch.setattr(cli, "TritonServer", DyingServer)
    DyingServer.script = ["abort", "stay"]
    assert cli.main(["--repository", "unused", "--restart-backoff", "0", "--max-restart-backoff", "0"]) == 0
    assert "reason SIGABRT" in capsys.readouterr().err
    assert launcher_restarts(DyingServer.last.envs[1]) == {**{r: 0 for r in RESTART_REASONS}, "SIGABRT": 1}


@pytest.mark.parametrize("life", ["stub", -11])
def test_on_crash_exit_leaves_the_restart_to_an_orchestrator_with_status_3(monkeypatch, capsys, life):
    code = _run(monkeypatch, [life], "--on-crash", "exit")
    assert code == 3
    assert _ScriptedServer.last.events == ["start", "ready", "stop"]
    assert "--on-crash=exit" in capsys.readouterr().err


def test_the_older_flag_name_still_works(monkeypatch):
    assert _run(monkeypatch, ["stub"], "--on-stub-crash", "exit") == 3


def test_a_server_that_keeps_crashing_spends_the_budget_and_the_launcher_exits_3(monkeypatch, capsys):
    code = _run(monkeypatch, [-11] * 10, "--max-restarts", "3")
    assert code == 3
    assert _ScriptedServer.last.events.count("start") == 4  # the first start and three restarts
    assert "restart budget spent" in capsys.readouterr().err
