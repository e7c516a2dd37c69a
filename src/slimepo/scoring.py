"""Per-token log-probs of held-out pairs under a model, for evaluation and run summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from slimepo.data.collate import PairCollator
from slimepo.logprobs import DEFAULT_CHUNK_SIZE, pair_token_logps, uses_flex_attention


@dataclass
class PairScores:
    """Per-token log-probs ``[pairs, tokens]`` (0 where masked) and bool masks, on CPU, fp32."""

    chosen_logps: Tensor
    chosen_mask: Tensor
    rejected_logps: Tensor
    rejected_mask: Tensor

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.chosen_logps, self.chosen_mask, self.rejected_logps, self.rejected_mask


def _stack(rows: list[Tensor], masks: list[Tensor]) -> tuple[Tensor, Tensor]:
    width = max(r.shape[-1] for r in rows)
    logps = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows])
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[-1])) for m in masks])
    return logps, mask


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence,
    pad_token_id: int,
    *,
    batch_size: int = 8,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    layout: str = "shared",
) -> PairScores:
    """Score every pair's chosen and rejected response tokens (model in eval mode)."""
    collate = PairCollator(pad_token_id, layout=layout, dense_mask=not uses_flex_attention(model))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {"c": [], "cm": [], "r": [], "rm": []}
    try:
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in collate(pairs[start : start + batch_size]).items()}
            chosen, rejected = pair_token_logps(model, batch, chunk_size=chunk_size)
            parts["c"].append(chosen.cpu())
            parts["cm"].append(batch["chosen_mask"].cpu())
            parts["r"].append(rejected.cpu())
            parts["rm"].append(batch["rejected_mask"].cpu())
    finally:
        model.train(was_training)
    chosen, chosen_mask = _stack(parts["c"], parts["cm"])
    rejected, rejected_mask = _stack(parts["r"], parts["rm"])
    return PairScores(chosen, chosen_mask, rejected, rejected_mask)
