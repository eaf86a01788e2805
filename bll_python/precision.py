"""What an FP16 engine of a component must keep in FP32, and how far it may drift: plain data.

The component records (``bll_python.components``) hold these; ``export.tensorrt`` applies the rules
to a TensorRT network and checks engines against the tolerances. Nothing here imports tensorrt.

Why each guard exists:

- Normalization layers (LayerNorm, and GroupNorm, which opset 17 exports as InstanceNormalization),
  everywhere: the variance is a sum of squares over a whole row or group, and activations of a few
  hundred already overflow FP16's 65504 when squared and summed. TensorRT warns about exactly this
  ("Running layernorm after self-attention in FP16 may cause overflow"). Decomposed norms (opset
  < 17, or hand-written ones) are caught by their ReduceMean/Pow/Sqrt inside a ``*norm*`` scope.
- Softmax in the text encoder, the VAE decoder and ImageReward: their logits are not bounded (the
  VAE's single-head attention over 4096 tokens, BERT's -1e4 mask offsets). These are run once per
  image, so FP32 costs little. The UNets' softmax is left alone: TensorRT's fused attention kernels
  already accumulate softmax in FP32, and pinning the layer would break that fusion on the model
  that runs 4-50 times per image.
- The UNet's sinusoidal timestep embedding (``time_proj``): ``t * freq`` reaches ~1000, where FP16's
  spacing is 0.5 rad, so sin/cos of it would be noise. Its outputs are pinned to FP32 as well.
- ImageReward's head and its root-scope ops (pixel normalisation before the ViT, ``(r - mean) / std``
  after the head): the score is compared with ``tau`` to 3-4 digits, beyond FP16's ~3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Fp32Rule:
    """Layers to run in FP32: any whose TensorRT type is in ``layer_types`` or whose name matches.

    Layer names are the ONNX node names (``/unet/time_proj/Sin``), which the exporter derives from
    module paths; ``outputs`` also pins the output tensors, for values that must stay FP32 downstream.
    """

    why: str
    layer_types: tuple[str, ...] = ()
    name_pattern: str | None = None
    outputs: bool = False

    def matches(self, layer_type: str, layer_name: str) -> bool:
        if layer_type in self.layer_types:
            return True
        return bool(self.name_pattern and re.search(self.name_pattern, layer_name or ""))


@dataclass(frozen=True)
class Tolerance:
    """An engine output element fails only when it exceeds both ``atol`` and ``rtol``."""

    atol: float
    rtol: float
    why: str


NORMALIZATION = Fp32Rule(
    "variance of a row or group is a sum of squares that overflows FP16",
    layer_types=("NORMALIZATION",),
    name_pattern=r"(?i)/[^/]*norm[^/]*/(ReduceMean|Pow|Sqrt)",
)
SOFTMAX = Fp32Rule("unbounded logits (long single-head attention, -1e4 mask offsets)", layer_types=("SOFTMAX",))
TIME_PROJ = Fp32Rule("t * freq reaches ~1000 where FP16 spacing is 0.5 rad", name_pattern=r"/time_proj/", outputs=True)
REWARD_HEAD = Fp32Rule("the score is compared with tau to 3-4 digits", name_pattern=r"^/head/", outputs=True)
REWARD_ROOT_OPS = Fp32Rule(
    "pixel normalisation and (reward - mean) / std around the score; cheap elementwise ops",
    name_pattern=r"^/[^/]+$",
    outputs=True,
)

# For a graph no record describes: the one guard every network needs.
DEFAULT_FP32_RULES = (NORMALIZATION,)
DEFAULT_TOLERANCE = Tolerance(3e-2, 3e-2, "no component-specific tolerance")
