"""Token batches: each pair becomes two rows, [prompt + chosen] then [prompt + rejected]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PairCollator:
    """Right-padded batch of ``2 × pairs`` rows: all chosen rows first, then all rejected.

    Returns ``input_ids`` and ``attention_mask`` ``[2B, T]`` and ``response_mask`` (bool
    ``[2B, T]``, True on response tokens: the tokens whose log-probs the loss reads).
    Items need ``prompt_ids``, ``chosen_ids`` and ``rejected_ids`` (lists of ints).
    """

    pad_token_id: int

    def __call__(self, pairs: Sequence) -> dict[str, Tensor]:
        rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [
            (p.prompt_ids, p.rejected_ids) for p in pairs
        ]
        width = max(len(prompt) + len(response) for prompt, response in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (prompt, response) in enumerate(rows):
            length = len(prompt) + len(response)
            input_ids[i, :length] = torch.tensor(list(prompt) + list(response), dtype=torch.long)
            attention_mask[i, :length] = 1
            response_mask[i, len(prompt) : length] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
        }
