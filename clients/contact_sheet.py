"""One PNG that shows what the adaptive pipeline did: per prompt, the student's sample beside the
served result, with the route, the gate's score and (when given) a verdict for each image."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from clients.client import Generation

SCALE = 3  # 64 px images are hard to see at 1:1
TEXT_W = 270
PAD = 6
LINE = 12


def contact_sheet(
    students: Sequence[Generation],
    results: Sequence[Generation],
    path: Path,
    verdict: Callable[[np.ndarray, str], str] | None = None,
) -> Path:
    """Rows of [prompt | student sample | served result]; ``students[i]`` and ``results[i]`` share prompt and seed."""
    size = results[0].image.shape[0] * SCALE
    row_h = size + 2 * LINE + 2 * PAD
    head = 2 * LINE + PAD
    sheet = Image.new("RGB", (TEXT_W + 2 * (size + PAD) + PAD, head + row_h * len(results)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 2), "prompt (seed); frame: green = accepted by the gate, red = sent to the teacher", fill="black")
    draw.text((TEXT_W, LINE + 1), "student sample", fill="black")
    draw.text((TEXT_W + size + PAD, LINE + 1), "served result", fill="black")
    for i, (s, r) in enumerate(zip(students, results)):
        top = head + i * row_h
        draw.text((PAD, top + size // 2 - LINE), _wrap(r.prompt, 40), fill="black")
        draw.text((PAD, top + size // 2 + LINE), f"seed {r.seed}", fill="gray")
        for col, (g, caption) in enumerate(((s, f"score {s.score:+.3f} {'<' if r.route != 'student' else '>='} tau {r.effective_tau:+.3f}"), (r, f"{r.route}, {r.unet_steps} steps"))):
            x = TEXT_W + col * (size + PAD)
            sheet.paste(Image.fromarray(g.image).resize((size, size), Image.Resampling.NEAREST), (x, top))
            accepted = col == 0 and r.route == "student"
            draw.rectangle([x - 1, top - 1, x + size, top + size], outline="green" if accepted else ("red" if col == 0 else "gray"))
            draw.text((x, top + size + 2), caption, fill="black")
            if verdict is not None:
                draw.text((x, top + size + 2 + LINE), verdict(g.image, g.prompt), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])
