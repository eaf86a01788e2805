"""Smoke versions of the benchmarks (seconds, not minutes), so `make bench` and the calibration
command cannot rot: the budget solver, the in-process limit, calibration stored and read back, a
perf_analyzer run through the sweep code, CSV parsing, the quality harness and the plots."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmarks.budget import BudgetError, average_steps, k_for_budget
from benchmarks.modes import BY_NAME, MODES
from benchmarks.perf import apply_profile_export, parse_perf_csv
from benchmarks.stability import tau_stability
from benchmarks.workload import TEST_PROMPTS, Workload, perf_input_data
from bll_python.deployment import Deployment
from bll_python.layout import assets_dir

# Two rows of perf_analyzer 2.51's `-f` CSV with --verbose-csv (latencies in microseconds).
PERF_CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait
2,3.99917,10,1519,177941,60,295914,431,7,481370,585298,585298,588519,475885,17,475806
"""


# ----------------------------------------------------------------------------- budget -> k


def test_budget_solver_reproduces_the_supplement_example():
    # Supplement, section C: 5 student steps, 20 teacher steps, a 15-step budget -> the 50th percentile.
    assert k_for_budget(15, 5, 20) == 50.0
    assert average_steps(50, 5, 20) == 15.0
    assert k_for_budget(5, 5, 20) == 0.0 and k_for_budget(25, 5, 20) == 100.0
    assert k_for_budget(12, 5, 10) == pytest.approx(70.0)


@pytest.mark.parametrize("budget", [4.9, 25.1, -1.0])
def test_budget_outside_student_to_student_plus_teacher_is_a_clear_error(budget):
    with pytest.raises(BudgetError, match=r"outside \[5, 25\]"):
        k_for_budget(budget, 5, 20)


# ----------------------------------------------------------------------------- perf_analyzer plumbing


def test_perf_csv_and_profile_export_are_parsed(tmp_path):
    path = tmp_path / "perf.csv"
    path.write_text(PERF_CSV)
    (result,) = parse_perf_csv(path, requests=12)
    assert result.concurrency == 2 and result.p50_ms == pytest.approx(481.37) and result.p99_ms == pytest.approx(588.519)
    assert result.server_compute_ms == pytest.approx(296.405) and result.avg_ms == pytest.approx(475.885)
    # Two requests of 100 ms, the second sent when the first returned: 2 images in 0.2 s.
    s = 1_000_000_000
    export = {
        "experiments": [
            {
                "requests": [
                    {"timestamp": 0, "response_timestamps": [s // 10], "response_outputs": [{"route": "student", "unet_steps": 5}]},
                    {"timestamp": s // 10, "response_timestamps": [s // 5], "response_outputs": [{"route": "refined", "unet_steps": 15}]},
                ]
            }
        ]
    }
    result = apply_profile_export(result, export)
    assert result.throughput == pytest.approx(10.0) and result.reported_throughput == pytest.approx(3.99917)
    assert result.p50_ms == pytest.approx(100.0) and result.routes == {"student": 1, "refined": 1} and result.mean_unet_steps == 10.0


def test_input_data_has_one_single_row_request_per_prompt():
    workload = Workload.from_file(TEST_PROMPTS, 3)
    data = perf_input_data(workload, BY_NAME["refine_k30"])["data"]
    assert len(data) == 3 and data[1]["seed"] == [1] and data[1]["prompt"] == [workload.prompts[1]]
    assert data[0]["strategy"] == ["refine"] and data[0]["k"] == [30.0]
    assert "k" not in perf_input_data(workload, BY_NAME["teacher_only"])["data"][0]
    assert [m.name for m in MODES] == ["student_only", "teacher_only", "refine_k30", "refine_k50", "refine_k70", "regenerate_k30", "regenerate_k50", "regenerate_k70"]


# ----------------------------------------------------------------------------- in-process and calibration


@pytest.fixture(scope="module")
def bench_pipeline(tiny_repository):
    from bll_python.inprocess import inprocess_pipeline

    return inprocess_pipeline(tiny_repository)


def test_inprocess_limit_uses_the_served_session_options_and_counts_steps(bench_pipeline, tiny_repository):
    from benchmarks.inprocess import run_inprocess
    from bll_python.layout import component_parameters

    params = component_parameters(tiny_repository, "unet_student")
    assert params["intra_op_threads"] == "1" and params["allow_spinning"] == "0"
    d = bench_pipeline.deployment.defaults
    workload = Workload.from_file(TEST_PROMPTS, 2)
    student = run_inprocess(bench_pipeline, BY_NAME["student_only"], workload, batch=2, rows=2)
    assert student.throughput > 0 and student.routes == {"student": 2} and student.mean_unet_steps == d.student_steps
    assert set(student.stage_seconds) == {"text", "student", "decode", "reward"} and student.cpu_seconds > 0
    teacher = run_inprocess(bench_pipeline, BY_NAME["teacher_only"], workload, batch=1, rows=2)
    assert teacher.teacher_share == 1.0 and teacher.mean_unet_steps == d.teacher_steps


def test_calibration_is_stored_with_all_percentiles_and_read_back(tiny_repository, tmp_path, capsys):
    from benchmarks import calibrate
    from bll_python.prompts import read_prompts
    from export.build import calibrate_repository as export_calibrate

    repo = tmp_path / "repository"
    shutil.copytree(tiny_repository, repo)  # the session fixture stays as it is
    out = tmp_path / "results"
    code = calibrate.main(["--repository", str(repo), "--count", "6", "--stability", "3", "--subsets", "2", "--k", "60", "--out", str(out)])
    assert code == 0
    deployment = Deployment.load(assets_dir(repo))
    cal = deployment.calibration
    assert cal.prompts == 6 and len(cal.percentiles) == 101 and np.all(np.diff(cal.percentiles) >= 0)
    assert deployment.default_k == 60.0 and cal.settings["strategy"] == "student_only" and cal.settings["guidance_scale"] == deployment.defaults.guidance_scale
    # The same prompts, seeds and settings as the export-time calibration: the same percentiles.
    reference = export_calibrate(repo, read_prompts(calibrate.HELDOUT_PROMPTS)[:6], deployment.defaults, progress=False)
    np.testing.assert_allclose(cal.percentiles, reference.percentiles, atol=1e-5)
    saved = json.loads((out / "calibration.json").read_text())
    assert len(saved["stability"]) == 3 and (out / "tau_stability.png").stat().st_size > 0

    # --budget solves k from the stored calibration; outside [student, student + teacher] it refuses.
    s, t = deployment.defaults.student_steps, deployment.defaults.teacher_steps
    assert calibrate.main(["--repository", str(repo), "--budget", str(s + t / 2), "--set-only"]) == 0
    assert Deployment.load(assets_dir(repo)).default_k == pytest.approx(50.0)
    capsys.readouterr()
    assert calibrate.main(["--repository", str(repo), "--budget", str(s + t + 1), "--set-only"]) == 2
    assert "outside" in capsys.readouterr().err


def test_tau_stability_reports_mean_and_spread_per_subset_size():
    scores = np.random.default_rng(0).normal(size=200)
    rows = tau_stability(scores, [20, 150], [50.0], subsets=4, seconds_per_sample=0.1)
    assert [(r.prompts, r.k) for r in rows] == [(20, 50.0), (150, 50.0)]
    assert rows[0].tau_std > rows[1].tau_std and rows[1].seconds_to_generate == pytest.approx(15.0)
    with pytest.raises(ValueError, match="needs at least 300"):
        tau_stability(scores, [300], [50.0])


def test_quality_harness_scores_final_images(bench_pipeline, tmp_path):
    from benchmarks.quality import evaluate, quality_plot

    prompts = Workload.from_file(TEST_PROMPTS, 2).prompts
    rows = evaluate(bench_pipeline, [BY_NAME["student_only"], BY_NAME["regenerate_k50"]], prompts, batch=2)
    assert [r.mode for r in rows] == ["student_only", "regenerate_k50"] and all(np.isfinite(r.mean_image_reward) for r in rows)
    assert rows[0].mean_unet_steps == bench_pipeline.deployment.defaults.student_steps
    assert quality_plot(rows, tmp_path / "q.png", "smoke").stat().st_size > 0


# ----------------------------------------------------------------------------- served


@pytest.mark.server
def test_sweep_level_against_the_tiny_server_and_its_report(tiny_server, tiny_repository, bench_pipeline, tmp_path):
    import tritonclient.grpc as grpcclient

    from benchmarks.inprocess import run_inprocess
    from benchmarks.plots import plot_all
    from benchmarks.report import save, summary
    from benchmarks.sweep import PresetReport, SweepConfig, _speedups, measure_level
    from benchmarks.workload import write_input_data

    try:
        from benchmarks.perf_analyzer import perf_analyzer_command

        perf_analyzer_command()
    except RuntimeError as e:
        pytest.skip(str(e))
    deployment = Deployment.load(assets_dir(tiny_repository))
    d = deployment.defaults
    workload = Workload.from_file(TEST_PROMPTS, 2)
    report = PresetReport("tiny", {"nproc": 2, "cpu_model": "test", "date": "now", "load_average_1_5_15": [0.0, 0.0, 0.0]}, SweepConfig("tiny", list(MODES[:2])).as_dict(), d.as_dict())
    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    try:
        for mode in (BY_NAME["student_only"], BY_NAME["teacher_only"]):
            data = write_input_data(tmp_path / f"{mode.name}.json", workload, mode)
            level = measure_level(tiny_server, client, deployment, mode, data, 1, 2, tmp_path / f"{mode.name}.csv", "grpc")
            level.inprocess = run_inprocess(bench_pipeline, mode, workload, batch=1, rows=2)
            report.levels.append(level)
    finally:
        client.close()
    student, teacher = report.levels
    assert student.served.requests == 2 and student.served.throughput > 0 and student.served.p50_ms > 0
    assert student.served.routes == {"student": 2} and student.served_mean_steps == d.student_steps == student.served.mean_unet_steps
    assert teacher.served_teacher_share == 1.0 and teacher.served_mean_steps == d.teacher_steps
    b = student.breakdown
    assert b.images == 2 and b.components["unet_student"]["calls"] == d.student_steps and b.components["unet_teacher"]["calls"] == 0
    assert b.bls_compute_ms >= b.components["unet_student"]["compute_ms"] > 0 and student.served_stage_ms["student"] > 0
    assert student.ratio > 0 and student.cpu_ratio > 0
    report.speedups = _speedups(report, deployment, list(MODES[:2]))
    (row,) = report.speedups
    assert row["predicted_from_steps"] == pytest.approx(d.teacher_steps / d.student_steps)

    from benchmarks.head_of_line import measure as head_of_line
    from benchmarks.machine_limit import machine_limit

    report.machine_limit = machine_limit(tiny_repository, [BY_NAME["student_only"]], rows=4, cores=2, log=lambda _: None)
    limit = report.machine_limit["student_only"]
    assert limit["limit"] == max(r["throughput"] for r in limit["runs"]) > 0
    assert {(r["workers"], r["batch"]) for r in limit["runs"]} == {(2, 1), (2, 4), (1, deployment.max_rows)}
    assert report.limit_ratio(student) == pytest.approx(student.served.throughput / limit["limit"])
    report.head_of_line = head_of_line(tiny_server.grpc_url, tiny_repository, concurrency=2, rows=4, log=lambda _: None)
    h = report.head_of_line
    assert h["accepted"] == 2 and h["refined"] == 2 and h["p50_ratio"] > 0

    paths = save(report, tmp_path / "out") + plot_all(report, tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in paths)
    assert {p.name for p in paths} >= {"sweep.json", "sweep.csv", "components.csv", "limit.csv", "throughput.png", "served_vs_inprocess.png", "speedup.png"}
    text = summary(report)
    assert "student_only" in text and "served / machine limit" in text and "head-of-line" in text
