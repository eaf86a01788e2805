"""The fenced code blocks of the README and of the documents it links, with their skip markers.

A block is run by ``tests/test_readme_recipes.py`` unless the line just before its opening fence
(blank lines aside) is a marker saying why it cannot run on the CI machine::

    <!-- recipe: skip gpu: builds TensorRT engines -->
    ```bash
    python -m export.tensorrt ...
    ```

The kind after ``skip`` is one of ``SKIP_KINDS``; the text after the colon is the reason the test
reports. Every fence carries a language: an untagged block might hold commands nobody runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHELL = frozenset({"bash", "sh", "shell"})
CONSOLE = frozenset({"console"})  # `$ command` lines, each followed by the output it shows
PYTHON = frozenset({"python", "py"})
RUNNABLE = SHELL | CONSOLE | PYTHON

SKIP_KINDS = {
    "gpu": "needs an NVIDIA GPU",
    "hub": "needs the Hugging Face Hub or checkpoints downloaded from it",
    "docker": "needs Docker and NVIDIA's container",
    "long": "runs for minutes",
    "sketch": "shows the shape of code a reader writes, not a program",
    "cluster": "needs a Kubernetes cluster (kubectl apply, helm)",
}

_MARKER = re.compile(r"^\s*<!--\s*recipe:\s*(?P<body>.*?)\s*-->\s*$")
_MARKER_BODY = re.compile(r"^skip\s+(?P<kind>[a-z]+)\s*:\s*(?P<reason>\S.*)$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_LINK = re.compile(r"\]\((?P<target>[^)#\s]+\.md)(?:#[^)\s]*)?\)")


class MarkdownError(ValueError):
    """A document the test cannot read unambiguously: an untagged fence, a bad marker, an open fence."""


@dataclass(frozen=True)
class Skip:
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    skip: Skip | None

    @property
    def runnable(self) -> bool:
        return self.language in RUNNABLE

    def where(self, root: Path) -> str:
        return f"{self.document.relative_to(root)}:{self.line}"


def parse_marker(line: str) -> Skip | None:
    """The skip a marker line declares, None for any other line; MarkdownError for a malformed marker."""
    match = _MARKER.match(line)
    if match is None:
        return None
    body = _MARKER_BODY.match(match["body"])
    if body is None:
        raise MarkdownError(f"marker {line.strip()!r}: expected <!-- recipe: skip KIND: reason -->")
    if body["kind"] not in SKIP_KINDS:
        raise MarkdownError(f"marker {line.strip()!r}: kind {body['kind']!r} is not one of {', '.join(SKIP_KINDS)}")
    return Skip(body["kind"], body["reason"])


def _marker_before(lines: list[str], fence_index: int) -> Skip | None:
    i = fence_index - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    return parse_marker(lines[i]) if i >= 0 else None


def blocks_of(document: Path) -> list[Block]:
    """Every fenced block of ``document`` in order, its indentation (a block inside a list) removed."""
    lines = document.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        language = info.split()[0].lower() if info else ""
        where = f"{document}:{i + 1}"
        if not language:
            raise MarkdownError(f"{where}: a fenced block without a language; tag it (bash, python, console, text, ...)")
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise MarkdownError(f"{where}: the fence is never closed")
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        blocks.append(Block(document, i + 1, language, "\n".join(body) + "\n", _marker_before(lines, i)))
        i = end + 1
    return blocks


def linked_documents(start: Path, root: Path) -> list[Path]:
    """``start`` and every Markdown file inside ``root`` reachable from it by relative links, in link order."""
    found = [start.resolve()]
    for document in found:  # grows while it is walked: a breadth-first search
        for match in _LINK.finditer(document.read_text()):
            target = match["target"]
            if "://" in target:
                continue
            path = (document.parent / target).resolve()
            if path.is_file() and path.is_relative_to(root.resolve()) and path not in found:
                found.append(path)
    return found
