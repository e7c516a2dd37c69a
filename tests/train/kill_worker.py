"""One deterministic training run on the tiny model, for test_resume.py to kill and resume.

    python kill_worker.py MODEL DATA OUT [--resume auto] [--trace FILE] [--crash-after-save N] ...
    python kill_worker.py --serve

Deterministic on CPU: one thread, ``torch.use_deterministic_algorithms(True)``, fixed
seed; LoRA dropout stays on, so the RNG states must resume exactly too. ``--trace``
appends one line per event (``<unix time> <event> <step>``) so the test knows where a
kill landed. ``--crash-after-save N`` ends every process right after checkpoint N is
published, as a crash would (under torchrun too).

``--serve`` imports once, then forks one training process per request read from stdin
(a JSON list of arguments, and a log file): it prints ``pid <pid>`` when the child starts
and ``exit <pid> <wait status>`` when it ends. Each kill then costs a fork instead of
importing torch and transformers again (seconds on a loaded 2-core runner).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from slimepo.config import TrainConfig
from slimepo.train import run
from slimepo.train.trainer import PreferenceTrainer


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data", type=Path)
    parser.add_argument("out")
    parser.add_argument("--resume")
    parser.add_argument("--trace")
    parser.add_argument("--crash-after-save", type=int)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--save-steps", type=int, default=1)
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    return parser.parse_args(argv)


def config(args: argparse.Namespace) -> TrainConfig:
    # 14 pairs, 2 per micro-batch, 2 micro-batches per step: 4 steps per epoch, the last
    # one short; 12 steps cross two epoch boundaries. Eval and the monitor write lines too.
    return TrainConfig(
        model=args.model, dataset=str(args.data / "train.jsonl"), eval_dataset=str(args.data / "test.jsonl"),
        eval_split="train", output_dir=args.out, resume=args.resume, max_steps=args.max_steps,
        batch_size=args.batch_size, gradient_accumulation_steps=2, learning_rate=5e-3, warmup_ratio=0.2,
        lr_scheduler="cosine", weight_decay=0.01, lora_r=4, lora_alpha=8, lora_dropout=args.lora_dropout,
        logging_steps=1, eval_steps=5, monitor_steps=4, save_steps=args.save_steps, save_total_limit=2, seed=7,
        # Per-pair means: 2 processes x 1 pair average to the same loss as 1 process x 2 pairs.
        loss="slime", loss_params={"stabilizer_reduction": "sequence"},
        dtype="float32",  # no autocast, whatever the CPU: the comparisons are at fp32 accuracy
    )


def trace_events(path: str | None, crash_after_save: int | None) -> None:
    """Wrap the trainer's step, its checkpoint save and the final save to log events."""
    rank = int(os.environ.get("RANK", "0"))

    def event(name: str, step: int) -> None:
        if path and rank == 0:
            with open(path, "a") as f:
                f.write(f"{time.time():.4f} {name} {step}\n")

    training_step, save_checkpoint, save_outputs = (
        PreferenceTrainer.training_step, PreferenceTrainer._save_checkpoint, run.save_outputs
    )

    def traced_training_step(self, *args, **kwargs):
        event("step", self.state.global_step + 1)
        return training_step(self, *args, **kwargs)

    def traced_save_checkpoint(self, *args, **kwargs):
        event("save-begin", self.state.global_step)
        save_checkpoint(self, *args, **kwargs)
        event("save-end", self.state.global_step)
        if self.state.global_step == crash_after_save:
            os._exit(3)

    def traced_save_outputs(trainer, *args, **kwargs):
        event("outputs-begin", trainer.state.global_step)
        save_outputs(trainer, *args, **kwargs)
        event("outputs-end", trainer.state.global_step)

    PreferenceTrainer.training_step = traced_training_step
    PreferenceTrainer._save_checkpoint = traced_save_checkpoint
    run.save_outputs = traced_save_outputs
    event("start", 0)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    trace_events(args.trace, args.crash_after_save)
    run.train(config(args))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def serve() -> None:
    torch.set_num_threads(1)  # before any fork: no OpenMP pool exists yet
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = 0
            try:
                main(request["argv"])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {status}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main(sys.argv[1:])
