"""Run by test_faults.py under torchrun: only process 1 sees NaN hidden states on step 2.

``nan_worker.py MODEL DATA_DIR OUT``; every process writes its trainable weights after each
optimizer step to ``OUT/rank<r>-step<s>.pt``.
"""

import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from slimepo.config import TrainConfig
from slimepo.train import run, train
from slimepo.train.trainer import PreferenceTrainer

NAN_STEP, NAN_RANK = 2, 1


class SaveWeights(TrainerCallback):
    def __init__(self, out: Path):
        self.out = out

    def save(self, args, state, model) -> None:
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(weights, self.out / f"rank{args.process_index}-step{state.global_step}.pt")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.save(args, state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.save(args, state, model)


class NanOnOneProcess(PreferenceTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.base_model.model.model.layers[0].register_forward_hook(self.nan_hidden_states)

    def nan_hidden_states(self, module, inputs, output):
        bad = self.model.training and self.state.global_step + 1 == NAN_STEP and self.args.process_index == NAN_RANK
        if not bad:
            return output
        return (output[0] * math.nan, *output[1:]) if isinstance(output, tuple) else output * math.nan


def main() -> None:
    model, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    run.PreferenceTrainer = NanOnOneProcess
    config = TrainConfig(
        model=model, dataset=str(data / "train.jsonl"), eval_dataset=str(data / "test.jsonl"), eval_split="train",
        output_dir=str(out / "run"), max_steps=3, batch_size=2, learning_rate=1e-2, warmup_ratio=0.0,
        logging_steps=1, save_steps=0, lora_r=4, lora_alpha=8, lora_dropout=0.0, monitor_steps=0, seed=0,
    )
    train(config, callbacks=[SaveWeights(out)])
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
