"""Run by test_distributed.py under torchrun: the chunked head on a model sharded with FSDP2.

    torchrun --nproc_per_node 2 fsdp_worker.py OUT full|lora

Every process scores the same batch twice: by hand on an unsharded copy (the model's own
forward and ``log_softmax``), and with :func:`pair_token_logps` (chunked) on a copy whose
decoder layers and root are ``fully_shard``-ed. It writes the largest differences of the
log-probs and of the (gathered) gradients of the trained weights to ``OUT/rank<N>.json``.
"""

import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from test_forward import PAIRS, by_hand, weighted_sum
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from slimepo.data.collate import PairCollator
from slimepo.logprobs import pair_token_logps
from slimepo.testing import tiny_model


def padded(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(like)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def policy(lora: bool) -> torch.nn.Module:
    model = tiny_model("llama")
    if not lora:
        return model
    torch.manual_seed(1)
    lora_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                             modules_to_save=["lm_head"], init_lora_weights=False)  # B != 0: every factor learns
    return get_peft_model(model, lora_config)


def main() -> None:
    out, lora = Path(sys.argv[1]), sys.argv[2] == "lora"
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    batch = PairCollator(pad_token_id=0, layout="shared")(PAIRS)

    reference = policy(lora)
    expected = by_hand(reference, PAIRS)
    sharded = policy(lora)
    for layer in (sharded.get_base_model() if lora else sharded).model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    chosen, rejected = pair_token_logps(sharded, batch, chunk_size=3)  # the head projected outside forward
    expected_chosen, expected_rejected = padded(expected["chosen"], chosen), padded(expected["rejected"], rejected)
    weighted_sum(expected_chosen, expected_rejected).backward()
    weighted_sum(chosen, rejected).backward()
    chosen, rejected = chosen.detach(), rejected.detach()
    expected_chosen, expected_rejected = expected_chosen.detach(), expected_rejected.detach()

    grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    sharded_grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters() if p.requires_grad}
    head = sharded.get_base_model().lm_head.modules_to_save["default"] if lora else sharded.lm_head
    report = {
        "sharded": isinstance(sharded, FSDPModule) and isinstance(head.weight, DTensor),
        "logp_error": float(torch.cat([(chosen - expected_chosen).flatten(), (rejected - expected_rejected).flatten()]).abs().max()),
        "grad_names_equal": sorted(grads) == sorted(sharded_grads),
        "grad_error": max(float((sharded_grads[n] - g).abs().max()) for n, g in grads.items()),
        "lm_head_grad_norm": float(next(g for n, g in grads.items() if "lm_head" in n).norm()),
        "trained": len(grads),
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
    # Once in CI (2026-12-05) process 0 aborted after this point ("terminate called without an
    # active exception", SIGABRT): a process group torn down while the other process still
    # talks to it, or gloo's threads destroyed with the interpreter. So: both processes finish
    # every collective, drop what holds the sharded model (its device mesh holds the group),
    # destroy the group, and leave without interpreter teardown; the reports are written.
    dist.barrier()
    del reference, sharded, head, grads, sharded_grads
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
