"""Stages 5 and 6: preference pairs ranked by the judge, and ImageReward trained on them.

Pairs (stage ``pairs``). Two groups of images per training caption:
- generated (``prompts`` captions): the student at the serving step count (two seeds), the student
  at one step, and the teacher at the serving step count, each from diffusers' own pipelines (the
  same images the served pipeline draws, by the parity tests);
- rendered (``render_prompts`` captions): a render of the caption and two renders of a caption with
  one attribute changed, each with a random mild degradation.
Within a group, every two images the judge scores differently make a pair (better, worse). Groups
are never mixed, so the reward cannot learn "renders beat generations".

Reward (stage ``reward``). ImageReward's architecture (BLIP ViT, BERT cross-attending to it, the
five-Linear MLP, ``export/models/image_reward.py``) at a small width, trained from scratch with
ImageReward's pairwise ranking loss ``-log sigmoid(r_better - r_worse)``. It learns what the judge
prefers without ever calling it, and is written as ``ImageReward.pt`` in the original key layout,
read back by the same loader as THUDM's checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.models.image_reward import ImageRewardScorer, load_image_reward
from export.models.image_reward_config import CHECKPOINT_NAME, CONFIG_NAME, ImageRewardConfig, TextDims, VisionDims
from export.models.image_reward_keys import MLP_WIDTHS, original_parameter_shapes, rename_original_key
from export.world.config import RewardConfig, WorldConfig
from export.world.degrade import perturb, random_degradation
from export.world.grammar import Caption, splits
from export.world.judge import judge_caption
from export.world.render import render_caption
from export.world.training import CaptionSampler, Clock, LossMeter, StageDir, clipped_step, configure_torch, cosine_lr, progress, set_lr
from export.world.vae import step_rng

PAIRS_STAGE = "pairs"
STAGE = "reward"
GENERATED, RENDERED = 0, 1
HOLDOUT_SHARE = 0.15  # of the prompt groups, kept out of reward training to measure it


def reward_config(rc: RewardConfig) -> ImageRewardConfig:
    return ImageRewardConfig(
        vision=VisionDims(image_size=rc.image_size, patch_size=rc.patch_size, hidden_size=rc.vision_hidden, num_layers=rc.vision_layers, num_heads=rc.heads, mlp_size=4 * rc.vision_hidden),
        text=TextDims(
            vocab_size=30524,  # bert-base-uncased + BLIP's [DEC] and [ENC]
            hidden_size=rc.text_hidden,
            num_layers=rc.text_layers,
            num_heads=rc.heads,
            intermediate_size=4 * rc.text_hidden,
            max_position_embeddings=40,
            encoder_width=rc.vision_hidden,
        ),
    )


class TrainableImageReward(nn.Module):
    """ImageReward as trained: the BLIP towers of :class:`ImageRewardScorer` plus the original MLP
    (Linear, Dropout 0.2, Linear, Dropout 0.2, Linear, Dropout 0.1, Linear, Linear; no activations)."""

    def __init__(self, config: ImageRewardConfig) -> None:
        super().__init__()
        self.blip = ImageRewardScorer(config)
        widths = (config.text.hidden_size,) + MLP_WIDTHS
        drops = (0.2, 0.2, 0.1, None, None)
        layers: list[nn.Module] = []
        for i, p in enumerate(drops):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if p is not None:
                layers.append(nn.Dropout(p))
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):  # ImageReward's MLP init
                nn.init.normal_(layer.weight, std=1.0 / (layer.in_features + 1))
                nn.init.zeros_(layer.bias)

    def forward(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.blip.text_features(image, ids, mask)).squeeze(-1)

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under THUDM's ``ImageReward.pt`` keys (``blip.visual_encoder.*``, ``mlp.layers.*``)."""
        ours = self.blip.state_dict()
        mlp = self.mlp.state_dict()
        state = {}
        for key in original_parameter_shapes(self.blip.config):
            if key.startswith("mlp.layers."):
                state[key] = mlp[key[len("mlp.layers.") :]]
            else:
                state[key] = ours[rename_original_key(key)]
        return {k: v.detach().clone().contiguous() for k, v in state.items()}


def ranking_loss(better: torch.Tensor, worse: torch.Tensor) -> torch.Tensor:
    """ImageReward's loss: cross-entropy of preferring ``better`` in each pair."""
    return -F.logsigmoid(better - worse).mean()


# ------------------------------------------------------------------------------------------- pairs


def pairs_file(work: Path) -> Path:
    return Path(work) / PAIRS_STAGE / "pairs.pt"


def _distinct_captions(n: int, seed: int) -> list[Caption]:
    train = splits().train
    sampler = CaptionSampler(train, np.random.default_rng([seed, 5]))
    seen: dict[str, Caption] = {}
    for caption in sampler:
        seen.setdefault(caption.text, caption)
        if len(seen) == n or len(seen) == len(train):
            return list(seen.values())
    raise AssertionError("unreachable")


def _pipelines(out: Path):
    from diffusers import DPMSolverMultistepScheduler, LatentConsistencyModelPipeline, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    teacher = StableDiffusionPipeline.from_pretrained(out / "teacher", safety_checker=None, requires_safety_checker=False)
    # The served teacher solver: DPM-Solver++ 2M on the teacher's schedule.
    teacher.scheduler = DPMSolverMultistepScheduler.from_config(teacher.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
    student = LatentConsistencyModelPipeline(
        vae=teacher.vae,
        text_encoder=teacher.text_encoder,
        tokenizer=teacher.tokenizer,
        unet=UNet2DConditionModel.from_pretrained(out / "student" / "unet"),
        scheduler=LCMScheduler.from_pretrained(out / "student" / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    return teacher, student


def _uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def make_pairs(cfg: WorldConfig, work: Path, out: Path, *, resume: bool = True, show: bool = True, threads: int = 2) -> dict[str, Any]:
    """Generate, render and judge the reward's training images; store them with their pairs."""
    configure_torch(threads)
    stage = StageDir(work, PAIRS_STAGE)
    clock = Clock()
    rc = cfg.reward
    captions = _distinct_captions(max(rc.prompts, rc.render_prompts), cfg.seed)
    images: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []  # per image: prompt, group, kind, fidelity

    def add(image: np.ndarray, p: int, group: int, kind: str) -> None:
        images.append(image)
        rows.append({"prompt": p, "group": group, "kind": kind, "fidelity": judge_caption(image, captions[p]).fidelity})

    for p, kind, image in _generated(cfg, out, captions[: rc.prompts], show):
        add(image, p, GENERATED, kind)
    rng = np.random.default_rng([cfg.seed, 6])
    for p, caption in enumerate(tqdm_or_list(captions[: rc.render_prompts], "pairs: render + judge", show)):
        renders = [("render", caption)] + [("wrong render", perturb(caption, rng)[0]) for _ in range(rc.renders_per_prompt)]
        for kind, drawn in renders:
            add(random_degradation(render_caption(drawn, rng, cfg.image_size), rng), p, RENDERED, kind)
    pairs = preference_pairs(rows)
    data = {"prompts": [c.text for c in captions], "images": torch.from_numpy(np.stack(images)), "rows": rows, "pairs": pairs}
    torch.save(data, pairs_file(work))
    fid = {k: round(float(np.mean([r["fidelity"] for r in rows if r["kind"] == k])), 4) for k in dict.fromkeys(r["kind"] for r in rows)}
    by_group = {name: sum(rows[a]["group"] == g for a, _ in pairs) for name, g in (("generated", GENERATED), ("rendered", RENDERED))}
    return stage.finish(clock, images=len(images), pairs=len(pairs), pairs_by_group=by_group, mean_judge_fidelity=fid)


def tqdm_or_list(items: list, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not show, mininterval=2.0)


def _generated(cfg: WorldConfig, out: Path, captions: list[Caption], show: bool):
    """(prompt index, kind, uint8 image): the student twice at the serving steps, once at one step, the teacher once."""
    serving = cfg.serving
    teacher, student = _pipelines(out)
    batch = 16
    bar = progress(len(captions), 0, "pairs: sample + judge", show)
    for start in range(0, len(captions), batch):
        prompts = [c.text for c in captions[start : start + batch]]
        seeds = [10_000 + start + i for i in range(len(prompts))]

        def gens(offset: int) -> list[torch.Generator]:
            return [torch.Generator().manual_seed(s + offset) for s in seeds]

        g = serving.guidance_scale
        with torch.no_grad():
            generated = {
                "teacher": teacher(prompts, num_inference_steps=serving.teacher_steps, guidance_scale=g, generator=gens(0), output_type="np").images,
                "student": student(prompts, num_inference_steps=serving.student_steps, guidance_scale=g, generator=gens(0), output_type="np").images,
                "student seed 2": student(prompts, num_inference_steps=serving.student_steps, guidance_scale=g, generator=gens(1), output_type="np").images,
                "student 1 step": student(prompts, num_inference_steps=1, guidance_scale=g, generator=gens(2), output_type="np").images,
            }
        for i in range(len(prompts)):
            for kind, batch_images in generated.items():
                yield start + i, kind, _uint8(batch_images[i])
        bar.update(len(prompts))
    bar.close()


def preference_pairs(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(better, worse) image indices: same prompt, same group, different judge fidelity."""
    by_group: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(rows):
        by_group.setdefault((r["prompt"], r["group"]), []).append(i)
    pairs = []
    for members in by_group.values():
        for a in members:
            for b in members:
                if rows[a]["fidelity"] > rows[b]["fidelity"]:
                    pairs.append((a, b))
    return pairs


# ------------------------------------------------------------------------------------------- reward


def rendered_pairs(sampler: CaptionSampler, n: int, rng: np.random.Generator, image_size: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """``n`` fresh (better, worse, caption) triples: a render of the caption and a render of it with one
    attribute changed, each mildly degraded, ordered by the judge (ties are drawn again)."""
    better: list[np.ndarray] = []
    worse: list[np.ndarray] = []
    captions: list[str] = []
    draws = iter(sampler)
    while len(captions) < n:
        caption = next(draws)
        right = random_degradation(render_caption(caption, rng, image_size), rng)
        wrong = random_degradation(render_caption(perturb(caption, rng)[0], rng, image_size), rng)
        a, b = judge_caption(right, caption).fidelity, judge_caption(wrong, caption).fidelity
        if a == b:
            continue
        better.append(right if a > b else wrong)
        worse.append(wrong if a > b else right)
        captions.append(caption.text)
    return better, worse, captions


def _tokens(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from bll_python.text import reward_tokenizer, tokenize_for_reward
    from export.checkpoints.tokenizers import ASSETS, BERT_VOCAB

    ids, mask = tokenize_for_reward(reward_tokenizer(Path(str(ASSETS / BERT_VOCAB))), prompts)
    return torch.from_numpy(ids).long(), torch.from_numpy(mask).long()


def _as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1], what the served VAE decoder hands the reward."""
    return images.permute(0, 3, 1, 2).float().div(255.0)


def pair_accuracy(model: nn.Module, data: dict[str, Any], pairs: list[tuple[int, int]], ids: torch.Tensor, mask: torch.Tensor) -> float:
    if not pairs:
        return float("nan")
    scores = score_images(model, data, sorted({i for p in pairs for i in p}), ids, mask)
    return float(np.mean([scores[a] > scores[b] for a, b in pairs]))


@torch.no_grad()
def score_images(model: nn.Module, data: dict[str, Any], indices: list[int], ids: torch.Tensor, mask: torch.Tensor, batch: int = 128) -> dict[int, float]:
    model.eval()
    out: dict[int, float] = {}
    for i in range(0, len(indices), batch):
        chunk = indices[i : i + batch]
        prompt = torch.tensor([data["rows"][j]["prompt"] for j in chunk])
        scores = model(_as_input(data["images"][chunk]), ids[prompt], mask[prompt])
        out.update(zip(chunk, scores.tolist()))
    return out


def train_reward(cfg: WorldConfig, work: Path, out: Path, *, resume: bool = True, show: bool = True, threads: int = 2) -> dict[str, Any]:
    configure_torch(threads)
    stage = StageDir(work, STAGE)
    rc = cfg.reward
    data = torch.load(pairs_file(work), map_location="cpu", weights_only=True)
    ids, mask = _tokens(data["prompts"])
    n_prompts = len(data["prompts"])
    held = set(np.random.default_rng([cfg.seed, 8]).permutation(n_prompts)[: max(1, int(HOLDOUT_SHARE * n_prompts))].tolist())
    # Generated pairs are a fixed set (sampling is the slow part); rendered pairs are drawn fresh
    # every step, so the towers, trained from scratch, see new layouts instead of memorising ~1k.
    train_pairs = [p for p in data["pairs"] if data["rows"][p[0]]["prompt"] not in held and data["rows"][p[0]]["group"] == GENERATED]
    test_pairs = [p for p in data["pairs"] if data["rows"][p[0]]["prompt"] in held]
    n_rendered = int(round(rc.render_share * rc.batch))
    n_generated = rc.batch - n_rendered
    render_sampler = CaptionSampler(splits().train, np.random.default_rng([cfg.seed, 9]))

    torch.manual_seed(cfg.seed)
    config = reward_config(rc)
    model = TrainableImageReward(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=0.01, fused=True)
    clock, start = Clock(), 0
    state = stage.load_state() if resume else None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        clock.wall, clock.cpu, start = state["wall"], state["cpu"], state["step"]
    bar = progress(rc.steps, start, "reward", show)
    meter = LossMeter(bar)
    for step in range(start, rc.steps):
        model.train()
        rng = step_rng(cfg.seed, STAGE, step)
        chosen = [train_pairs[i] for i in rng.integers(len(train_pairs), size=n_generated)]
        better, worse = [a for a, _ in chosen], [b for _, b in chosen]
        prompt = torch.tensor([data["rows"][a]["prompt"] for a in better])
        r_better, r_worse, r_captions = rendered_pairs(render_sampler, n_rendered, rng, cfg.image_size)
        r_ids, r_mask = _tokens(r_captions) if r_captions else (ids[:0], mask[:0])
        images = torch.cat([_as_input(data["images"][better + worse]), _as_input(torch.from_numpy(np.stack(r_better + r_worse))) if r_captions else _as_input(data["images"][:0])])
        text_ids = torch.cat([ids[prompt].repeat(2, 1), r_ids.repeat(2, 1)])
        text_mask = torch.cat([mask[prompt].repeat(2, 1), r_mask.repeat(2, 1)])
        scores = model(images, text_ids, text_mask)
        g, r = 2 * n_generated, n_rendered
        loss = ranking_loss(torch.cat([scores[:n_generated], scores[g : g + r]]), torch.cat([scores[n_generated:g], scores[g + r :]]))
        set_lr(optimizer, cosine_lr(step, rc.steps, rc.lr))
        clipped_step(optimizer, loss, model.parameters())
        meter.update(loss)
        stage.snapshot_if_due(step + 1, rc.steps, cfg.checkpoint_every, clock, lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    bar.close()

    model.eval()
    folder = out / "reward"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.to(torch.float16) for k, v in model.original_state_dict().items()}, folder / CHECKPOINT_NAME)
    config.to_json(folder / CONFIG_NAME)
    # Read back through the loader a real checkpoint takes, and check it scores as the trained model.
    loaded = load_image_reward(folder / CHECKPOINT_NAME, folder / CONFIG_NAME)
    probe = sorted({i for p in test_pairs[:64] for i in p}) or list(range(min(8, len(data["rows"]))))
    prompt = torch.tensor([data["rows"][j]["prompt"] for j in probe])
    with torch.no_grad():
        trained = model(_as_input(data["images"][probe]), ids[prompt], mask[prompt])
        served = loaded(_as_input(data["images"][probe]), ids[prompt].int(), mask[prompt].int())
    # The loader reports ImageReward's normalised score, (r - mean) / std; fp16 storage costs ~1e-3.
    from export.models.image_reward import SCORE_MEAN, SCORE_STD

    reload_error = float(((trained - SCORE_MEAN) / SCORE_STD - served).abs().max())
    by_group = {
        name: pair_accuracy(model, data, [p for p in test_pairs if data["rows"][p[0]]["group"] == g], ids, mask) for name, g in (("generated", GENERATED), ("rendered", RENDERED))
    }
    return stage.finish(
        clock,
        steps=rc.steps,
        final_loss=meter.value,
        train_pairs=len(train_pairs),
        rendered_pairs_seen=rc.steps * n_rendered,
        heldout_pairs=len(test_pairs),
        heldout_pair_accuracy=pair_accuracy(model, data, test_pairs, ids, mask),
        heldout_pair_accuracy_by_group=by_group,
        reload_max_abs_error=reload_error,
        parameters=sum(p.numel() for p in model.parameters()),
        chance=0.5,
        log_loss_at_chance=math.log(2),
    )
