"""Ways to make a picture worse: image degradations, and captions with one attribute changed.

Degradations (blur, noise, colour shift) test that the judge reads shapes, not pixels; a render of a
*wrong* caption, judged against the right one, gives the judge (and the reward's preference pairs)
images that are clean but unfaithful.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from export.world.grammar import COLORS, COUNTS, POSITIONS, RELATIONS, SHAPES, SIZES, Caption


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, ``std`` in 0-255 units."""
    return np.clip(image.astype(np.float32) + rng.normal(0.0, std, image.shape), 0, 255).astype(np.uint8)


def colour_shift(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every hue by ``degrees`` (a white balance gone wrong), keeping saturation and value."""
    hsv = np.asarray(Image.fromarray(image).convert("HSV")).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


def degradations(rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The named degradations the judge is validated on (mild to strong)."""
    return {
        "clean": lambda im: im,
        "blur 1px": lambda im: blur(im, 1.0),
        "blur 1.5px": lambda im: blur(im, 1.5),
        "noise 12": lambda im: noise(im, 12.0, rng),
        "noise 25": lambda im: noise(im, 25.0, rng),
        "hue +15deg": lambda im: colour_shift(im, 15.0),
        "hue -15deg": lambda im: colour_shift(im, -15.0),
    }


def random_degradation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One mild degradation or none, for training data that should not reward pixel-perfect renders."""
    kind = rng.integers(4)
    if kind == 1:
        return blur(image, float(rng.uniform(0.5, 1.5)))
    if kind == 2:
        return noise(image, float(rng.uniform(4, 16)), rng)
    if kind == 3:
        return colour_shift(image, float(rng.uniform(-12, 12)))
    return image


def _other(values: list[str] | tuple[str, ...], current: str | None, rng: np.random.Generator) -> str:
    choices = [v for v in values if v != current]
    return choices[rng.integers(len(choices))]


def perturb(caption: Caption, rng: np.random.Generator) -> tuple[Caption, str]:
    """``caption`` with one attribute changed (colour, shape, size, position, relation or count), and which."""
    objects = list(caption.objects)
    options = ["color", "shape"]
    if caption.family == "size":
        options.append("size")
    if caption.family == "position":
        options.append("position")
    if caption.family == "relation":
        options += ["relation", "relation"]
    if caption.family == "count":
        options += ["count", "count"]
    what = options[rng.integers(len(options))]
    if what == "count":
        n = _other([str(k) for k in (1, *COUNTS)], str(len(objects)), rng)
        family = "object" if n == "1" else "count"
        return Caption(family, (objects[0],) * int(n)), what
    if what == "relation":
        return Caption(caption.family, caption.objects, _other(list(RELATIONS), caption.relation, rng)), what
    i = int(rng.integers(len(objects))) if caption.family == "relation" else 0
    spec = objects[i]
    if what == "color":
        spec = replace(spec, color=_other(list(COLORS), spec.color, rng))
    elif what == "shape":
        spec = replace(spec, shape=_other(SHAPES, spec.shape, rng))
    elif what == "size":
        spec = replace(spec, size=_other(SIZES, spec.size, rng))
    else:
        spec = replace(spec, position=_other(list(POSITIONS), spec.position, rng))
    if caption.family == "count":
        objects = [spec] * len(objects)
    else:
        objects[i] = spec
    if caption.family == "relation" and objects[0] == objects[1]:
        return perturb(caption, rng)  # two identical objects is no longer a relation caption
    return Caption(caption.family, tuple(objects), caption.relation), what
