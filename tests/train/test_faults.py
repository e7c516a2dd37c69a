"""Faults: a non-finite step changes nothing, too many in a row stop the run, bad options fail early."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback

from slimepo.config import ConfigError, TrainConfig
from slimepo.train import run, train
from slimepo.train.checkpoint import latest_complete_checkpoint, publish, read_run_state
from slimepo.train.faults import NonFiniteStepGuard, NonFiniteTrainingError
from slimepo.train.trainer import PreferenceTrainer


class Snapshots(TrainerCallback):
    """After every optimizer step: trainable weights, optimizer state, scheduler position."""

    def __init__(self, trainer: FaultyTrainer):
        self.trainer = trainer

    def take(self, step: int) -> None:
        t = self.trainer
        self.trainer.snapshots[step] = {
            "weights": {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad},
            "optimizer": copy.deepcopy(t.optimizer.state_dict()),
            "scheduler_step": t.lr_scheduler.last_epoch,
        }

    def on_train_begin(self, args, state, control, **kwargs):
        self.take(0)

    def on_step_end(self, args, state, control, **kwargs):
        self.take(state.global_step)


class FaultyTrainer(PreferenceTrainer):
    """Makes the first decoder layer's output NaN on ``nan_steps`` and one LoRA gradient
    inf on ``inf_grad_steps`` (1-based optimizer steps), and snapshots every step."""

    nan_steps: set[int] = set()
    inf_grad_steps: set[int] = set()
    last: FaultyTrainer | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        FaultyTrainer.last = self
        self.snapshots: dict[int, dict] = {}
        self.add_callback(Snapshots(self))
        self.model.base_model.model.model.layers[0].register_forward_hook(self.nan_hidden_states)
        lora_weight = next(p for n, p in self.model.named_parameters() if "lora_B" in n)
        lora_weight.register_hook(self.inf_gradient)

    def training_now(self, steps: set[int]) -> bool:
        return self.model.training and self.state.global_step + 1 in steps

    def nan_hidden_states(self, module, inputs, output):
        if not self.training_now(self.nan_steps):
            return output
        if isinstance(output, tuple):
            return (output[0] * math.nan, *output[1:])
        return output * math.nan

    def inf_gradient(self, grad):
        return torch.full_like(grad, math.inf) if self.training_now(self.inf_grad_steps) else grad


def faulty(monkeypatch, nan_steps=(), inf_grad_steps=()) -> type[FaultyTrainer]:
    monkeypatch.setattr(FaultyTrainer, "nan_steps", set(nan_steps))
    monkeypatch.setattr(FaultyTrainer, "inf_grad_steps", set(inf_grad_steps))
    monkeypatch.setattr(run, "PreferenceTrainer", FaultyTrainer)
    return FaultyTrainer


def toy_config(tiny_model_dir, toy_data, out: Path, **overrides) -> TrainConfig:
    values = dict(
        model=str(tiny_model_dir), dataset=str(toy_data["train"]), eval_dataset=str(toy_data["test"]),
        eval_split="train", output_dir=str(out), max_steps=6, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0,
        logging_steps=1, save_steps=0, lora_r=4, lora_alpha=8, lora_dropout=0.0, monitor_steps=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def same(a, b) -> bool:
    """Bit-for-bit equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def train_logs(out: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["split"] == "train"}


def test_nan_hidden_states_and_an_inf_gradient_skip_their_steps_leaving_weights_and_optimizer_untouched(
    tiny_model_dir, toy_data, tmp_path, monkeypatch
):
    trainer_cls = faulty(monkeypatch, nan_steps={3}, inf_grad_steps={5})
    config = toy_config(tiny_model_dir, toy_data, tmp_path / "run", save_steps=2)
    result = train(config)
    snaps = trainer_cls.last.snapshots
    assert result.global_step == 6
    for bad in (3, 5):
        assert same(snaps[bad], snaps[bad - 1]), f"step {bad} changed weights, optimizer or scheduler"
    for good in (1, 2, 4, 6):
        assert not same(snaps[good]["weights"], snaps[good - 1]["weights"]), good
        assert snaps[good]["scheduler_step"] == snaps[good - 1]["scheduler_step"] + 1
    assert float(snaps[6]["optimizer"]["state"][0]["step"]) == 4  # Adam saw 4 updates in 6 steps

    logs = train_logs(result.output_dir)
    assert [logs[s]["skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert math.isnan(logs[3]["grad_norm"]) and math.isinf(logs[5]["grad_norm"])
    assert math.isfinite(logs[5]["loss"])  # a finite loss whose gradient was not
    assert logs[4]["learning_rate"] == logs[3]["learning_rate"]  # the schedule waited too
    assert all(torch.isfinite(w).all() for w in snaps[6]["weights"].values())

    # The count is part of the checkpoint: resumed from step 4 (over the newer checkpoint-6),
    # fault-free this time, the run goes on counting from 1.
    assert read_run_state(result.output_dir / "checkpoint-4") == {"skipped_steps": 1}
    faulty(monkeypatch)
    config.resume = str(result.output_dir / "checkpoint-4")
    train(config)
    assert [train_logs(result.output_dir)[s]["skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    assert read_run_state(result.output_dir / "checkpoint-6") == {"skipped_steps": 1}


def test_max_bad_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(
    tiny_model_dir, toy_data, tmp_path, monkeypatch
):
    trainer_cls = faulty(monkeypatch, nan_steps=set(range(3, 7)))
    config = toy_config(tiny_model_dir, toy_data, tmp_path / "run", save_steps=1, save_total_limit=1, max_bad_steps=3)
    with pytest.raises(NonFiniteTrainingError) as err:
        train(config)
    message = str(err.value)
    assert "3 consecutive optimizer steps (3 to 5)" in message and "max_bad_steps=3" in message
    assert str(tmp_path / "run" / "checkpoint-2") in message
    out = tmp_path / "run"
    assert latest_complete_checkpoint(out) == out / "checkpoint-2"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    trainer = trainer_cls.last
    assert same(trainer.snapshots[4], trainer.snapshots[2])
    saved = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert same(saved, {k: v.cpu() for k, v in get_peft_model_state_dict(trainer.model).items()})
    assert train_logs(out)[4]["skipped_steps"] == 2


def test_a_non_finite_loss_with_finite_gradients_is_skipped_and_a_good_step_resets_the_streak(tmp_path):
    guard = NonFiniteStepGuard(max_bad_steps=2, output_dir=str(tmp_path))

    def step(loss: float, grad_norm: float) -> bool:
        guard.observe_loss(torch.tensor(loss))
        return guard.decide(torch.tensor(grad_norm), 0, lambda t: t)

    assert step(math.inf, 0.5) and guard.consecutive_bad == 1
    assert not step(1.0, 0.5) and guard.consecutive_bad == 0
    assert step(1.0, math.nan)
    with pytest.raises(NonFiniteTrainingError, match="2 consecutive"):
        step(math.nan, 0.5)
    assert guard.skipped_steps == 3


# --- config faults, before any model is loaded ------------------------------------------------

def incomplete_checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "checkpoint-4"
    path.mkdir()
    (path / "adapter_model.safetensors").write_bytes(b"partial")
    return str(path)


def truncated_checkpoint(tmp_path: Path) -> str:
    staged = tmp_path / "staging" / "checkpoint-4"
    staged.mkdir(parents=True)
    (staged / "optimizer.pt").write_bytes(b"o" * 64)
    final = publish(staged, tmp_path, 4)
    (final / "optimizer.pt").write_bytes(b"o" * 10)
    return str(final)


def a_file(tmp_path: Path) -> str:
    path = tmp_path / "checkpoint-4.tar"
    path.write_bytes(b"")
    return str(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_bad_steps": 0}, "max_bad_steps: must be an integer >= 1, got 0"),
        ({"max_bad_steps": 2.5}, "max_bad_steps: must be an integer >= 1, got 2.5"),
        ({"max_bad_steps": True}, "max_bad_steps: must be an integer >= 1"),
        ({"save_total_limit": 0}, "save_total_limit: must be an integer >= 1 or null"),
        ({"resume": incomplete_checkpoint}, "is not a complete checkpoint: it has no COMPLETE marker"),
        ({"resume": truncated_checkpoint}, "optimizer.pt has 10 bytes, COMPLETE says 64"),
        ({"resume": a_file}, "is neither 'auto' nor an existing checkpoint folder"),
        ({"save_steps": -1}, "save_steps: must be a number >= 0"),
        ({"logging_steps": 0}, "logging_steps: must be a number > 0"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps: must be a number > 0"),
        ({"learning_rate": math.nan}, "learning_rate: must be a number > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm: must be a number >= 0"),
        ({"lora_dropout": 1.5}, "lora_dropout: must be in [0, 1]"),
        ({"eval_fraction": 1.0}, "eval_fraction: must be in (0, 1)"),
        ({"num_epochs": 0, "max_steps": -1}, "num_epochs: must be > 0"),
        ({"dtype": "fp8"}, "dtype: got 'fp8'"),
        ({"eval_dataset": "./missing-eval.jsonl"}, "eval_dataset: path './missing-eval.jsonl' does not exist"),
    ],
)
def test_invalid_reliability_options_fail_before_any_model_is_loaded(overrides, message, tmp_path, monkeypatch):
    monkeypatch.setattr(run, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before validation"))
    values = {k: v(tmp_path) if callable(v) else v for k, v in overrides.items()}
    with pytest.raises(ConfigError) as err:
        train(TrainConfig(output_dir=str(tmp_path / "out"), **values))
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_resume_from_an_incomplete_checkpoint_is_one_clear_error(tmp_path):
    path = incomplete_checkpoint(tmp_path)
    result = subprocess.run([sys.executable, "-m", "slimepo.cli", "train", "--resume", path],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert f"slimepo: error: resume: {path!r} is not a complete checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_nan_only_one_of_two_processes_sees_skips_the_step_on_both(tiny_model_dir, toy_data, tmp_path):
    worker = Path(__file__).with_name("nan_worker.py")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29547", str(worker),
           str(tiny_model_dir), str(toy_data["train"].parent), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    weights = {(r, s): torch.load(tmp_path / f"rank{r}-step{s}.pt") for r in (0, 1) for s in range(4)}
    for step in range(4):
        assert same(weights[0, step], weights[1, step]), f"processes disagree after step {step}"
    assert same(weights[0, 2], weights[0, 1]), "the NaN step changed the weights"
    assert not same(weights[0, 1], weights[0, 0]) and not same(weights[0, 3], weights[0, 2])
    assert [train_logs(tmp_path / "run")[s]["skipped_steps"] for s in (1, 2, 3)] == [0, 1, 1]


def test_the_step_guard_calls_an_optimizer_that_takes_no_closure_without_one():
    """DeepSpeed's optimizer wrapper has ``step(self)``: the guard's wrapper must not pass it a closure."""
    from slimepo.train.faults import NonFiniteStepGuard

    class NoClosure:
        steps = 0

        def step(self):
            self.steps += 1

    optimizer = NoClosure()
    NonFiniteStepGuard(max_bad_steps=3, output_dir="unused").on_train_begin(None, None, None, optimizer=optimizer)
    optimizer.step()
    assert optimizer.steps == 1
