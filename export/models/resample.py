"""ImageReward's image preprocessing as matrix products: PIL's antialiased bicubic resize and the crop.

Upstream ImageReward preprocesses a PIL image with torchvision's ``Resize(224, BICUBIC)`` and
``CenterCrop(224)``; on a PIL image that is ``Image.resize`` with PIL's bicubic filter (a = -0.5),
which *widens the filter by the scale factor when downscaling* (antialiasing). Neither
``F.interpolate(..., antialias=True)`` nor ONNX ``Resize`` with ``antialias`` exports to opset 17 and
TensorRT, so the graph applies the same filter as two constant matrices instead: one [224, W] for
the width pass and one [224, H] for the height pass, each holding PIL's normalised filter weights,
with the centre crop folded in by keeping only the kept output rows. Two MatMuls are exact in
float32, export to every runtime, and cost ~2 * 224 * S multiply-adds per pixel row.

PIL's weights, as ``ImagingResample`` computes them for output pixel ``i`` of an ``in -> out``
resize: ``scale = in / out``, ``filterscale = max(scale, 1)``, ``center = (i + 0.5) * scale``, and
input pixel ``j`` gets ``bicubic((j + 0.5 - center) / filterscale)``, normalised to sum 1 over the
pixels inside the image. PIL also bounds ``j`` by ``center +- 2 * filterscale``; the bicubic kernel is
zero beyond 2, so the full row is the same thing. PIL resizes width first and keeps each pass's
result as uint8 (clipped, rounded), and upstream scores the uint8 image diffusers' ``numpy_to_pil``
returns; the graph rounds to the same 256 levels at the same three places. What remains is PIL's
fixed-point arithmetic: a rare one-level (1/255) difference where a value falls near a rounding
boundary.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import torch

PIL_BICUBIC_A = -0.5  # PIL's ``bicubic_filter``; torch's bicubic uses -0.75


def pil_bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic kernel (Keys, a = -0.5), zero for |x| >= 2."""
    a = PIL_BICUBIC_A
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@lru_cache(maxsize=32)
def pil_resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] float64: row ``i`` holds PIL's normalised antialiased bicubic weights of output pixel ``i``."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    center = (np.arange(out_size) + 0.5) * scale
    weights = pil_bicubic((np.arange(in_size)[None, :] + 0.5 - center[:, None]) / filterscale)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` with an int: the shorter side becomes ``size``, the longer keeps the aspect (floored)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def center_crop_offset(length: int, size: int) -> int:
    """torchvision ``CenterCrop``'s first kept index (Python's round: half to even)."""
    return int(round((length - size) / 2.0))


def resize_crop_matrices(height: int, width: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [size, height], cols [size, width]) float32: ``rows @ img @ cols.T`` is ``Resize(size)`` then ``CenterCrop(size)``."""
    new_h, new_w = resized_size(height, width, size)
    top, left = center_crop_offset(new_h, size), center_crop_offset(new_w, size)
    rows = pil_resample_matrix(height, new_h)[top : top + size]
    cols = pil_resample_matrix(width, new_w)[left : left + size]
    return rows.astype(np.float32), cols.astype(np.float32)


def to_8bit(image: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] values to the 256 levels of a uint8 image (half to even, as numpy's ``round``)."""
    return torch.round(image * 255.0) / 255.0


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] -> [B, C, size, size] as upstream sees it: the image as uint8 (diffusers'
    ``numpy_to_pil``), PIL's antialiased bicubic ``Resize(size)`` with its 8-bit result after each pass,
    ``CenterCrop(size)``.

    H and W are read as Python ints, so a traced graph holds the two matrices as constants for the
    traced image size (the spec's spatial dims are static).
    """
    with warnings.catch_warnings():
        # While tracing, torch warns that these become constants: they are meant to.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        rows, cols = resize_crop_matrices(int(image.shape[-2]), int(image.shape[-1]), size)
        rows_t = torch.from_numpy(rows).to(image.device, image.dtype)
        cols_t = torch.from_numpy(cols).to(image.device, image.dtype)
    image = to_8bit(image.clamp(0.0, 1.0))
    image = to_8bit(torch.matmul(image, cols_t.t()).clamp(0.0, 1.0))  # width pass first, as PIL does
    return to_8bit(torch.matmul(rows_t, image).clamp(0.0, 1.0))
