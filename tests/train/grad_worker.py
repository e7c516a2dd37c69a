"""Run by test_invariance.py and test_distributed.py: one optimizer step per loss, saving the gradients
the optimizer receives.

``grad_worker.py MODEL DATA_DIR OUT BATCH ACCUMULATION LOSS[,LOSS...] [JSON of TrainConfig overrides]``;
under torchrun each process takes BATCH pairs per micro-batch. Process 0 writes ``OUT/<loss>.pt``.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from slimepo.config import TrainConfig
from slimepo.train import train


class SaveGradients(TrainerCallback):
    """Copies every parameter's gradient right before the (only) optimizer step."""

    def __init__(self, path: Path):
        self.path = path

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if args.process_index == 0:
            grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
            torch.save(grads, self.path)


def main() -> None:
    model, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    batch, accumulation, losses = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6].split(",")
    overrides = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    out.mkdir(parents=True, exist_ok=True)
    for loss in losses:
        options = dict(
            model=model, dataset=str(data / "train.jsonl"), eval_dataset=str(data / "eval.jsonl"), eval_split="train",
            output_dir=str(out / f"run-{loss}"), max_steps=1, batch_size=batch, gradient_accumulation_steps=accumulation,
            learning_rate=1e-3, max_grad_norm=0.0, warmup_ratio=0.0, logging_steps=1, save_steps=0, monitor_steps=0,
            use_lora=False, seed=0, loss=loss, dtype="float32",  # fp32 throughout: the comparison is at 1e-5
        )
        config = TrainConfig(**{**options, **overrides})
        train(config, callbacks=[SaveGradients(out / f"{loss}.pt")])
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
