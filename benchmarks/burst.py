"""A burst against a static k and against the load-aware gate: latency and teacher share over time.

Open-loop load (requests leave on a schedule, whether or not the earlier ones are answered):
steady at ``--steady-load`` x capacity, a step to ``--burst-load`` x capacity for ``--burst-s``,
then steady again. Capacity is measured first: the closed-loop throughput at k = 50. The same
arrival times (a seeded Poisson process), prompts and seeds run twice on one server whose
repository has a load policy: once with ``exact_k`` (static k = 50: the policy is bypassed) and
once without (load-aware). For every served image the benchmark records prompt, seed, route,
effective k, latency and the ImageReward of the final image, plus the judge's fidelity when the
preset has a judge (the trained shapes world); the server's ``adaptive_rows_in_flight`` is sampled
throughout.

    python -m benchmarks.burst --preset tiny                       # ~10 min on 2 cores
    python -m benchmarks.burst --preset shapes --prompts PATH      # with the judge

Writes ``benchmarks/results/<preset>/burst/``: ``requests.csv`` (one row per request),
``windows_<policy>.csv`` (p50/p99, teacher share, mean k per window of send time),
``in_flight_<policy>.csv`` (the server's rows in flight), ``summary.json`` and ``burst.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.figures import save_figure
from benchmarks.workload import TEST_PROMPTS
from bll_python.load_policy import LoadPolicySettings
from bll_python.prompts import read_prompts

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = ("static", "load_aware")
K = 50.0


@dataclass(frozen=True)
class Phases:
    steady_s: float
    burst_s: float
    after_s: float
    steady_rate: float  # requests per second
    burst_rate: float

    @property
    def seconds(self) -> float:
        return self.steady_s + self.burst_s + self.after_s

    def phase(self, t: float) -> str:
        if t < self.steady_s:
            return "steady"
        return "burst" if t < self.steady_s + self.burst_s else "after"

    def arrivals(self, seed: int = 0) -> np.ndarray:
        """Send times of a Poisson process whose rate steps up for the burst and back down."""
        rng = np.random.default_rng(seed)
        times, t = [], 0.0
        while True:
            rate = self.burst_rate if self.phase(t) == "burst" else self.steady_rate
            t += rng.exponential(1.0 / rate)
            if t >= self.seconds:
                return np.asarray(times)
            times.append(t)


@dataclass
class Served:
    index: int
    prompt_index: int
    seed: int
    phase: str
    sent_s: float
    latency_s: float = float("nan")
    route: str = ""
    effective_k: float = float("nan")
    score: float = float("nan")  # the gate's input: the student sample's ImageReward
    unet_steps: int = 0
    error: str = ""
    final_reward: float = float("nan")  # ImageReward of the image served
    fidelity: float = float("nan")  # the judge's, where the preset has one
    image: np.ndarray | None = field(default=None, repr=False)


def capacity(url: str, prompts: Sequence[str], concurrency: int, requests: int) -> float:
    """Closed-loop images per second at static k = 50."""
    from benchmarks.head_of_line import closed_loop
    from benchmarks.workload import Workload

    workload = Workload(tuple(prompts[i % len(prompts)] for i in range(requests)), tuple(range(requests)))
    settings = {"strategy": "refine", "k": K, "exact_k": True}
    closed_loop(url, workload, min(requests, concurrency), concurrency, settings)  # warm-up
    return closed_loop(url, workload, requests, concurrency, settings).throughput


class InFlightSampler(threading.Thread):
    """Samples the server's ``adaptive_rows_in_flight`` gauge (the policy's signal) every ``every_s``."""

    def __init__(self, metrics_url: str, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.url, self.every_s = f"http://{metrics_url}/metrics", every_s
        self.samples: list[tuple[float, float]] = []
        self.start_time = time.perf_counter()
        self._halt = threading.Event()

    def read(self) -> float:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("adaptive_rows_in_flight"):
                    return float(line.rsplit(" ", 1)[1])
        return float("nan")

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            try:
                self.samples.append((time.perf_counter() - self.start_time, self.read()))
            except OSError:
                pass

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def open_loop(url: str, prompts: Sequence[str], phases: Phases, arrivals: np.ndarray, settings: dict[str, Any], metrics_url: str) -> tuple[list[Served], list[tuple[float, float]]]:
    """Send one single-row request at each arrival time; return them answered, and the in-flight samples."""
    import tritonclient.grpc as grpcclient

    from clients.client import MODEL, build_inputs
    from bll_python.contract import RESPONSE_FIELDS

    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(f.name) for f in RESPONSE_FIELDS]
    served = [Served(i, i % len(prompts), i, phases.phase(float(t)), float(t)) for i, t in enumerate(arrivals)]
    done = threading.Semaphore(0)
    sampler = InFlightSampler(metrics_url)

    def callback(row: Served, sent: float) -> Callable[[Any, Any], None]:
        def finish(result, error) -> None:
            row.latency_s = time.perf_counter() - sent
            if error is not None:
                row.error = str(error)
            else:
                row.route = result.as_numpy("route").reshape(-1)[0].decode()
                row.effective_k = float(result.as_numpy("effective_k").reshape(-1)[0])
                row.score = float(result.as_numpy("score").reshape(-1)[0])
                row.unet_steps = int(result.as_numpy("unet_steps").reshape(-1)[0])
                row.image = result.as_numpy("image")[0]
            done.release()

        return finish

    sampler.start_time = start = time.perf_counter()
    sampler.start()
    try:
        for row in served:
            delay = start + row.sent_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            inputs = build_inputs(grpcclient, [prompts[row.prompt_index]], [row.seed], **settings)
            sent = time.perf_counter()
            row.sent_s = sent - start  # the actual send time (the schedule's, unless the sender fell behind)
            client.async_infer(MODEL, inputs, callback(row, sent), outputs=outputs, client_timeout=3600)
        for _ in served:
            done.acquire()
    finally:
        sampler.stop()
        client.close()
    return served, sampler.samples


def wait_drained(sampler_url: str, timeout_s: float = 600.0) -> None:
    """Until no row is in flight on the server (the previous run's backlog has been served)."""
    probe = InFlightSampler(sampler_url)
    deadline = time.monotonic() + timeout_s
    while probe.read() > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the server still has rows in flight")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# quality of what was served


def judge_for(preset: str) -> Callable[[np.ndarray, str], float] | None:
    """The preset's judge (image, prompt) -> fidelity in [0, 1], or None where it has none."""
    if preset != "shapes":
        return None
    from export.world.judge import judge

    return lambda image, prompt: float(judge(image, prompt).fidelity)


def score_served(repository: Path, prompts: Sequence[str], served: Sequence[Served], batch: int = 8) -> None:
    """ImageReward (in-process, the served ONNX graph) of each served image, and the judge's fidelity."""
    import torch

    from bll_python.inprocess import inprocess_pipeline

    pipe = inprocess_pipeline(repository)
    judge = judge_for(pipe.deployment.preset)
    ok = [r for r in served if r.image is not None]
    for i in range(0, len(ok), batch):
        chunk = ok[i : i + batch]
        texts = [prompts[r.prompt_index] for r in chunk]
        images = torch.from_numpy(np.stack([r.image for r in chunk])).permute(0, 3, 1, 2).float() / 255.0
        tokens = pipe.tokenizers(texts)
        rewards = pipe.run(pipe.score(images, tokens.reward_ids, tokens.reward_mask)).cpu().numpy()
        for r, reward, text in zip(chunk, rewards, texts):
            r.final_reward = float(reward)
            if judge:
                r.fidelity = judge(r.image, text)


# ---------------------------------------------------------------------------------------------
# summaries


def windows(served: Sequence[Served], width_s: float, until_s: float) -> list[dict[str, Any]]:
    """Per window of send time: requests, p50/p99 latency, teacher share, mean effective k."""
    out = []
    for start in np.arange(0.0, until_s, width_s):
        rows = [r for r in served if start <= r.sent_s < start + width_s and not r.error]
        if not rows:
            continue
        lat = np.array([r.latency_s for r in rows]) * 1000
        out.append(
            {
                "t_s": float(start + width_s / 2),
                "requests": len(rows),
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "teacher_share": sum(r.route != "student" for r in rows) / len(rows),
                "mean_k": float(np.mean([r.effective_k for r in rows])),
            }
        )
    return out


def phase_summary(served: Sequence[Served], phase: str) -> dict[str, Any]:
    rows = [r for r in served if r.phase == phase and not r.error]
    lat = np.array([r.latency_s for r in rows]) * 1000
    fid = [r.fidelity for r in rows if r.fidelity == r.fidelity]
    return {
        "requests": len(rows),
        "p50_ms": float(np.percentile(lat, 50)) if len(rows) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(rows) else float("nan"),
        "teacher_share": sum(r.route != "student" for r in rows) / max(len(rows), 1),
        "mean_k": float(np.mean([r.effective_k for r in rows])) if rows else float("nan"),
        "mean_final_image_reward": float(np.mean([r.final_reward for r in rows])) if rows else float("nan"),
        "mean_fidelity": float(np.mean(fid)) if fid else None,
    }


def plot(runs: dict[str, tuple[list[dict[str, Any]], list[tuple[float, float]]]], phases: Phases, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    colors = {"static": "tab:red", "load_aware": "tab:blue"}
    for name, (wins, inflight) in runs.items():
        t = [w["t_s"] for w in wins]
        axes[0].plot(t, [w["p99_ms"] / 1000 for w in wins], "-", color=colors[name], label=f"{name} p99")
        axes[0].plot(t, [w["p50_ms"] / 1000 for w in wins], ":", color=colors[name], label=f"{name} p50")
        axes[1].plot(t, [w["teacher_share"] for w in wins], "-", color=colors[name], label=f"{name} teacher share")
        axes[1].plot(t, [w["mean_k"] / 100 for w in wins], ":", color=colors[name], label=f"{name} mean k / 100")
        if inflight:
            axes[2].plot([s[0] for s in inflight], [s[1] for s in inflight], "-", color=colors[name], label=f"{name}", lw=0.8)
    for ax in axes:
        ax.axvspan(phases.steady_s, phases.steady_s + phases.burst_s, color="0.9", zorder=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("latency (s), by send time")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("share")
    axes[2].set_ylabel("rows in flight (server)")
    axes[2].set_xlabel(f"time (s); shaded: the burst at {phases.burst_rate:.2f}/s, else {phases.steady_rate:.2f}/s")
    axes[0].set_title(title, fontsize=9)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# the command


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.burst", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--preset", default="tiny")
    where.add_argument("--repository", type=Path, help="a repository; it is copied, the copy gets the load policy")
    p.add_argument("--prompts", type=Path, default=TEST_PROMPTS)
    p.add_argument("--steady-load", type=float, default=0.6, help="steady rate as a fraction of the measured capacity at k = 50")
    p.add_argument("--burst-load", type=float, default=2.0, help="burst rate as a fraction of that capacity")
    p.add_argument("--steady-s", type=float, default=40.0)
    p.add_argument("--burst-s", type=float, default=60.0)
    p.add_argument("--after-s", type=float, default=60.0)
    p.add_argument("--capacity", type=float, help="images/s at k = 50 (default: measured, closed loop)")
    p.add_argument("--window-s", type=float, default=5.0)
    p.add_argument("--floor-k", type=float, default=0.0)
    p.add_argument("--high-load", type=float, default=5.0, help="rows in flight above which k steps down")
    p.add_argument("--low-load", type=float, default=2.0)
    p.add_argument("--step", type=float, default=0.5)
    p.add_argument("--step-down-every", type=float, default=1.0)
    p.add_argument("--step-up-after", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0, help="of the arrival schedule")
    p.add_argument("--out", type=Path, help="default benchmarks/results/<preset>/burst")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from benchmarks.report import write_csv
    from export.build import repository_or_preset
    from export.load_policy import set_load_policy
    from export.triton.placement import CpuPlacement
    from tests.triton_fixtures import running_server

    source, label = repository_or_preset(args.repository, args.preset)
    out = args.out or RESULTS / label / "burst"
    out.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(args.prompts)
    policy = LoadPolicySettings(args.floor_k, args.high_load, args.low_load, args.step, args.step_down_every, args.step_up_after)
    with tempfile.TemporaryDirectory(prefix="burst_") as tmp:
        repository = Path(tmp) / "repository"
        shutil.copytree(source, repository)  # the preset's repository keeps a static k
        set_load_policy(repository, policy)
        with running_server(repository) as server:
            # Measured or given, the closed loop also warms every instance's sessions: a cold server
            # answered its first seconds of open-loop load several seconds late.
            measured = capacity(server.grpc_url, prompts, CpuPlacement.for_this_host().bls_instances, 24 if args.capacity is None else 8)
            cap = args.capacity or measured
            phases = Phases(args.steady_s, args.burst_s, args.after_s, args.steady_load * cap, args.burst_load * cap)
            arrivals = phases.arrivals(args.seed)
            print(f"capacity at k = {K:g}: {cap:.2f} images/s; steady {phases.steady_rate:.2f}/s, burst {phases.burst_rate:.2f}/s for {phases.burst_s:g} s; {len(arrivals)} requests a run", flush=True)
            runs: dict[str, tuple[list[Served], list[tuple[float, float]]]] = {}
            for name in ("load_aware", "static"):  # static last: its backlog is the longest to drain
                wait_drained(server.metrics_url)
                # The policy's level only moves when a request observes the load; a gap of this
                # length lets the run's first request restore the requested k fully, so the run does
                # not start at the floor the previous run (or the capacity probe) left.
                time.sleep(policy.steps * policy.step_up_after_s + 1.0)
                settings = {"strategy": "refine", "k": K, "exact_k": name == "static"}
                start = time.perf_counter()
                runs[name] = open_loop(server.grpc_url, prompts, phases, arrivals, settings, server.metrics_url)
                print(f"  {name}: {len(arrivals)} requests answered in {time.perf_counter() - start:.0f} s", flush=True)
        for served, _ in runs.values():
            score_served(repository, prompts, served)

    summary: dict[str, Any] = {
        "label": label,
        "capacity_images_per_s_at_k50": cap,
        "phases": asdict(phases),
        "policy": policy.to_json(),
        "requests_per_run": len(arrivals),
        "note": "niced server on a shared 2-core machine: compare the two policies of one run, not absolute figures",
    }
    rows, plots = [], {}
    for name, (served, inflight) in runs.items():
        errors = [r for r in served if r.error]
        summary[name] = {p: phase_summary(served, p) for p in ("steady", "burst", "after")}
        summary[name]["errors"] = len(errors)
        summary[name]["p99_burst_over_steady"] = summary[name]["burst"]["p99_ms"] / summary[name]["steady"]["p99_ms"]
        wins = windows(served, args.window_s, phases.seconds)
        summary[name]["max_window_p99_ms"] = max(w["p99_ms"] for w in wins)
        plots[name] = (wins, inflight)
        write_csv(out / f"windows_{name}.csv", wins)
        write_csv(out / f"in_flight_{name}.csv", [{"t_s": t, "rows_in_flight": v} for t, v in inflight])
        for r in served:
            row = {k: v for k, v in asdict(r).items() if k != "image"}
            row["policy"], row["prompt"] = name, prompts[r.prompt_index]
            rows.append(row)
    write_csv(out / "requests.csv", rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(plots, phases, out / "burst.png", f"{label}: static k = 50 vs load-aware (floor {policy.floor_k:g}), open loop, {cap:.2f} img/s capacity")
    for name in ("static", "load_aware"):
        s = summary[name]
        fid = s["burst"]["mean_fidelity"]
        print(
            f"{name:>10}: p99 steady {s['steady']['p99_ms']:.0f} ms, burst {s['burst']['p99_ms']:.0f} ms ({s['p99_burst_over_steady']:.2f}x), "
            f"after {s['after']['p99_ms']:.0f} ms; teacher share steady {s['steady']['teacher_share']:.0%}, burst {s['burst']['teacher_share']:.0%}, "
            f"after {s['after']['teacher_share']:.0%}; burst ImageReward {s['burst']['mean_final_image_reward']:+.4f}"
            + (f", fidelity {fid:.3f}" if fid is not None else "")
            + f"; errors {s['errors']}"
        )
    print(f"wrote {out}/requests.csv, windows_*.csv, summary.json, burst.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
