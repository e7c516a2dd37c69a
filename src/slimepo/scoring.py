"""Per-token log-probs of held-out pairs under a model, for evaluation and run summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
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


def forward_gathers_weights(model: torch.nn.Module) -> bool:
    """Whether every forward of ``model`` is a collective: weights sharded over the processes
    (FSDP2 and tensor-parallel ``DTensor`` s, FSDP1 modules, DeepSpeed ZeRO-3 partitions)."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    return (any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())
            or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()))


def release_gathered_weights(model: torch.nn.Module) -> None:
    """Reshard what FSDP2 keeps gathered after a forward: the root module's weights (embeddings, head)
    stay whole until a backward reshards them, and a forward without grad has none to come.

    Only where no backward is pending: its chunked head reads those gathered weights.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence,
    pad_token_id: int,
    *,
    batch_size: int = 8,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    layout: str = "shared",
    across_processes: bool = False,
) -> PairScores | None:
    """Score every pair's chosen and rejected response tokens (model in eval mode).

    ``across_processes`` (call it on every process): batch ``j`` is scored by process
    ``j mod processes`` only, and process 0 receives all the scores, the others None. The
    batches are those of one process, so are the scores. When each forward gathers sharded
    weights (:func:`forward_gathers_weights`), a process with fewer batches than another
    scores the first batch again, discarded, so that every process takes part in every forward.
    Call it between optimizer steps, not with a backward pending: it reshards a sharded model
    after scoring (:func:`release_gathered_weights`).
    """
    collate = PairCollator(pad_token_id, layout=layout, dense_mask=not uses_flex_attention(model))
    device = next(model.parameters()).device
    batches = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    rank, world = 0, 1
    if across_processes and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    mine = batches[rank::world]
    forwards = len(mine)
    if world > 1 and forward_gathers_weights(model):
        forwards = len(batches[::world])  # process 0's, the most any process has
    was_training = model.training
    model.eval()
    scored: list[tuple[Tensor, ...]] = []
    try:
        for i in range(forwards):
            batch = {k: v.to(device) for k, v in collate(mine[i] if i < len(mine) else batches[0]).items()}
            chosen, rejected = pair_token_logps(model, batch, chunk_size=chunk_size)
            if i < len(mine):
                scored.append((chosen.cpu(), batch["chosen_mask"].cpu(), rejected.cpu(), batch["rejected_mask"].cpu()))
    finally:
        model.train(was_training)
    release_gathered_weights(model)
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(scored, gathered, dst=0)
        if rank != 0:
            return None
        scored = [gathered[j % world][j // world] for j in range(len(batches))]
    chosen, chosen_mask = _stack(*zip(*((c, cm) for c, cm, _, _ in scored)))
    rejected, rejected_mask = _stack(*zip(*((r, rm) for _, _, r, rm in scored)))
    return PairScores(chosen, chosen_mask, rejected, rejected_mask)
