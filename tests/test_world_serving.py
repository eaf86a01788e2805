"""The shapes preset served: its committed checkpoints export through the common path, and the
miniature benchmark runs end to end against a real tritonserver (a handful of prompts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clients.client import Generation


@pytest.fixture(scope="module")
def shapes_repository(tmp_path_factory):
    from bll_python.prompts import read_prompts
    from export.build import export_repository
    from export.world.config import CALIBRATION_FILE
    from export.world.preset import shapes_defaults, shapes_sources

    repo = tmp_path_factory.mktemp("shapes") / "repository"
    summary = export_repository(shapes_sources(), repo, preset="shapes", defaults=shapes_defaults(), calibration_prompts=read_prompts(CALIBRATION_FILE)[:24], progress=False)
    assert all(r.max_abs_error < 1e-3 for r in summary.parity), summary
    return repo


@pytest.mark.slow
def test_the_shapes_repository_serves_the_trained_defaults(shapes_repository):
    from bll_python.deployment import Deployment
    from bll_python.layout import assets_dir
    from export.world.preset import shapes_defaults

    deployment = Deployment.load(assets_dir(shapes_repository))
    assert deployment.student_kind == "lcm" and deployment.timestep_cond_dim == 256 and not deployment.student_uses_cfg
    assert deployment.defaults == shapes_defaults() and deployment.image_size == 64
    assert deployment.calibration.prompts == 24


@pytest.mark.slow
@pytest.mark.server
def test_the_miniature_benchmark_runs_every_strategy_through_triton(shapes_repository, tmp_path):
    from benchmarks.miniature import main

    assert main(["--repository", str(shapes_repository), "--count", "3", "--teacher-sweep", "5", "--ks", "50", "--concurrency", "2", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "miniature.json").read_text())
    rows = {r["mode"]: r for r in summary["rows"]}
    assert set(rows) == {"teacher_5", "teacher_20", "student", "refine_k50", "regenerate_k50"}
    assert rows["teacher_5"]["mean_unet_steps"] == 5 and rows["student"]["teacher_share"] == 0
    assert all(0 <= r["judge_fidelity"] <= 1 and r["images_per_s"] > 0 for r in rows.values())
    assert summary["student_vs_teacher"]["prompts"] == 3
    assert (tmp_path / "fidelity_vs_steps.png").stat().st_size > 0 and (tmp_path / "summary.md").is_file()


def test_the_contact_sheet_puts_each_student_sample_beside_its_result(tmp_path):
    from PIL import Image

    from clients.contact_sheet import LINE, PAD, SCALE, TEXT_W, contact_sheet

    def gen(route: str, value: int) -> Generation:
        return Generation("a red circle", 3, np.full((64, 64, 3), value, np.uint8), -0.5, route, 22, False, 0.1, 50.0, -0.4)

    path = contact_sheet([gen("student", 10), gen("student", 20)], [gen("refined", 200), gen("student", 20)], tmp_path / "sheet.png", lambda im, p: "judge: ok")
    sheet = np.asarray(Image.open(path))
    size, top = 64 * SCALE, 2 * LINE + PAD
    # Row 0: the student sample (value 10) left of the refined result (value 200).
    rows = slice(top + 10, top + size - 10)
    left, right = sheet[rows, TEXT_W + 10 : TEXT_W + size - 10], sheet[rows, TEXT_W + size + PAD + 10 : TEXT_W + 2 * size + PAD - 10]
    assert sheet.shape[0] > 2 * size and np.median(left) == 10 and np.median(right) == 200
