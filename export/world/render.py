"""Scenes that match a caption: a random layout that satisfies it, drawn with PIL.

Layouts are sampled, not fixed, so one caption has many pictures (sizes, places and tints vary
within what the caption allows). Drawing happens at 4x and is downsampled, so edges are
anti-aliased as in a photograph rather than hard pixel steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from export.world.grammar import COLORS, Caption, ObjectSpec

IMAGE_SIZE = 64
BACKGROUND = (235, 235, 230)
SUPERSAMPLE = 4
# Object sides in pixels (at IMAGE_SIZE 64); the judge's size threshold sits between small and big.
SIDE_FREE = (14, 24)
SIDE_SMALL = (10, 14)
SIDE_BIG = (27, 34)
SIDE_SCENE = (13, 21)  # counts and relations: several objects must fit
COLOR_JITTER = 12  # per channel, so no model can learn one exact RGB per colour
GAP = 3  # pixels between the bounding boxes of two objects


@dataclass(frozen=True)
class Placed:
    """An object on the canvas: centre and side in pixels of an ``IMAGE_SIZE`` image."""

    shape: str
    color: str
    cx: float
    cy: float
    side: float
    rgb: tuple[int, int, int]


class LayoutError(RuntimeError):
    """No layout satisfying the caption was found in the allotted tries (should not happen)."""


def layout(caption: Caption, rng: np.random.Generator, size: int = IMAGE_SIZE) -> list[Placed]:
    """A random arrangement of ``caption``'s objects that satisfies all of its attributes."""
    scale = size / IMAGE_SIZE
    for _ in range(200):
        placed = _try_layout(caption, rng, scale, size)
        if placed is not None:
            return placed
    raise LayoutError(f"no layout for {caption.text!r}")


def _side(spec: ObjectSpec, family: str, rng: np.random.Generator, scale: float) -> float:
    low, high = {"small": SIDE_SMALL, "big": SIDE_BIG}.get(spec.size or "", SIDE_SCENE if family in ("count", "relation") else SIDE_FREE)
    return float(rng.uniform(low, high)) * scale


def _centre(side: float, rng: np.random.Generator, size: int, x: tuple[float, float] = (0, 1), y: tuple[float, float] = (0, 1)) -> tuple[float, float]:
    """A centre inside the canvas (2 px margin) and inside the given fractions of it."""
    lo, hi = side / 2 + 2, size - side / 2 - 2
    cx = rng.uniform(max(lo, x[0] * size), min(hi, x[1] * size))
    cy = rng.uniform(max(lo, y[0] * size), min(hi, y[1] * size))
    return float(cx), float(cy)


# The band an object "on the left" etc. is drawn in; the judge accepts anything left of 0.4.
_POSITION_BANDS = {
    "left": ((0.0, 0.30), (0.25, 0.75)),
    "right": ((0.70, 1.0), (0.25, 0.75)),
    "top": ((0.25, 0.75), (0.0, 0.30)),
    "bottom": ((0.25, 0.75), (0.70, 1.0)),
}


def _relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], size: int) -> bool:
    # Drawn with a clear gap along the relation's axis and little offset across it.
    dx, dy = b[0] - a[0], b[1] - a[1]
    along, across = {"left_of": (dx, dy), "right_of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along >= 0.35 * size and abs(across) <= 0.25 * size


def _apart(a: Placed, b: Placed) -> bool:
    reach = (a.side + b.side) / 2 + GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _tint(color: str, rng: np.random.Generator) -> tuple[int, int, int]:
    base = np.asarray(COLORS[color])
    return tuple(int(v) for v in np.clip(base + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3), 0, 255))


def _try_layout(caption: Caption, rng: np.random.Generator, scale: float, size: int) -> list[Placed] | None:
    placed: list[Placed] = []
    for spec in caption.objects:
        side = _side(spec, caption.family, rng, scale)
        band = _POSITION_BANDS.get(spec.position or "", ((0, 1), (0, 1)))
        cx, cy = _centre(side, rng, size, *band)
        obj = Placed(spec.shape, spec.color, cx, cy, side, _tint(spec.color, rng))
        if any(not _apart(obj, other) for other in placed):
            return None
        placed.append(obj)
    if caption.relation and not _relation_holds(caption.relation, (placed[0].cx, placed[0].cy), (placed[1].cx, placed[1].cy), size):
        return None
    return placed


def _draw(draw: ImageDraw.ImageDraw, obj: Placed, k: int) -> None:
    cx, cy, s = obj.cx * k, obj.cy * k, obj.side * k
    h = s / 2
    if obj.shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=obj.rgb)
    elif obj.shape == "square":
        q = 0.9 * h  # a square of the same side looks bigger than the circle; 0.9 evens them out
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=obj.rgb)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=obj.rgb)
    elif obj.shape == "cross":
        t = 0.19 * s  # arm half-thickness: arms are 38 % of the side
        draw.rectangle([cx - h, cy - t, cx + h, cy + t], fill=obj.rgb)
        draw.rectangle([cx - t, cy - h, cx + t, cy + h], fill=obj.rgb)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(objects: Sequence[Placed], size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: the objects on the plain background, anti-aliased."""
    k = SUPERSAMPLE
    canvas = Image.new("RGB", (size * k, size * k), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        _draw(draw, obj, k)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))


def render_caption(caption: Caption, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    return render(layout(caption, rng, size), size)
