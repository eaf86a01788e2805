"""Prompt tokenization for the two text towers: CLIP (the diffusion models) and BERT (ImageReward).

Both tokenizers are read from files inside the model repository; nothing is fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

REWARD_MAX_LENGTH = 35


def load_reward_tokenizer(vocab_file: Path):
    """bert-base-uncased WordPiece plus BLIP's ``[DEC]`` (bos) and ``[ENC]`` tokens (ids 30522, 30523)."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


@dataclass
class TokenizedPrompts:
    clip_ids: np.ndarray  # int32 [B, 77]
    truncated: list[bool]  # the prompt had more than 77 CLIP tokens and was cut, as diffusers does
    reward_ids: np.ndarray  # int32 [B, 35]
    reward_mask: np.ndarray  # int32 [B, 35]


class PromptTokenizers:
    def __init__(self, clip_dir: Path, reward_vocab: Path, reward_max_length: int = REWARD_MAX_LENGTH) -> None:
        from transformers import CLIPTokenizer

        self.clip = CLIPTokenizer.from_pretrained(str(clip_dir), local_files_only=True)
        self.reward = load_reward_tokenizer(reward_vocab)
        self.reward_max_length = reward_max_length

    @property
    def clip_length(self) -> int:
        return int(self.clip.model_max_length)

    def clip_ids(self, prompts: list[str]) -> tuple[np.ndarray, list[bool]]:
        enc = self.clip(prompts, padding="max_length", max_length=self.clip_length, truncation=True, return_tensors="np")
        truncated = [len(ids) > self.clip_length for ids in self.clip(prompts).input_ids]
        return enc.input_ids.astype(np.int32), truncated

    def reward_ids(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.reward(prompts, padding="max_length", truncation=True, max_length=self.reward_max_length, return_tensors="np")
        return enc.input_ids.astype(np.int32), enc.attention_mask.astype(np.int32)

    def __call__(self, prompts: list[str]) -> TokenizedPrompts:
        ids, truncated = self.clip_ids(prompts)
        rids, rmask = self.reward_ids(prompts)
        return TokenizedPrompts(ids, truncated, rids, rmask)
