"""The shapes world's parts, without its weights: grammar and splits, renderer, judge, the training
stages' shared pieces, and a smoke run of every stage whose outputs load like real checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from export.world.config import CALIBRATION_FILE, HELDOUT_FILE, WorldConfig
from export.world.degrade import colour_shift, perturb
from export.world.grammar import Caption, GrammarError, ObjectSpec, all_captions, parse, splits
from export.world.judge import judge, judge_caption
from export.world.judge_validation import validate_judge
from export.world.render import Placed, render, render_caption

# ----------------------------------------------------------------------------------------- grammar


def test_every_caption_parses_back_to_itself():
    captions = all_captions()
    assert len(captions) == 1700 and len({c.text for c in captions}) == 1700
    for c in captions:
        assert parse(c.text) == c


@pytest.mark.parametrize("prompt", ["a red fox in the snow", "a small red circle on the left", "a red circle above a red circle", "four blue squares"])
def test_prompts_outside_the_grammar_are_refused(prompt):
    with pytest.raises(GrammarError):
        parse(prompt)


def test_splits_are_seeded_disjoint_and_cover_every_family():
    s = splits()
    assert splits() == s
    train, cal, held = ({c.text for c in s[name]} for name in ("train", "calibration", "heldout"))
    assert not (train & cal) and not (train & held) and not (cal & held)
    assert len(train) + len(cal) + len(held) == len(all_captions())
    for part in (s.train, s.calibration, s.heldout):
        assert {c.family for c in part} == {"object", "size", "position", "count", "relation"}


def test_prompt_files_are_the_held_out_splits_and_no_training_prompt():
    from benchmarks.workload import read_prompts

    s = splits()
    assert read_prompts(HELDOUT_FILE) == [c.text for c in s.heldout]
    assert read_prompts(CALIBRATION_FILE) == [c.text for c in s.calibration]
    train = {c.text for c in s.train}
    assert not train & set(read_prompts(HELDOUT_FILE)) and not train & set(read_prompts(CALIBRATION_FILE))


def test_demo_prompts_are_held_out_prompts():
    from benchmarks.workload import read_prompts
    from clients.demo import SHAPES_PROMPTS

    assert set(SHAPES_PROMPTS) <= set(read_prompts(HELDOUT_FILE))


# ----------------------------------------------------------------------------------------- judge


def test_renders_satisfy_their_caption_and_wrong_renders_are_caught():
    results = {r.degradation: r for r in validate_judge(splits().heldout[:80], seed=3)}
    clean = results["clean"]
    assert clean.faithful_correct >= 0.97 and clean.unfaithful_caught >= 0.97
    for name in ("blur 1px", "noise 12", "hue +15deg"):
        assert results[name].accuracy >= 0.95, results[name]


def _scene(*objects: Placed) -> np.ndarray:
    return render(list(objects))


RED_CIRCLE_LEFT = Placed("circle", "red", 16, 32, 18, (215, 40, 40))
BLUE_SQUARE_RIGHT = Placed("square", "blue", 48, 32, 18, (40, 80, 220))


def test_judge_reads_colour_shape_and_relation():
    image = _scene(RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT)
    assert judge(image, "a red circle to the left of a blue square").correct
    swapped = judge(image, "a red circle to the right of a blue square")
    assert not swapped.checks["relation"] and swapped.fidelity == pytest.approx(5 / 6)  # 2 x (colour, shape), relation, count
    recoloured = judge(image, "a green circle to the left of a blue square")
    assert not recoloured.checks["object0.color"]
    reshaped = judge(image, "a red triangle to the left of a blue square")
    assert not reshaped.checks["object0.shape"] and reshaped.checks["object0.color"]


def test_judge_counts_objects_and_checks_size_and_position():
    one = _scene(RED_CIRCLE_LEFT)
    assert judge(one, "a red circle on the left").correct
    assert not judge(one, "a red circle on the right").checks["object0.position"]
    assert not judge(one, "two red circles").checks["count"]
    assert judge(one, "a small red circle").checks["object0.size"]  # 18 px: under the 21 px line between small and big
    big = _scene(replace(RED_CIRCLE_LEFT, side=30))
    assert judge(big, "a big red circle").correct and not judge(big, "a small red circle").checks["object0.size"]
    assert not judge(_scene(), "a red circle").correct


def test_a_hue_shift_past_halfway_between_palette_colours_changes_the_judged_colour():
    image = _scene(RED_CIRCLE_LEFT)
    assert judge(colour_shift(image, 15), "a red circle").correct
    assert not judge(colour_shift(image, 40), "a red circle").correct  # red -> yellow


def test_perturbed_captions_change_exactly_one_attribute():
    rng = np.random.default_rng(0)
    for caption in splits().heldout[:60]:
        wrong, what = perturb(caption, rng)
        assert wrong != caption and what in {"color", "shape", "size", "position", "relation", "count"}
        if what == "relation":
            assert wrong.objects == caption.objects
        if what == "count":
            assert wrong.objects[0] == caption.objects[0] and len(wrong.objects) != len(caption.objects)


def test_layouts_vary_but_always_satisfy_the_caption():
    caption = Caption("relation", (ObjectSpec("red", "circle"), ObjectSpec("blue", "cross")), "above")
    rng = np.random.default_rng(1)
    images = [render_caption(caption, rng) for _ in range(10)]
    assert len({im.tobytes() for im in images}) == 10
    assert all(judge_caption(im, caption).correct for im in images)


# ----------------------------------------------------------------------------------------- stage pieces


def test_student_boundary_scalings_are_the_served_lcm_schedulers():
    from diffusers import LCMScheduler

    from export.checkpoints.presets import SD15_SCHEDULE
    from export.world.student import boundary_scalings, ddim_grid

    scheduler = LCMScheduler.from_config(SD15_SCHEDULE)
    t = torch.tensor([0, 19, 259, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, step in enumerate(t.tolist()):
        want_skip, want_out = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert float(c_skip[i]) == pytest.approx(float(want_skip)) and float(c_out[i]) == pytest.approx(float(want_out))
    # The distillation grid is the one LCMScheduler samples from (original_inference_steps = 50).
    scheduler.set_timesteps(4, original_inference_steps=50)
    assert set(scheduler.timesteps.tolist()) <= set(ddim_grid(1000, 50).tolist())


def test_min_snr_weights_cap_the_easy_timesteps_only():
    from export.world.components import noise_scheduler
    from export.world.teacher import min_snr_weights

    w = min_snr_weights(noise_scheduler(), torch.tensor([0, 100, 500, 999]), 5.0)
    assert w[0] < 0.01 and w[-1] == pytest.approx(1.0) and torch.all(w[1:] >= w[:-1])


def test_reward_is_written_in_the_original_layout_and_reads_back_through_the_loader(tmp_path):
    from export.models.image_reward import SCORE_MEAN, SCORE_STD, load_image_reward
    from export.models.image_reward_config import CHECKPOINT_NAME, CONFIG_NAME
    from export.world.config import RewardConfig
    from export.world.reward import TrainableImageReward, reward_config

    config = reward_config(RewardConfig(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1))
    torch.manual_seed(0)
    model = TrainableImageReward(config).eval()
    torch.save(model.original_state_dict(), tmp_path / CHECKPOINT_NAME)
    config.to_json(tmp_path / CONFIG_NAME)
    loaded = load_image_reward(tmp_path / CHECKPOINT_NAME, tmp_path / CONFIG_NAME)
    image = torch.rand(3, 3, 64, 64)
    ids = torch.randint(1000, 2000, (3, 35))
    mask = torch.ones(3, 35, dtype=torch.long)
    with torch.no_grad():
        trained = (model(image, ids, mask) - SCORE_MEAN) / SCORE_STD
        served = loaded(image, ids.int(), mask.int())
    assert torch.allclose(trained, served, atol=1e-5)


def test_ranking_loss_prefers_the_better_image():
    from export.world.reward import preference_pairs, ranking_loss

    assert ranking_loss(torch.tensor([2.0]), torch.tensor([0.0])) < ranking_loss(torch.tensor([0.0]), torch.tensor([2.0]))
    rows = [{"prompt": 0, "group": 0, "fidelity": f} for f in (1.0, 0.5, 0.5)] + [{"prompt": 0, "group": 1, "fidelity": 0.0}]
    assert sorted(preference_pairs(rows)) == [(0, 1), (0, 2)]  # ties make no pair; groups never mix


# ----------------------------------------------------------------------------------------- smoke run


@pytest.fixture(scope="module")
def smoke_world(tmp_path_factory):
    from export.world.stages import run_stages

    root = tmp_path_factory.mktemp("world")
    report = run_stages(WorldConfig.smoke(), root / "work", root / "out", show=False, threads=1, log=lambda _: None)
    return root, report


@pytest.mark.slow
def test_every_stage_runs_and_reports_its_wall_and_cpu_time(smoke_world):
    root, report = smoke_world
    assert list(report["stages"]) == ["vae", "latents", "teacher", "student", "pairs", "reward"]
    for stage in report["stages"].values():
        assert stage["wall_s"] >= 0 and stage["cpu_s"] >= 0
    assert json.loads((root / "out" / "training_report.json").read_text())["stages"].keys() == report["stages"].keys()


@pytest.mark.slow
def test_smoke_checkpoints_load_through_the_real_checkpoint_loaders(smoke_world):
    from export.checkpoints.sources import load_sources
    from export.world.preset import shapes_sources

    root, _ = smoke_world
    models = load_sources(shapes_sources(root / "out"))
    assert models.kind.name == "lcm" and models.dims["latent_size"] == 8 and models.dims["vae_scale"] == 8
    assert models.dims["timestep_cond_dim"] == 256
    assert all(p.dtype == torch.float32 for p in models.raw["unet_teacher"].parameters())  # stored as float16


@pytest.mark.slow
def test_finished_stages_are_skipped_and_a_stopped_stage_resumes_from_its_snapshot(smoke_world, monkeypatch):
    import export.world.vae as vae_stage
    from export.world.stages import run_stages
    from export.world.training import StageDir

    root, _ = smoke_world
    logs: list[str] = []
    run_stages(WorldConfig.smoke(), root / "work", root / "out", only=["vae"], show=False, threads=1, log=logs.append)
    assert "done earlier" in logs[0]

    cfg = WorldConfig.smoke()
    cfg = replace(cfg, vae=replace(cfg.vae, steps=4))
    real_progress = vae_stage.progress

    class Interrupting:
        def __init__(self, total, initial, desc, enabled):
            self.bar, self.done = real_progress(total, initial, desc, False), initial

        def update(self, n):
            self.done += n
            if self.done == 2:
                raise KeyboardInterrupt

        def set_postfix(self, **kw):
            pass

        def close(self):
            pass

    work = root / "resume"
    monkeypatch.setattr(vae_stage, "progress", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        vae_stage.train_vae(cfg, work, root / "resume-out", threads=1, show=False)
    assert StageDir(work, "vae").load_state()["step"] == 1  # snapshots every step in the smoke config
    starts = []
    monkeypatch.setattr(vae_stage, "progress", lambda total, initial, desc, enabled: starts.append(initial) or real_progress(total, initial, desc, False))
    report = vae_stage.train_vae(cfg, work, root / "resume-out", threads=1, show=False)
    assert starts == [1] and report["steps"] == 4 and not (work / "vae" / "state.pt").exists()


# ----------------------------------------------------------------------------------------- the preset


def test_the_shapes_preset_plan_is_the_committed_checkpoints_with_the_trained_defaults(tmp_path):
    from export.checkpoints.presets import preset_plan, preset_student_kind
    from export.world.config import CHECKPOINTS_DIR, ServingConfig
    from export.world.preset import CALIBRATION_SEEDS_PER_PROMPT

    plan = preset_plan("shapes", tmp_path)
    assert preset_student_kind("shapes") == "lcm" and preset_student_kind("tiny") == "cd"
    assert plan.sources.student_kind == "lcm" and plan.sources.teacher == CHECKPOINTS_DIR / "teacher"
    assert plan.sources.reward == CHECKPOINTS_DIR / "reward" / "ImageReward.pt"
    s = ServingConfig()
    assert (plan.defaults.student_steps, plan.defaults.teacher_steps, plan.defaults.guidance_scale, plan.defaults.sigma) == (s.student_steps, s.teacher_steps, s.guidance_scale, s.sigma)
    calibration = CALIBRATION_FILE.read_text().split("\n")
    assert len(plan.calibration_prompts) == CALIBRATION_SEEDS_PER_PROMPT * len(splits().calibration)
    assert set(plan.calibration_prompts) == {c.text for c in splits().calibration} and plan.calibration_prompts[0] in calibration
    assert not any(tmp_path.iterdir())  # nothing written: the trained preset's checkpoints are the committed ones


def test_the_shapes_preset_has_one_student_and_the_cli_says_so(tmp_path, capsys):
    from export.checkpoints.presets import preset_sources
    from export.cli import main

    with pytest.raises(ValueError, match="'lcm'"):
        preset_sources("shapes", tmp_path, "cd")
    assert main(["--preset", "shapes", "--student-kind", "cd", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--student-kind" in err and "'lcm'" in err and not (tmp_path / "out").exists()
