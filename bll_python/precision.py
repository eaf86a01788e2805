"""What an FP16 engine of a component keeps in FP32, and how far it may drift: plain data.

The FP16 plan lives in the ONNX graph itself: ``export.tensorrt.fp16_graph`` turns weights and
activations into FP16 and keeps the nodes these rules select in FP32, with explicit casts at the
borders of each FP32 island. TensorRT then builds a *strongly typed* engine that follows the graph's
types, which is the only precision mode TensorRT 11 has (weakly typed networks, layer precisions and
the FP16 builder flag are gone there). The rules match ONNX nodes by op type or by node name; the
exporter derives node names from module paths (``/unet/time_proj/Sin``). The component records
(``bll_python.components``) hold the rules; nothing here imports onnx or tensorrt.

Why each guard exists:

- Decomposed norms (opset < 17, hand-written RMS/LayerNorms): the variance is a sum of squares over
  a row or group, and activations of a few hundred already overflow FP16's 65504 when squared. The
  whole norm scope runs in FP32, so ``x^2`` is never stored in FP16. Scopes holding a *native*
  normalization op (LayerNormalization, and GroupNorm, which opset 17 exports as
  InstanceNormalization) are left alone: TensorRT's normalization layer accumulates in FP32 by
  itself (``INormalizationLayer`` compute precision defaults to FP32), and casting around every
  GroupNorm of a UNet that runs 4-50 times per image costs time for nothing.
- Softmax in the text encoder, the VAE decoder and ImageReward: their logits are not bounded (the
  VAE's single-head attention over 4096 tokens, BERT's -1e4 mask offsets). These run once per
  image, so FP32 costs little. The UNets' softmax is left alone: TensorRT's fused attention kernels
  accumulate softmax in FP32, and an FP32 island would break that fusion on the model that runs
  4-50 times per image.
- The UNet's sinusoidal timestep embedding (``time_proj``) and everything that feeds it from the
  ``timestep`` input (the ``Expand`` to the batch): ``t * freq`` reaches ~1000, where FP16's spacing
  is 0.5 rad, so sin/cos of it would be noise; and a timestep rounded to FP16 on its way in is a
  different timestep.
- The whole VAE decoder when the checkpoint's config says ``force_upcast`` (SDXL's VAE): its trained
  activations exceed FP16's 65504 in the decoder's up blocks, so diffusers' SDXL pipelines decode it
  in FP32, and so does its engine (``FORCE_UPCAST``, chosen by ``Component.fp32_rules_for`` from the
  deployment's ``vae_force_upcast``). The fp16-fix VAE says false and gets the usual rules.
- ImageReward's head and its root-scope ops (pixel normalisation before the ViT, ``(r - mean) / std``
  after the head): the score is compared with ``tau`` to 3-4 digits, beyond FP16's ~3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ONNX ops whose TensorRT layer (INormalizationLayer) computes its statistics in FP32 by itself.
NATIVE_NORMALIZATION_OPS = ("LayerNormalization", "InstanceNormalization", "GroupNormalization")


@dataclass(frozen=True)
class Fp32Rule:
    """ONNX nodes to keep in FP32: any whose op type is in ``op_types`` or whose name matches.

    ``native_ops``: a node whose scope (its name up to the last ``/``) holds one of these ops is not
    selected; the native op already computes in FP32. ``feeders``: also keep every node that feeds a
    selected node a floating-point value, back to the graph inputs (the timestep's ``Expand``).
    """

    why: str
    op_types: tuple[str, ...] = ()
    name_pattern: str | None = None
    native_ops: tuple[str, ...] = ()
    feeders: bool = False

    def matches(self, op_type: str, node_name: str) -> bool:
        if op_type in self.op_types:
            return True
        return bool(self.name_pattern and re.search(self.name_pattern, node_name or ""))


@dataclass(frozen=True)
class Tolerance:
    """An output element fails only when it exceeds both ``atol`` and ``rtol`` (relative to the FP32 reference)."""

    atol: float
    rtol: float
    why: str


NORMALIZATION = Fp32Rule(
    "variance of a row or group is a sum of squares that overflows FP16 (decomposed norms; native ones compute in FP32)",
    name_pattern=r"(?i)/[^/]*norm[^/]*/[^/]+$",
    native_ops=NATIVE_NORMALIZATION_OPS,
)
SOFTMAX = Fp32Rule("unbounded logits (long single-head attention, -1e4 mask offsets)", op_types=("Softmax",))
TIME_PROJ = Fp32Rule("t * freq reaches ~1000 where FP16 spacing is 0.5 rad; the timestep must reach it unrounded", name_pattern=r"/time_proj/", feeders=True)
REWARD_HEAD = Fp32Rule("the score is compared with tau to 3-4 digits", name_pattern=r"^/head/")
REWARD_ROOT_OPS = Fp32Rule("pixel normalisation and (reward - mean) / std around the score; cheap elementwise ops", name_pattern=r"^/[^/]+$")

# Every node (``^`` matches any name, also an empty one): a graph whose checkpoint asks for FP32.
FORCE_UPCAST = Fp32Rule("the checkpoint's VAE config says force_upcast: diffusers decodes it in FP32, its activations overflow FP16", name_pattern=r"^")

# For a graph no record describes: the one guard every network needs.
DEFAULT_FP32_RULES = (NORMALIZATION,)
DEFAULT_TOLERANCE = Tolerance(3e-2, 3e-2, "no component-specific tolerance")
