"""Algorithm 1 (supplement): the student draws, ImageReward gates, the teacher fixes the rejected rows.

```
x_S   = Student(prompt, noise)
score = ImageReward(decode(x_S), prompt)
if score >= tau:  return x_S
refine:      return Teacher(prompt, from=add_noise(x_S, sigma))   # img2img, strength = sigma
regenerate:  return Teacher(prompt, noise)                         # the same initial noise
```

Randomness follows diffusers so that a seed tuned there carries over: each row owns a
``torch.Generator("cpu").manual_seed(seed)`` and draws, in order, its initial latents, the
student's per-step noise, then the refinement noise. A row's result therefore depends only on its
own prompt, seed and the shared settings, never on its batch neighbours.

The pipeline does no I/O of its own: :meth:`AdaptivePipeline.program` is a generator that yields one
:class:`EngineCall` per component call and is sent the call's outputs back ("sans-I/O"). A driver
decides how calls run: :func:`run_program` runs them one after another on an :class:`Engines`
(in-process, and inside one BLS execution); ``bll_python.step_batcher`` merges the pending calls of
many programs into shared component calls. The algorithm is written once, whatever runs it.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Sequence

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from bll_python.deployment import Deployment, SchedulerRecipe
from bll_python.engines import Engines
from bll_python.families import family, sdxl_time_ids
from bll_python.settings import GenerationSettings, Route, SettingsError, Strategy, refine_schedule_length  # noqa: F401 (re-exported)
from bll_python.text import PromptTokenizers

StageObserver = Callable[[str, float, int], None]


class Cancelled(RuntimeError):
    """The caller asked to stop (e.g. the client cancelled); raised between denoising steps."""


Tensors = dict[str, torch.Tensor]


@dataclass
class EngineCall:
    """One component call a program asks its driver for; the driver sends the outputs back."""

    component: str
    inputs: Tensors

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def shape_key(self) -> tuple:
        """Calls may share one component call only if every input's non-batch shape matches
        (images of different sizes never do)."""
        return tuple((name, tuple(t.shape[1:])) for name, t in self.inputs.items())


# The UNet inputs that carry the prompt, one row per image: ``encoder_hidden_states`` for every
# family, plus SDXL's ``text_embeds`` and ``time_ids``. Rows are selected and CFG-stacked per key.
Conditioning = dict[str, torch.Tensor]


def select_rows(c: Conditioning, rows: torch.Tensor | slice) -> Conditioning:
    return {k: v[rows] for k, v in c.items()}


_SECOND_TOWER = "text_embeddings_2"

# A running pipeline: yields EngineCalls, is sent their outputs, returns the result.
Program = Generator[EngineCall, Tensors, "BatchResult"]


def run_program(program: Generator[EngineCall, Tensors, object], engines: Engines) -> object:
    """Drive ``program`` to its end, running each call on ``engines`` as soon as it is asked for."""
    call = next(program)
    while True:
        try:
            outputs = getattr(engines, call.component)(call.inputs)
        except BaseException:
            program.close()
            raise
        try:
            call = program.send(outputs)
        except StopIteration as done:
            return done.value


@dataclass
class BatchResult:
    images: np.ndarray  # uint8 [B, H, W, 3]
    images_float: torch.Tensor  # float32 [B, 3, H, W] in [0, 1]
    latents: torch.Tensor  # final latents [B, C, h, w]
    student_latents: torch.Tensor | None
    scores: np.ndarray  # float32 [B]: the gate's input (the student sample's score); teacher_only scores the teacher image
    routes: list[Route]
    unet_steps: np.ndarray  # int32 [B]: denoising steps spent on the row (a CFG step counts once)
    truncated: list[bool]
    tau: float | None
    teacher_rows: list[int] = field(default_factory=list)
    k: float | None = None  # the percentile tau came from; None when tau was given or there is no gate


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [0,1] -> uint8 [B,H,W,3], rounding as diffusers' ``numpy_to_pil`` does."""
    return (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's guidance-scale embedding (a sinusoid of ``(w - 1) * 1000``), as diffusers computes it."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)


class _Sampler:
    """One denoising run of a model with a diffusers scheduler (the two-verb interface)."""

    def __init__(self, component: str, recipe: SchedulerRecipe, guidance_scale: float, uses_cfg: bool, cond_dim: int | None) -> None:
        self.component = component
        self.recipe = recipe
        self.scheduler = recipe.build()
        self.guidance_scale = guidance_scale
        self.cfg = uses_cfg and guidance_scale > 1.0 and cond_dim is None
        self.cond_dim = cond_dim
        self._step_takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters

    def set_timesteps(self, n: int, device: torch.device) -> None:
        self.scheduler.set_timesteps(n, device=device, **self.recipe.set_timesteps_kwargs)

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text: Conditioning,
        uncond: Conditioning | None,
        generators: list[torch.Generator],
        check_cancelled: Callable[[], None],
    ) -> Generator[EngineCall, Tensors, torch.Tensor]:
        rows = latents.shape[0]
        context = {k: torch.cat([uncond[k], v]) for k, v in text.items()} if self.cfg else text
        extra: dict[str, torch.Tensor] = {}
        if self.cond_dim:
            w = torch.full((rows,), self.guidance_scale - 1.0)
            extra["timestep_cond"] = guidance_embedding(w, self.cond_dim).to(latents.device, latents.dtype)
        step_kwargs = dict(self.recipe.step_kwargs)
        if self._step_takes_generator:
            step_kwargs["generator"] = generators
        for t in timesteps:
            check_cancelled()
            x = torch.cat([latents, latents]) if self.cfg else latents
            x = self.scheduler.scale_model_input(x, t)
            tt = t.to(torch.float32).expand(x.shape[0])
            out = yield EngineCall(self.component, {"sample": x, "timestep": tt, **context, **extra})
            noise = out["noise_pred"].to(latents.dtype)
            if self.cfg:
                uncond_noise, text_noise = noise.chunk(2)
                noise = uncond_noise + self.guidance_scale * (text_noise - uncond_noise)
            latents = self.scheduler.step(noise, t, latents, return_dict=False, **step_kwargs)[0]
        return latents


class AdaptivePipeline:
    """Algorithm 1 on a batch of prompts: :meth:`program` is the algorithm, ``__call__`` runs it on ``engines``."""

    def __init__(self, engines: Engines | None, deployment: Deployment, tokenizers: PromptTokenizers, device: str | torch.device = "cpu") -> None:
        self.engines = engines
        self.deployment = deployment
        self.tokenizers = tokenizers
        self.device = torch.device(device)
        self.family = family(deployment.family)
        self.latent_shape = (deployment.latent_channels, deployment.latent_size, deployment.latent_size)

    # ----------------------------------------------------------------- stages

    def encode_text(self, ids: np.ndarray, ids_2: np.ndarray | None = None) -> Generator[EngineCall, Tensors, Conditioning]:
        """The prompt conditioning of each row: one tower (SD1.5), or SDXL's two towers' hidden
        states concatenated plus the second tower's pooled projection."""
        out = yield EngineCall("text_encoder", {"input_ids": torch.from_numpy(ids).to(self.device)})
        if not self.family.dual_text:
            return {"encoder_hidden_states": out["text_embeddings"]}
        out_2 = yield EngineCall("text_encoder_2", {"input_ids_2": torch.from_numpy(ids_2).to(self.device)})
        hidden = torch.cat([out["text_embeddings"], out_2["text_embeddings_2"].to(out["text_embeddings"].dtype)], dim=-1)
        cond = {"encoder_hidden_states": hidden, "text_embeds": out_2["pooled_embeddings"]}
        if "unet_refiner" in self.deployment.optional_components:
            # The refiner conditions on the second tower alone (taken out again in the program).
            cond[_SECOND_TOWER] = out_2["text_embeddings_2"]
        return cond

    def refiner_conditioning(self, second: torch.Tensor, pooled: torch.Tensor, n: int, height: int, width: int) -> tuple[Conditioning, Conditioning]:
        """(uncond, cond) for SDXL-Refiner over the 2n text rows: the second tower's states, its pooled
        vector, and StableDiffusionXLImg2ImgPipeline's aesthetic time ids (size, no crop, score)."""
        d = self.deployment
        ids = [[float(height), float(width), 0.0, 0.0, score] for score in [d.negative_aesthetic_score] * n + [d.aesthetic_score] * n]
        c = {"encoder_hidden_states": second, "text_embeds": pooled, "time_ids": torch.tensor(ids, dtype=torch.float32, device=self.device)}
        return select_rows(c, slice(0, n)), select_rows(c, slice(n, 2 * n))

    def size_conditioning(self, rows: int, height: int, width: int) -> Conditioning:
        """SDXL's ``time_ids`` for each row (the image's own size, no crop); nothing for SD1.5.
        The unconditional rows take the same values, as diffusers' default ``negative_*_size``."""
        if not self.family.added_conditions:
            return {}
        return {"time_ids": torch.tensor([sdxl_time_ids(height, width)] * rows, dtype=torch.float32, device=self.device)}

    def decode(self, latents: torch.Tensor) -> Generator[EngineCall, Tensors, torch.Tensor]:
        out = yield EngineCall("vae_decoder", {"latent": latents})
        return out["image"]

    def score(self, images: torch.Tensor, reward_ids: np.ndarray, reward_mask: np.ndarray) -> Generator[EngineCall, Tensors, torch.Tensor]:
        native = self.deployment.image_size
        if tuple(images.shape[-2:]) != (native, native):
            # The reward graph holds upstream's resize as constant matrices for the native size, so
            # another per-request size is brought there first (antialiased, as PIL resizes).
            images = torch.nn.functional.interpolate(images.float(), size=(native, native), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        inputs = {"image": images, "reward_input_ids": torch.from_numpy(reward_ids), "reward_attention_mask": torch.from_numpy(reward_mask)}
        out = yield EngineCall("image_reward", inputs)
        return out["score"].float().reshape(-1)

    def initial_noise(self, generators: list[torch.Generator], height: int | None = None, width: int | None = None) -> torch.Tensor:
        # A list of generators draws each row from its own generator, as diffusers' prepare_latents does.
        c, h, w = self.latent_shape
        scale = self.deployment.vae_scale
        shape = (c, height // scale if height else h, width // scale if width else w)
        return randn_tensor((len(generators), *shape), generator=generators, device=self.device, dtype=torch.float32)

    # ----------------------------------------------------------------- main

    def __call__(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        settings: GenerationSettings | None = None,
        negative_prompts: Sequence[str] | None = None,
        *,
        on_stage: StageObserver | None = None,
        check_cancelled: Callable[[], None] | None = None,
    ) -> BatchResult:
        """Run the batch on this pipeline's engines, one component call after another."""
        return self.run(self.program(prompts, seeds, settings, negative_prompts, on_stage=on_stage, check_cancelled=check_cancelled))

    def run(self, calls: Generator[EngineCall, Tensors, object]) -> object:
        """Run one stage (``decode``, ``score``, ``encode_text``) or a whole program on this pipeline's engines."""
        if self.engines is None:
            raise RuntimeError("this pipeline has no engines; drive program() with a driver instead")
        return run_program(calls, self.engines)

    def program(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        settings: GenerationSettings | None = None,
        negative_prompts: Sequence[str] | None = None,
        *,
        on_stage: StageObserver | None = None,
        check_cancelled: Callable[[], None] | None = None,
    ) -> Program:
        """Algorithm 1 on one batch, as a generator of component calls (see the module docstring).

        Arguments are checked before the first call is yielded, so a bad batch fails at ``next()``.
        """
        s = settings or self.deployment.defaults
        n = len(prompts)
        if n == 0:
            raise SettingsError("prompt", "empty batch")
        if len(seeds) != n:
            raise SettingsError("seed", f"{len(seeds)} seeds for {n} prompts")
        negative = list(negative_prompts) if negative_prompts is not None else [""] * n
        tau = self.deployment.resolve_tau(s) if s.strategy.is_adaptive else None
        self.deployment.resolve_size(s)
        k = self.deployment.requested_k(s) if s.strategy.is_adaptive else None
        return self._program(list(prompts), list(seeds), s, negative, tau, k, on_stage or (lambda *_: None), check_cancelled or (lambda: None))

    def _program(self, prompts: list[str], seeds: list[int], s: GenerationSettings, negative: list[str], tau: float | None, k: float | None, observe: StageObserver, check: Callable[[], None]) -> Program:
        n = len(prompts)
        height, width = self.deployment.resolve_size(s)

        def timed(stage: str, rows: int, calls: Generator[EngineCall, Tensors, torch.Tensor]) -> Generator[EngineCall, Tensors, torch.Tensor]:
            start = time.perf_counter()
            out = yield from calls
            observe(stage, time.perf_counter() - start, rows)
            return out

        tokens = self.tokenizers(prompts)
        neg_ids, _ = self.tokenizers.clip_ids(negative)
        ids_2 = np.concatenate([self.tokenizers.clip_ids_2(negative), tokens.clip_ids_2]) if self.family.dual_text else None
        embeddings = yield from timed("text", 2 * n, self.encode_text(np.concatenate([neg_ids, tokens.clip_ids]), ids_2))
        second = embeddings.pop(_SECOND_TOWER, None)
        refiner = self.refiner_conditioning(second, embeddings["text_embeds"], n, height, width) if second is not None else None
        embeddings.update(self.size_conditioning(2 * n, height, width))
        uncond, text = select_rows(embeddings, slice(0, n)), select_rows(embeddings, slice(n, 2 * n))
        if self.deployment.zero_empty_negative:
            # SDXL base's force_zeros_for_empty_prompt: diffusers conditions the unconditional branch
            # on zeros (prompt vectors only, not time_ids) when no negative prompt is given.
            empty = torch.tensor([not neg for neg in negative], device=self.device)
            uncond = {k: (v if k == "time_ids" else torch.where(empty.view(-1, *[1] * (v.dim() - 1)), torch.zeros_like(v), v)) for k, v in uncond.items()}
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        noise = self.initial_noise(generators, height, width)
        steps = np.zeros(n, dtype=np.int32)
        routes = [Route.STUDENT] * n
        student_latents = None
        teacher_rows: list[int] = []

        if s.strategy is Strategy.TEACHER_ONLY:
            latents = yield from timed("teacher", n, self._teacher_from_noise(noise, text, uncond, generators, s, check))
            steps += s.teacher_steps
            routes = [Route.TEACHER] * n
            teacher_rows = list(range(n))
            images = yield from timed("decode", n, self.decode(latents))
            scores = yield from timed("reward", n, self.score(images, tokens.reward_ids, tokens.reward_mask))
        else:
            student = _Sampler("unet_student", self.deployment.student_scheduler, s.guidance_scale, self.deployment.student_uses_cfg, self.deployment.timestep_cond_dim)
            student.set_timesteps(s.student_steps, self.device)
            x = noise * student.scheduler.init_noise_sigma
            latents = yield from timed("student", n, student.denoise(x, student.scheduler.timesteps, text, uncond, generators, check))
            student_latents = latents
            steps += len(student.scheduler.timesteps)
            images = yield from timed("decode", n, self.decode(latents))
            scores = yield from timed("reward", n, self.score(images, tokens.reward_ids, tokens.reward_mask))
            if s.strategy.is_adaptive:
                teacher_rows = [i for i in range(n) if float(scores[i]) < tau]
            if teacher_rows:
                idx = torch.tensor(teacher_rows, device=latents.device)
                rows_g = [generators[i] for i in teacher_rows]
                if s.strategy is Strategy.REFINE:
                    # Small rollbacks go to SDXL-Refiner when the deployment has one (supplement D.3).
                    r_uncond, r_text = refiner if refiner is not None and self.deployment.uses_refiner(s.sigma) else (uncond, text)
                    refine = self._teacher_refine(latents[idx], select_rows(r_text, idx), select_rows(r_uncond, idx), rows_g, s, check, use_refiner=r_text is not text)
                    fixed, used = yield from timed("teacher", len(teacher_rows), refine)
                    route = Route.REFINED
                else:
                    fixed = yield from timed("teacher", len(teacher_rows), self._teacher_from_noise(noise[idx], select_rows(text, idx), select_rows(uncond, idx), rows_g, s, check))
                    used, route = s.teacher_steps, Route.REGENERATED
                fixed_images = yield from timed("decode", len(teacher_rows), self.decode(fixed))
                latents = latents.clone()
                images = images.clone()
                latents[idx] = fixed.to(latents.dtype)
                images[idx] = fixed_images.to(images.dtype)
                for i in teacher_rows:
                    routes[i] = route
                    steps[i] += used

        return BatchResult(
            images=to_uint8(images),
            images_float=images,
            latents=latents,
            student_latents=student_latents,
            scores=scores.cpu().numpy().astype(np.float32),
            routes=routes,
            unet_steps=steps,
            truncated=tokens.truncated,
            tau=tau,
            teacher_rows=teacher_rows,
            k=k,
        )

    # ----------------------------------------------------------------- teacher

    def _teacher(self, s: GenerationSettings, use_refiner: bool = False) -> _Sampler:
        if use_refiner:
            return _Sampler("unet_refiner", self.deployment.refiner_scheduler or self.deployment.teacher_scheduler, s.guidance_scale, True, None)
        return _Sampler("unet_teacher", self.deployment.teacher_scheduler, s.guidance_scale, True, None)

    def _teacher_from_noise(self, noise, text, uncond, generators, s: GenerationSettings, check) -> Generator[EngineCall, Tensors, torch.Tensor]:
        teacher = self._teacher(s)
        teacher.set_timesteps(s.teacher_steps, self.device)
        return (yield from teacher.denoise(noise * teacher.scheduler.init_noise_sigma, teacher.scheduler.timesteps, text, uncond, generators, check))

    def _teacher_refine(self, student_latents, text, uncond, generators, s: GenerationSettings, check, use_refiner: bool = False) -> Generator[EngineCall, Tensors, tuple[torch.Tensor, int]]:
        """img2img in latent space: noise the student latent to ``strength=sigma``, run the tail."""
        teacher = self._teacher(s, use_refiner)
        sched = teacher.scheduler
        total = refine_schedule_length(s.teacher_steps, s.sigma)
        teacher.set_timesteps(total, self.device)
        # diffusers' StableDiffusionImg2ImgPipeline.get_timesteps, step for step.
        init_timestep = min(int(total * s.sigma), total)
        t_start = max(total - init_timestep, 0)
        timesteps = sched.timesteps[t_start * sched.order :]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(t_start * sched.order)
        noise = randn_tensor(student_latents.shape, generator=generators, device=self.device, dtype=student_latents.dtype)
        start = sched.add_noise(student_latents, noise, timesteps[:1].repeat(student_latents.shape[0]))
        latents = yield from teacher.denoise(start, timesteps, text, uncond, generators, check)
        return latents, len(timesteps)
