"""The one error type for a bad checkpoint, and how its messages quote what diffusers says."""

from __future__ import annotations


class SourceError(ValueError):
    """A checkpoint is missing, malformed or of an unsupported kind; the message names it."""


def first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split())
    # diffusers appends advice on ignore_mismatched_sizes that does not apply to a serving export.
    return text.split(" If you want to instead overwrite")[0]


def keys_preview(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown
