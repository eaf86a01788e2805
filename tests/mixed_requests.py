"""A mixed load for the concurrency tests: every strategy, and rows of one strategy with different
settings (sigma, steps, tau, guidance), so merged component calls hold rows that differ in everything
a row may differ in. Each case is (prompt, seed, settings fields)."""

from __future__ import annotations

CASES = [
    ("a red fox in the snow", 3, dict(strategy="refine", tau=1e6, sigma=0.7, teacher_steps=4)),
    ("a koi pond", 1, dict(strategy="student_only", student_steps=3)),
    ("two cats on a sofa", 4, dict(strategy="teacher_only", teacher_steps=3)),
    ("an old lighthouse", 1, dict(strategy="regenerate", tau=1e6, teacher_steps=5)),
    ("a bowl of ramen", 5, dict(strategy="refine", tau=1e6, sigma=0.3, teacher_steps=4)),
    ("a knight in armor", 9, dict(strategy="refine", tau=-1e6)),
    ("sunflowers at night", 2, dict(strategy="refine", tau=1e6, sigma=0.9, teacher_steps=2)),
    ("a robot barista", 6, dict(strategy="teacher_only", guidance_scale=3.0)),
]
