"""Real tokenizers from files that ship with the project, never from a hub.

CLIP's BPE merges come from ``bpe_simple_vocab_16e6.txt.gz`` (as shipped by open_clip); the
Hugging Face ``vocab.json``/``merges.txt`` pair is derived from it exactly the way CLIP builds its
vocabulary, so the token ids equal those of ``openai/clip-vit-large-patch14``'s tokenizer.
ImageReward's BERT WordPiece vocabulary is bert-base-uncased's ``vocab.txt``.
"""

from __future__ import annotations

import gzip
import json
import shutil
from importlib import resources
from pathlib import Path

CLIP_MAX_LENGTH = 77
ASSETS = resources.files("export") / "assets" / "tokenizers"
CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
BERT_VOCAB = "bert_uncased_vocab.txt"

# CLIP keeps the first 49152 - 256 - 2 merges of the file (its first line is a header).
_CLIP_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable-unicode table; the vocabulary's first 256 entries.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def write_clip_tokenizer(directory: Path, bpe_gz: Path | None = None) -> Path:
    """Write a diffusers-style ``tokenizer/`` folder (vocab.json, merges.txt, configs)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = bpe_gz or Path(str(ASSETS / CLIP_BPE))
    lines = gzip.open(source, "rt", encoding="utf-8").read().split("\n")[1 : _CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH, "do_lower_case": True, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def write_bert_vocab(directory: Path) -> Path:
    """Copy ImageReward's WordPiece vocabulary next to the model that needs it."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "vocab.txt"
    shutil.copyfile(Path(str(ASSETS / BERT_VOCAB)), target)
    return target
