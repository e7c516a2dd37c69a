"""Run by test_step_review.py (under torchrun for 2 processes): ddp_worker's run, with what each process scored
and how the reference model was held.

    torchrun --nproc_per_node 2 step_worker.py MODEL DATA OUT WORLD [JSON of TrainConfig overrides]

Every batch :func:`slimepo.scoring.score_pairs` scores (the before/after scoring of
``train.run`` and the stability monitor; training's own forwards do not go through it) is
counted. Each process writes ``OUT/step-rank<N>.json``: the count as training begins (the
"before" scoring), as it ends (plus the monitor's) and at the end of the run (plus "after");
and, when a separate reference model was loaded, how many of its weights are sharded
(``DTensor``) and how many elements this process holds, as loaded and after training.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from ddp_worker import run_options
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

import slimepo.scoring
import slimepo.train.run
from slimepo.config import TrainConfig
from slimepo.train import train

report: dict = {"batches": 0}
real_pair_token_logps = slimepo.scoring.pair_token_logps
real_load_reference = slimepo.train.run.load_reference


def counting_pair_token_logps(*args, **kwargs):
    report["batches"] += 1
    return real_pair_token_logps(*args, **kwargs)


def sharding(model) -> dict:
    params = list(model.parameters())
    return {"params": len(params), "sharded": sum(isinstance(p, DTensor) for p in params),
            "local_elements": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)}


def reporting_load_reference(config):
    reference = real_load_reference(config)
    if reference is not None:
        report["reference"] = sharding(reference)
        loaded["reference"] = reference
    return reference


loaded = {}


class Milestones(TrainerCallback):
    """Added before the monitor: its ``on_train_begin`` runs before the monitor scores the start."""

    def on_train_begin(self, args, state, control, **kwargs):
        report["train_begin"] = report["batches"]

    def on_train_end(self, args, state, control, **kwargs):
        report["train_end"] = report["batches"]
        if "reference" in loaded:
            report["reference_after_training"] = sharding(loaded["reference"])


def main() -> None:
    model, data, out, world = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    overrides = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    slimepo.scoring.pair_token_logps = counting_pair_token_logps
    slimepo.train.run.load_reference = reporting_load_reference
    config = TrainConfig(**{**run_options(model, data, out, world), **overrides})
    train(config, callbacks=[Milestones()])
    rank = dist.get_rank() if dist.is_initialized() else 0
    (Path(out) / f"step-rank{rank}.json").write_text(json.dumps(report))
    if dist.is_initialized():
        dist.barrier()  # process 0 may still be writing its outputs
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
