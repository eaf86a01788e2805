"""Component tensor specs: the one place a tensor's name, dtype and shape is written.

Every consumer derives what it needs from these objects:
ONNX export (input/output names, dynamic axes, sample inputs), TensorRT profiles,
``config.pbtxt`` and the runtime bindings of every engine (torch, ONNX Runtime, Triton, TensorRT).

A dim is either an int (fixed for a deployment, e.g. latent channels) or a symbol such as
``"B"`` whose min/opt/max range is given by a :class:`SymbolRange` in the component's profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from bll_python.dtypes import dtype

Dim = int | str

BATCH = "B"
# Image sizes chosen per request (``height``/``width``): the latent's and the decoded image's sides.
LATENT_H, LATENT_W = "latent_height", "latent_width"
IMAGE_H, IMAGE_W = "image_height", "image_width"


@dataclass(frozen=True)
class SymbolRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self}")


@dataclass(frozen=True)
class Values:
    """What a tensor holds, so sample inputs (export tracing, parity, engine validation) look real.

    Integers are drawn from ``[low, high)``, floats uniformly from ``[low, high]`` (rounded when
    ``whole``); a float tensor without a range is standard normal.
    """

    low: float | None = None
    high: float | None = None
    whole: bool = False


NORMAL = Values()
BINARY = Values(0, 2)  # masks, and any integer tensor that says nothing else
# Token ids: inside every vocabulary we ship (CLIP's 49408, BERT's 30524 entries).
TOKEN_IDS = Values(0, 1000)
TIMESTEPS = Values(0, 999, whole=True)
PIXELS = Values(0, 1)
# SDXL's micro-conditioning: (original h, w, crop top, left, target h, w) in pixels.
SIZES = Values(0, 1024, whole=True)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    dims: tuple[Dim, ...]
    values: Values = NORMAL

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16", "int32", "int64", "uint8"):
            raise ValueError(f"{self.name}: unsupported dtype {self.dtype!r}")

    @property
    def numpy_dtype(self) -> type:
        return dtype(self.dtype).numpy

    @property
    def triton_dtype(self) -> str:
        return dtype(self.dtype).triton

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Random values of this tensor's dtype and :class:`Values` at ``shape``."""
        v = self.values
        if self.dtype.startswith("int") or self.dtype == "uint8":
            low, high = (BINARY.low, BINARY.high) if v.high is None else (v.low, v.high)
            return rng.integers(int(low), int(high), size=shape).astype(self.numpy_dtype)
        if v.high is None:
            return rng.standard_normal(shape).astype(self.numpy_dtype)
        drawn = rng.uniform(v.low, v.high, size=shape)
        return (drawn.round() if v.whole else drawn).astype(self.numpy_dtype)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(d for d in self.dims if isinstance(d, str))

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape with each symbol replaced by ``sizes[symbol]``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.dims)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str)}


@dataclass(frozen=True)
class ComponentSpec:
    """One deployable model: its tensors and the ranges of its symbolic dims."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: Mapping[str, SymbolRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t in self.inputs + self.outputs:
            missing = [s for s in t.symbols if s not in self.profile]
            if missing:
                raise ValueError(f"{self.name}.{t.name}: symbols {missing} have no range in the profile")
        if self.inputs and self.inputs[0].dims[:1] != (BATCH,):
            raise ValueError(f"{self.name}: the first input must lead with the batch axis {BATCH!r}")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def max_batch(self) -> int:
        return self.profile[BATCH].max

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}; it has {self.input_names + self.output_names}")

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's ``dynamic_axes`` argument."""
        return {t.name: t.dynamic_axes() for t in self.inputs + self.outputs if t.symbols}

    def sizes(self, which: str = "opt", **overrides: int) -> dict[str, int]:
        sizes = {s: getattr(r, which) for s, r in self.profile.items()}
        sizes.update(overrides)
        return sizes

    def input_shapes(self, which: str) -> dict[str, tuple[int, ...]]:
        """Input shapes at the profile's ``min``, ``opt`` or ``max`` point (a TensorRT profile row)."""
        sizes = self.sizes(which)
        return {t.name: t.shape(sizes) for t in self.inputs}

    def sample_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right dtypes and shapes, for export tracing and parity checks."""
        rng = np.random.default_rng(seed)
        sizes = self.sizes(**{BATCH: batch})
        return {t.name: t.sample(rng, t.shape(sizes)) for t in self.inputs}


# ---------------------------------------------------------------------------------------------
# The five components' tensors. Their fixed dims come from the checkpoint's configs, so a spec is
# built per deployment by these factories (bll_python.components says which serves which
# component); tensor names live only here.
# ---------------------------------------------------------------------------------------------


def batch_range(max_batch: int, opt: int | None = None) -> SymbolRange:
    return SymbolRange(1, opt or min(max_batch, 4), max_batch)


def text_encoder_spec(*, seq_len: int, hidden: int, max_batch: int) -> ComponentSpec:
    return ComponentSpec(
        "text_encoder",
        inputs=(TensorSpec("input_ids", "int32", (BATCH, seq_len), TOKEN_IDS),),
        outputs=(TensorSpec("text_embeddings", "float32", (BATCH, seq_len, hidden)),),
        profile={BATCH: batch_range(max_batch)},
    )


def text_encoder_2_spec(*, seq_len: int, hidden: int, pooled: int, max_batch: int) -> ComponentSpec:
    """SDXL's second tower (OpenCLIP bigG): its hidden states plus the pooled, projected prompt vector."""
    return ComponentSpec(
        "text_encoder_2",
        inputs=(TensorSpec("input_ids_2", "int32", (BATCH, seq_len), TOKEN_IDS),),
        outputs=(
            TensorSpec("text_embeddings_2", "float32", (BATCH, seq_len, hidden)),
            TensorSpec("pooled_embeddings", "float32", (BATCH, pooled)),
        ),
        profile={BATCH: batch_range(max_batch)},
    )


def unet_spec(
    name: str,
    *,
    latent_channels: int,
    latent_size: int,
    seq_len: int,
    text_hidden: int,
    max_batch: int,
    timestep_cond_dim: int | None = None,
    pooled_dim: int | None = None,
    time_ids_dim: int | None = None,
    latent_range: SymbolRange | None = None,
) -> ComponentSpec:
    """A denoiser; ``timestep` is per row so rows at different steps can share one call.

    ``max_batch`` counts UNet rows, i.e. it already includes the doubling for CFG. SDXL UNets
    also take the pooled prompt vector (``text_embeds``) and the size conditioning (``time_ids``),
    both per row, so rows of different requests still share a call. With ``latent_range`` the
    latent's sides are symbols (per-request image sizes); calls of different sizes never share one.
    """
    latent = (BATCH, latent_channels, *_sides(latent_size, latent_range, LATENT_H, LATENT_W))
    inputs = [
        TensorSpec("sample", "float32", latent),
        TensorSpec("timestep", "float32", (BATCH,), TIMESTEPS),
        TensorSpec("encoder_hidden_states", "float32", (BATCH, seq_len, text_hidden)),
    ]
    if timestep_cond_dim:
        inputs.append(TensorSpec("timestep_cond", "float32", (BATCH, timestep_cond_dim)))
    if pooled_dim:
        inputs.append(TensorSpec("text_embeds", "float32", (BATCH, pooled_dim)))
        inputs.append(TensorSpec("time_ids", "float32", (BATCH, time_ids_dim), SIZES))
    return ComponentSpec(
        name,
        inputs=tuple(inputs),
        outputs=(TensorSpec("noise_pred", "float32", latent),),
        profile={BATCH: batch_range(max_batch, opt=min(max_batch, 8)), **_side_ranges(latent_range, LATENT_H, LATENT_W)},
    )


def _sides(size: int, side_range: SymbolRange | None, h: str, w: str) -> tuple[Dim, Dim]:
    return (h, w) if side_range else (size, size)


def _side_ranges(side_range: SymbolRange | None, h: str, w: str) -> dict[str, SymbolRange]:
    return {h: side_range, w: side_range} if side_range else {}


def scaled(r: SymbolRange, factor: int) -> SymbolRange:
    return SymbolRange(r.min * factor, r.opt * factor, r.max * factor)


def vae_decoder_spec(*, latent_channels: int, latent_size: int, scale: int, max_batch: int, latent_range: SymbolRange | None = None) -> ComponentSpec:
    """Latents in (already divided by nothing: the graph applies the VAE scaling factor), image in [0, 1] out."""
    image_range = scaled(latent_range, scale) if latent_range else None
    return ComponentSpec(
        "vae_decoder",
        inputs=(TensorSpec("latent", "float32", (BATCH, latent_channels, *_sides(latent_size, latent_range, LATENT_H, LATENT_W))),),
        outputs=(TensorSpec("image", "float32", (BATCH, 3, *_sides(latent_size * scale, image_range, IMAGE_H, IMAGE_W))),),
        profile={BATCH: batch_range(max_batch), **_side_ranges(latent_range, LATENT_H, LATENT_W), **_side_ranges(image_range, IMAGE_H, IMAGE_W)},
    )


def image_reward_spec(*, image_size: int, text_len: int, max_batch: int) -> ComponentSpec:
    """Decoded image in [0, 1] at the deployment's native size plus BERT tokens in, normalised
    ImageReward score out. The graph applies upstream's exact preprocessing (PIL's antialiased
    bicubic resize to 224, as two constant matrices for the native size); images of other
    per-request sizes are brought to the native size by the pipeline first (``AdaptivePipeline.score``)."""
    return ComponentSpec(
        "image_reward",
        inputs=(
            TensorSpec("image", "float32", (BATCH, 3, image_size, image_size), PIXELS),
            TensorSpec("reward_input_ids", "int32", (BATCH, text_len), TOKEN_IDS),
            TensorSpec("reward_attention_mask", "int32", (BATCH, text_len), BINARY),
        ),
        outputs=(TensorSpec("score", "float32", (BATCH,)),),
        profile={BATCH: batch_range(max_batch)},
    )
