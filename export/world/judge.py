"""The judge: an analytic checker that says which of a prompt's attributes an image gets right.

It stands in for the paper's human raters and is used for evaluation only: serving never calls it,
and the reward model only ever sees the preference pairs it ranked.

1. Segment. A pixel is foreground when it is saturated (the background is grey); its colour is the
   palette colour nearest in hue. Each colour's mask is split into
   connected components; a component with fewer than ``MIN_AREA`` pixels left after a 3x3 opening
   is noise.
2. Describe each component: colour, bounding box, centroid, and three shape descriptors: the fill
   of its bounding box (square ~1, circle ~0.78, cross ~0.63, triangle ~0.55), the share of its
   pixels in the top half of the box (a triangle, pointing up, ~0.28; the others ~0.5) and the fill
   of the box's four corner sixteenths (square ~1, triangle ~0.43, circle ~0.28, cross 0).
3. Match the caption's objects to the detections (the assignment that passes the most checks) and
   check: colour and shape of every object, its size or position when the caption gives one, the
   relation between the two objects of a relation caption, and the object count; every detected
   object beyond the caption's adds one failed check.

``fidelity`` is the share of checks passed; an image is ``correct`` when all pass.
"""

from __future__ import annotations

import colorsys
import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from export.world.grammar import COLORS, Caption, ObjectSpec, parse
from export.world.render import IMAGE_SIZE

MIN_SATURATION = 0.30
MIN_VALUE = 0.20
MIN_AREA = 14  # pixels at 64 px; the smallest drawn object (a 10 px triangle) covers ~45
BIG_SIDE = 21.0  # pixels at 64 px: small objects are drawn at 10-14, big ones at 27-34
POSITION_EDGE = 0.4  # "on the left": centroid in the left 40 % (drawn in the left 30 %)
RELATION_MARGIN = 0.1  # "A left of B": A's centroid at least 10 % of the width left of B's, and more left than above or below
_HUES = {name: colorsys.rgb_to_hsv(*(v / 255 for v in rgb))[0] for name, rgb in COLORS.items()}


@dataclass(frozen=True)
class Detection:
    color: str
    shape: str
    cx: float  # centroid, as a fraction of the image width
    cy: float
    side: float  # longer bounding-box side in pixels of a 64 px image
    area: int
    fill: float
    top_share: float
    corners: float


@dataclass
class Verdict:
    caption: Caption
    detections: list[Detection]
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def fidelity(self) -> float:
        return sum(self.checks.values()) / len(self.checks)

    @property
    def correct(self) -> bool:
        return all(self.checks.values())


def _hue_distance(a: np.ndarray, b: float) -> np.ndarray:
    d = np.abs(a - b)
    return np.minimum(d, 1.0 - d)


def segment(image: np.ndarray) -> np.ndarray:
    """int [H, W]: the index in ``COLORS`` of each pixel's colour, -1 for background."""
    rgb = image.astype(np.float32) / 255.0
    high, low = rgb.max(-1), rgb.min(-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    hue = _hue(rgb)
    distances = np.stack([_hue_distance(hue, h) for h in _HUES.values()], -1)
    labels = distances.argmin(-1)
    foreground = (saturation >= MIN_SATURATION) & (high >= MIN_VALUE)
    return np.where(foreground, labels, -1)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Vectorised HSV hue in [0, 1) (colorsys' formula)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(-1), rgb.min(-1)
    span = np.maximum(high - low, 1e-6)
    h = np.where(high == r, (g - b) / span, np.where(high == g, 2.0 + (b - r) / span, 4.0 + (r - g) / span))
    return (h / 6.0) % 1.0


def _corner_fill(box: np.ndarray) -> float:
    """Fill of the four outer quarters-of-quarters of the box (|u|, |v| > 0.5 in [-1, 1] box units)."""
    h, w = box.shape
    v = (np.arange(h) + 0.5) / h * 2 - 1
    u = (np.arange(w) + 0.5) / w * 2 - 1
    region = (np.abs(v)[:, None] > 0.5) & (np.abs(u)[None, :] > 0.5)
    return float(box[region].mean()) if region.any() else 0.0


def classify_shape(fill: float, top_share: float, corners: float) -> str:
    """Thresholds set between the descriptor ranges of clean and blurred renders of each shape."""
    if top_share < 0.40:  # triangles 0.25-0.37, the rest 0.44-0.55
        return "triangle"
    if corners >= 0.55:  # squares 0.61-1.0, circles up to 0.47
        return "square"
    if corners >= 0.10 or fill >= 0.74:  # a cross leaves its corners empty (<= 0.06) and fills <= 0.72
        return "circle"
    return "cross"


def detect(image: np.ndarray) -> list[Detection]:
    """The objects in a uint8 [H, W, 3] image."""
    size = image.shape[0]
    scale = IMAGE_SIZE / size
    labels = segment(image)
    found: list[Detection] = []
    for index, color in enumerate(COLORS):
        mask = labels == index
        # Speckle is what a 3x3 opening removes; the descriptors use the component as it is.
        solid = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
        components, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
        for k in range(1, n + 1):
            member = components == k
            if (solid & member).sum() * scale**2 < MIN_AREA:
                continue
            ys, xs = np.nonzero(member)
            area = len(ys)
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            fill = area / float(h * w)
            middle = (ys.min() + ys.max()) / 2.0
            top_share = float(np.mean(ys < middle) + 0.5 * np.mean(ys == middle))
            corners = _corner_fill(components[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == k)
            found.append(
                Detection(
                    color=color,
                    shape=classify_shape(fill, top_share, corners),
                    cx=float(xs.mean() + 0.5) / size,
                    cy=float(ys.mean() + 0.5) / size,
                    side=float(max(h, w)) * scale,
                    area=area,
                    fill=fill,
                    top_share=top_share,
                    corners=corners,
                )
            )
    return found


def _object_checks(spec: ObjectSpec, d: Detection | None, prefix: str) -> dict[str, bool]:
    checks = {f"{prefix}color": d is not None and d.color == spec.color, f"{prefix}shape": d is not None and d.shape == spec.shape}
    if spec.size:
        checks[f"{prefix}size"] = d is not None and (d.side >= BIG_SIDE) == (spec.size == "big")
    if spec.position:
        checks[f"{prefix}position"] = d is not None and _at(spec.position, d)
    return checks


def _at(position: str, d: Detection) -> bool:
    return {"left": d.cx < POSITION_EDGE, "right": d.cx > 1 - POSITION_EDGE, "top": d.cy < POSITION_EDGE, "bottom": d.cy > 1 - POSITION_EDGE}[position]


def _related(relation: str, a: Detection | None, b: Detection | None) -> bool:
    if a is None or b is None:
        return False
    dx, dy = b.cx - a.cx, b.cy - a.cy
    along, across = {"left_of": (dx, dy), "right_of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    # Clearly apart along the relation's axis, and more along it than across it.
    return along > RELATION_MARGIN and along > abs(across)


def judge_caption(image: np.ndarray, caption: Caption) -> Verdict:
    detections = detect(image)
    n = len(caption.objects)
    best: dict[str, bool] | None = None
    # Brute force over assignments: a caption has at most 3 objects and an image rarely more than a few.
    pool: list[Detection | None] = list(detections) + [None] * n
    for chosen in itertools.permutations(range(len(pool)), n):
        picks = [pool[i] for i in chosen]
        if any(p is None for p in picks) and len(detections) >= n and best is not None:
            continue
        checks: dict[str, bool] = {}
        for i, (spec, d) in enumerate(zip(caption.objects, picks)):
            checks.update(_object_checks(spec, d, f"object{i}."))
        if caption.relation:
            checks["relation"] = _related(caption.relation, picks[0], picks[1])
        checks["count"] = len(detections) == n
        if best is None or sum(checks.values()) > sum(best.values()):
            best = checks
    assert best is not None
    # Every object beyond the caption's is one more failed check: clutter costs what a rater would
    # take off, and an image of noise (dozens of blobs, some matching by chance) scores near zero.
    for j in range(max(0, len(detections) - n)):
        best[f"extra{j}"] = False
    return Verdict(caption, detections, best)


def judge(image: np.ndarray, prompt: str) -> Verdict:
    """Which of ``prompt``'s attributes ``image`` (uint8 [H, W, 3]) gets right."""
    return judge_caption(image, parse(prompt))
