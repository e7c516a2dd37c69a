"""Run by test_distributed.py under torchrun (test_deepspeed.py: accelerate launch): one short
training run, global batch 4.

    python ddp_worker.py MODEL DATA OUT WORLD [JSON of TrainConfig overrides]

Each process also writes ``OUT/params-rank<N>.json`` as training starts: how many of the
model's parameters are sharded (DTensor) or partitioned (DeepSpeed ZeRO-3), how many elements
this process holds, how many micro-batches its epoch has, and whether gradient checkpointing is on.
"""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from slimepo.config import TrainConfig
from slimepo.train import train


def local(param):
    """What this process holds of ``param``: its FSDP2 shard, its DeepSpeed ZeRO-3 partition, or all of it."""
    if isinstance(param, DTensor):
        return param.to_local()
    return getattr(param, "ds_tensor", param)


class ParameterReport(TrainerCallback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        params = list(model.parameters())
        report = {
            "params": len(params), "sharded": sum(isinstance(p, DTensor) for p in params),
            "local_elements": sum(local(p).numel() for p in params),
            "batches": len(train_dataloader),
            "zero3_partitioned": sum(hasattr(p, "ds_id") for p in params),
            "gradient_checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in model.modules()),
        }
        (self.out / f"params-rank{args.process_index}.json").write_text(json.dumps(report))


def run_options(model: str, data: Path, out: str, world: int) -> dict:
    """The TrainConfig options of every run the distributed tests compare: 3 steps, global batch 4."""
    return {
        "model": model, "dataset": str(data / "train.jsonl"), "eval_dataset": str(data / "test.jsonl"),
        "eval_split": "train", "output_dir": out, "max_steps": 3, "batch_size": 4 // world, "learning_rate": 1e-2,
        "logging_steps": 1, "save_steps": 0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "warmup_ratio": 0.0, "seed": 0, "loss": "slime",
        "dtype": "float32",  # no autocast, whatever the CPU: the comparisons are at fp32 accuracy
    }


def main() -> None:
    model, data, out, world = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    overrides = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    config = TrainConfig(**{**run_options(model, data, out, world), **overrides})
    train(config, callbacks=[ParameterReport(Path(out))])
    if dist.is_initialized():
        # Once under DeepSpeed ZeRO-3 with a separate reference engine (2026-12-06), process 1 aborted after the
        # run had written everything ("terminate called without an active exception", SIGABRT), as the FSDP
        # worker once did: both processes finish every collective, destroy the group, and leave without
        # interpreter teardown (tests/train/fsdp_worker.py).
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
