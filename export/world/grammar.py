"""The caption grammar of the shapes world: what a prompt may say, and what it means.

Five colours, four shapes, and five prompt families:

| family    | example                                   | attributes the judge checks                  |
|-----------|-------------------------------------------|----------------------------------------------|
| object    | "a red circle"                            | colour, shape, count                         |
| size      | "a small blue square"                     | colour, shape, size, count                   |
| position  | "a green triangle on the left"            | colour, shape, position, count               |
| count     | "three yellow crosses"                    | colour and shape of each, count              |
| relation  | "a red circle to the left of a blue cross" | colour and shape of both, relation, count   |

Single objects are easy; counts and relations (binding two colours to two shapes and placing them)
are where a few-step student is expected to fail more often than its teacher.

A prompt is parsed back into a :class:`Caption` (the judge's reference), so the judge never needs to
know how a prompt was produced. Splits are a seeded shuffle per family: ``train`` is all that any
training stage sees; ``calibration`` (tau) and ``heldout`` (the benchmark) are never trained on.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import Iterable

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "yellow": (235, 195, 25),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "purple": (150, 55, 195),
}
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES = ("small", "big")
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
RELATIONS = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}
COUNTS = {2: "two", 3: "three"}
FAMILIES = ("object", "size", "position", "count", "relation")


@dataclass(frozen=True)
class ObjectSpec:
    """One object a caption asks for; ``size`` / ``position`` are None when the caption leaves them free."""

    color: str
    shape: str
    size: str | None = None
    position: str | None = None

    def phrase(self) -> str:
        words = ["a"] + ([self.size] if self.size else []) + [self.color, self.shape]
        if self.position:
            words.append(POSITIONS[self.position])
        return " ".join(words)


@dataclass(frozen=True)
class Caption:
    """What a prompt means: its objects (a count prompt repeats one spec) and an optional relation.

    ``relation`` reads "objects[0] <relation> objects[1]".
    """

    family: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.family == "count":
            spec = self.objects[0]
            return f"{COUNTS[len(self.objects)]} {spec.color} {PLURALS[spec.shape]}"
        if self.family == "relation":
            return f"{self.objects[0].phrase()} {RELATIONS[self.relation]} {self.objects[1].phrase()}"
        return self.objects[0].phrase()


def all_captions() -> list[Caption]:
    """Every caption the grammar can produce, in a fixed order (1700 of them; 1520 are relations)."""
    objects = [(c, s) for c in COLORS for s in SHAPES]
    captions: list[Caption] = []
    captions += [Caption("object", (ObjectSpec(c, s),)) for c, s in objects]
    captions += [Caption("size", (ObjectSpec(c, s, size=z),)) for c, s in objects for z in SIZES]
    captions += [Caption("position", (ObjectSpec(c, s, position=p),)) for c, s in objects for p in POSITIONS]
    captions += [Caption("count", (ObjectSpec(c, s),) * n) for c, s in objects for n in COUNTS]
    captions += [
        Caption("relation", (ObjectSpec(*a), ObjectSpec(*b)), r) for a in objects for b in objects if a != b for r in RELATIONS
    ]
    return captions


# ----------------------------------------------------------------------------------------- parse

_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_OBJECT = rf"a (?:(?P<{{p}}size>{'|'.join(SIZES)}) )?(?P<{{p}}color>{_COLOR}) (?P<{{p}}shape>{_SHAPE})"
_POSITION = "|".join(re.escape(v) for v in POSITIONS.values())
_RELATION = "|".join(re.escape(v) for v in RELATIONS.values())
_SINGLE_RE = re.compile(rf"^{_OBJECT.format(p='')}(?: (?P<position>{_POSITION}))?$")
_RELATION_RE = re.compile(rf"^{_OBJECT.format(p='a_')} (?P<relation>{_RELATION}) {_OBJECT.format(p='b_')}$")
_COUNT_RE = re.compile(rf"^(?P<count>{'|'.join(COUNTS.values())}) (?P<color>{_COLOR}) (?P<shape>{'|'.join(PLURALS.values())})$")


class GrammarError(ValueError):
    """A prompt the shapes grammar cannot produce."""


def parse(prompt: str) -> Caption:
    """The :class:`Caption` a prompt of this grammar means; raises :class:`GrammarError` otherwise."""
    text = " ".join(prompt.strip().lower().split())
    if m := _SINGLE_RE.match(text):
        position = next((k for k, v in POSITIONS.items() if v == m["position"]), None)
        spec = ObjectSpec(m["color"], m["shape"], m["size"], position)
        family = "size" if spec.size and not position else "position" if position and not spec.size else "object"
        if spec.size and position:
            raise GrammarError(f"{prompt!r}: the grammar gives an object a size or a position, not both")
        return Caption(family, (spec,))
    if m := _COUNT_RE.match(text):
        n = next(k for k, v in COUNTS.items() if v == m["count"])
        shape = next(s for s, p in PLURALS.items() if p == m["shape"])
        return Caption("count", (ObjectSpec(m["color"], shape),) * n)
    if m := _RELATION_RE.match(text):
        if m["a_size"] or m["b_size"]:
            raise GrammarError(f"{prompt!r}: related objects carry no size in this grammar")
        relation = next(k for k, v in RELATIONS.items() if v == m["relation"])
        a, b = ObjectSpec(m["a_color"], m["a_shape"]), ObjectSpec(m["b_color"], m["b_shape"])
        if a == b:
            raise GrammarError(f"{prompt!r}: a relation needs two different objects")
        return Caption("relation", (a, b), relation)
    raise GrammarError(f"{prompt!r} is not a shapes-world prompt (e.g. 'a red circle', 'two blue squares', 'a red circle above a green cross')")


# ----------------------------------------------------------------------------------------- splits

SPLIT_SEED = 12
# Share of each family kept out of training: calibration sets tau, heldout is the benchmark.
CALIBRATION_SHARE = 0.10
HELDOUT_SHARE = 0.12


@dataclass(frozen=True)
class Splits:
    train: tuple[Caption, ...]
    calibration: tuple[Caption, ...]
    heldout: tuple[Caption, ...]

    def __getitem__(self, name: str) -> tuple[Caption, ...]:
        return {"train": self.train, "calibration": self.calibration, "heldout": self.heldout}[name]


@functools.lru_cache(maxsize=4)
def splits(seed: int = SPLIT_SEED) -> Splits:
    """Seeded, per-family shuffle into train / calibration / heldout (each family in every split).

    Cached: it costs ~30 ms, and samplers ask for it per drawn caption."""
    rng = random.Random(seed)
    parts: dict[str, list[Caption]] = {"train": [], "calibration": [], "heldout": []}
    for family in FAMILIES:
        members = [c for c in all_captions() if c.family == family]
        rng.shuffle(members)
        n_cal = max(1, round(CALIBRATION_SHARE * len(members)))
        n_held = max(1, round(HELDOUT_SHARE * len(members)))
        parts["heldout"] += members[:n_held]
        parts["calibration"] += members[n_held : n_held + n_cal]
        parts["train"] += members[n_held + n_cal :]
    # Interleave families so that the first N lines of a prompt file are a fair sample of all of them.
    return Splits(**{name: tuple(_interleave(caps, rng)) for name, caps in parts.items()})


def _interleave(captions: Iterable[Caption], rng: random.Random) -> list[Caption]:
    items = list(captions)
    rng.shuffle(items)
    return items


def prompt_file_text(captions: Iterable[Caption], title: str) -> str:
    lines = [f"# {title}"] + [c.text for c in captions]
    return "\n".join(lines) + "\n"
