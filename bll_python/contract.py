"""The serving contract of ``adaptive_diffusion``: its request fields and response tensors.

One description feeds the BLS ``config.pbtxt``, the BLS request parser, the client library and the
README table. Every field is one value per request row (Triton dims ``[1]`` after the batch dim).
"""

from __future__ import annotations

from dataclasses import dataclass

from bll_python.dtypes import dtype
from bll_python.settings import LIMITS, Strategy


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str  # numpy spelling; "bytes" for Triton STRING
    optional: bool
    doc: str

    @property
    def triton_dtype(self) -> str:
        return dtype(self.dtype).triton

    @property
    def client_dtype(self) -> str:
        """tritonclient's datatype string."""
        return dtype(self.dtype).client

    @property
    def numpy_dtype(self) -> type:
        return dtype(self.dtype).numpy

    @property
    def allowed(self) -> str:
        if self.name == "seed":
            return "any int64"
        if self.name in LIMITS:
            return str(LIMITS[self.name])
        if self.name == "strategy":
            return " | ".join(s.value for s in Strategy)
        if self.name == "exact_k":
            return "true | false"
        return ""


REQUEST_FIELDS: tuple[Field, ...] = (
    Field("prompt", "bytes", False, "UTF-8 text; longer than 77 CLIP tokens is truncated as diffusers does (reported in the `truncated` output)"),
    Field("negative_prompt", "bytes", True, "UTF-8 text for the unconditional branch of classifier-free guidance (default empty)"),
    Field("seed", "int64", True, "per-row seed; randomness equals diffusers' torch.Generator('cpu').manual_seed(seed) (default 0)"),
    Field("guidance_scale", "float32", True, "classifier-free guidance for student and teacher (<= 1 disables CFG)"),
    Field("student_steps", "int32", True, "student sampling steps"),
    Field("teacher_steps", "int32", True, "teacher DPM-Solver++ steps actually run (refine runs the last teacher_steps of a teacher_steps/sigma schedule)"),
    Field("tau", "float32", True, "ImageReward cut-off: rows scoring below go to the teacher; exclusive with k"),
    Field("k", "float32", True, "percentile of the calibrated student scores to use as tau; exclusive with tau"),
    Field("sigma", "float32", True, "refinement rollback strength (img2img strength)"),
    Field("strategy", "bytes", True, "what to do with the rows below tau"),
    Field("height", "int32", True, "image height in pixels (default the model's native size); the deployment's range and multiple apply"),
    Field("width", "int32", True, "image width in pixels (default the model's native size); the deployment's range and multiple apply"),
    Field("exact_k", "bool", True, "true: k (or the default k) is used as given, whatever the load; false (default): the deployment's load policy may lower it toward its floor while the server is overloaded"),
)

# Response tensors; `image` is [H, W, 3] at the request's size (dims [-1, -1, 3] when sizes vary).
RESPONSE_FIELDS: tuple[Field, ...] = (
    Field("image", "uint8", False, "H x W x 3 RGB"),
    Field("score", "float32", False, "ImageReward score of the student sample (teacher_only: of the teacher image)"),
    Field("route", "bytes", False, "student | refined | regenerated | teacher"),
    Field("unet_steps", "int32", False, "denoising steps spent on this image (a CFG step counts once)"),
    # Triton 2.51's Python backend cannot attach response parameters, so truncation is a tensor.
    Field("truncated", "bool", False, "true where the prompt was cut to 77 CLIP tokens"),
    # Likewise the gate's decision: the load policy may have lowered k, and the client is told.
    Field("effective_k", "float32", False, "the percentile the gate used (lower than the requested k while the load policy sheds teacher work); -1 when the request gave tau or its strategy has no gate"),
    Field("effective_tau", "float32", False, "the ImageReward cut-off the gate used; 0 when its strategy has no gate (effective_k is then -1)"),
)

SETTING_FIELDS: tuple[str, ...] = tuple(f.name for f in REQUEST_FIELDS if f.name not in ("prompt", "negative_prompt", "seed"))


def field(name: str) -> Field:
    for f in REQUEST_FIELDS + RESPONSE_FIELDS:
        if f.name == name:
            return f
    raise KeyError(name)
