"""Prompt tokenization for the two text towers: CLIP (the diffusion models) and BERT (ImageReward).

Both tokenizers are read from files inside the model repository; nothing is fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import BertTokenizer

REWARD_MAX_LENGTH = 35


def reward_tokenizer(vocab_file: Path) -> BertTokenizer:
    """bert-base-uncased WordPiece from a local vocab file plus BLIP's ``[DEC]`` (bos) and ``[ENC]``.

    Mirrors BLIP's ``init_tokenizer``; with the 30522-line bert-base-uncased vocab the two added
    tokens get ids 30522 and 30523 (``tokenizer.enc_token_id``), matching the 30524-row embedding.
    """
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise FileNotFoundError(f"WordPiece vocab file not found: {vocab_file}")
    tokenizer = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    return tokenizer


def tokenize_for_reward(
    tokenizer: BertTokenizer, prompts: list[str], max_length: int = REWARD_MAX_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int32 [B, 35], exactly as ImageReward.score tokenizes.

    ``[CLS] tokens... [SEP]`` then ``[PAD]`` (0) up to 35, long prompts cut to 33 WordPieces. Position 0
    stays ``[CLS]``: ImageReward does not substitute ``[ENC]`` (see the module docstring).
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of strings")
    enc = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


@dataclass
class TokenizedPrompts:
    clip_ids: np.ndarray  # int32 [B, 77]
    truncated: list[bool]  # the prompt had more than 77 CLIP tokens and was cut, as diffusers does
    reward_ids: np.ndarray  # int32 [B, 35]
    reward_mask: np.ndarray  # int32 [B, 35]
    # SDXL's second tokenizer: the same BPE, padded with OpenCLIP's "!" (None for SD1.5).
    clip_ids_2: np.ndarray | None = None


class PromptTokenizers:
    def __init__(self, clip_dir: Path, reward_vocab: Path, reward_max_length: int = REWARD_MAX_LENGTH, clip_2_dir: Path | None = None) -> None:
        from transformers import CLIPTokenizer

        self.clip = CLIPTokenizer.from_pretrained(str(clip_dir), local_files_only=True)
        self.clip_2 = CLIPTokenizer.from_pretrained(str(clip_2_dir), local_files_only=True) if clip_2_dir is not None else None
        self.reward = reward_tokenizer(reward_vocab)
        self.reward_max_length = reward_max_length

    @property
    def clip_length(self) -> int:
        return int(self.clip.model_max_length)

    def clip_ids(self, prompts: list[str]) -> tuple[np.ndarray, list[bool]]:
        enc = self.clip(prompts, padding="max_length", max_length=self.clip_length, truncation=True, return_tensors="np")
        truncated = [len(ids) > self.clip_length for ids in self.clip(prompts).input_ids]
        return enc.input_ids.astype(np.int32), truncated

    def clip_ids_2(self, prompts: list[str]) -> np.ndarray | None:
        if self.clip_2 is None:
            return None
        enc = self.clip_2(prompts, padding="max_length", max_length=int(self.clip_2.model_max_length), truncation=True, return_tensors="np")
        return enc.input_ids.astype(np.int32)

    def reward_ids(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return tokenize_for_reward(self.reward, list(prompts), self.reward_max_length)

    def __call__(self, prompts: list[str]) -> TokenizedPrompts:
        ids, truncated = self.clip_ids(prompts)
        rids, rmask = self.reward_ids(prompts)
        return TokenizedPrompts(ids, truncated, rids, rmask, self.clip_ids_2(prompts))
