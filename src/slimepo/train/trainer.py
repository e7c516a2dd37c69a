"""The training step: one forward over chosen and rejected, per-token log-probs, loss, metrics.

:class:`PreferenceTrainer` is a ``transformers.Trainer`` so that accelerate, DDP, FSDP,
DeepSpeed, gradient accumulation, schedulers, checkpoints and ``--resume`` behave as
users of TRL expect. Everything specific to preference optimization is in
:meth:`PreferenceTrainer.compute_loss`, readable top to bottom.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader
from transformers import Trainer

from slimepo.data.batching import StandInCollator, TokenBudgetBatchSampler, WholeRounds, pair_tokens
from slimepo.diagnostics import collapse_metrics
from slimepo.logprobs import pair_token_logps
from slimepo.losses import PreferenceLoss, StepTotals
from slimepo.train.checkpoint import read_run_state, rotate, staged_checkpoint, write_run_state
from slimepo.train.faults import NonFiniteStepGuard

logger = logging.getLogger(__name__)

class PreferenceTrainer(Trainer):
    """``transformers.Trainer`` whose loss is any :mod:`slimepo.losses` objective.

    ``ref_model``: a frozen reference for reference-based losses; None with LoRA means
    the policy's own base weights with adapters disabled.
    """

    def __init__(self, *args, loss_fn: PreferenceLoss, ref_model=None, logprob_chunk_size: int = 512,
                 max_bad_steps: int = 5, max_tokens_per_batch: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.fault_guard = NonFiniteStepGuard(max_bad_steps, self.args.output_dir)
        self.add_callback(self.fault_guard)
        self._checkpoint_root: str | None = None
        self.loss_fn = loss_fn
        self.ref_model = ref_model
        if ref_model is not None:
            self.ref_model = ref_model.to(self.args.device)
        self.chunk_size = logprob_chunk_size or None
        # Training losses divide by the whole step's counts (step_totals): the Trainer must not rescale them.
        self.loss_is_scaled_for_ga = True
        # Per split and metric, each micro-batch's value and whether it counts (a stand-in does not).
        self._stored: dict[str, dict[str, list[tuple[Tensor, bool]]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._window_tokens = 0
        self._window_start = time.perf_counter()

    def get_train_dataloader(self) -> DataLoader:
        """Fixed-size batches, or length-bucketed ones under ``max_tokens_per_batch``, dealt to the
        processes in whole rounds: an epoch's last step counts every pair once (:class:`WholeRounds`)."""
        if self.max_tokens_per_batch:
            batches = TokenBudgetBatchSampler(
                [pair_tokens(p) for p in self.train_dataset], self.max_tokens_per_batch, seed=self.args.seed
            )
        else:
            batches = BatchSampler(self._get_train_sampler(), self._train_batch_size, self.args.dataloader_drop_last)
        stand_in = min(self.train_dataset, key=pair_tokens)  # the cheapest pair to run for nothing
        loader = DataLoader(self.train_dataset, batch_sampler=WholeRounds(batches, self.accelerator.num_processes),
                            collate_fn=StandInCollator(self.data_collator, stand_in),
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def token_logps(self, model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(chosen_logps [B, Lc], rejected_logps [B, Lr])``, 0 where masked."""
        # FSDP2 keeps the root's (the head's) weights gathered from forward to backward, so the chunked
        # projection can use them; FSDP1's flat parameters are not checked here: materialized logits.
        fsdp1 = self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) == 1
        chunk = None if fsdp1 else self.chunk_size
        return pair_token_logps(model, batch, chunk_size=chunk)

    @torch.no_grad()
    def reference_logps(self, model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """Per-sequence summed reference log-probs ``([B], [B])``, when the loss needs them."""
        if not self.loss_fn.requires_reference:
            return None, None
        if "ref_chosen_logps" in batch:  # precomputed before training
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.ref_model is not None:
            with self.accelerator.autocast():  # the precision of the policy's forward (its own is wrapped)
                chosen, rejected = self.token_logps(self.ref_model, batch)
        else:
            peft_model = self.accelerator.unwrap_model(model)
            with peft_model.disable_adapter():
                chosen, rejected = self.token_logps(model, batch)
        return chosen.sum(-1), rejected.sum(-1)

    def _get_num_items_in_batch(self, batch_samples: list[dict[str, Tensor]], device) -> StepTotals | None:
        """The counts of one optimizer step: pairs and response tokens of all its micro-batches, all processes.

        The Trainer hands them to :meth:`compute_loss` as ``num_items_in_batch``, as it hands
        a causal LM its step's label count: every batch mean of the loss divides by them.
        """
        if not batch_samples:
            return None
        counts = sum(
            (torch.stack([torch.tensor(float(len(b["chosen_mask"])), device=device),
                          b["chosen_mask"].sum().to(device, torch.float32), b["rejected_mask"].sum().to(device, torch.float32)])
             for b in batch_samples if "stand_in" not in b),
            torch.zeros(3, device=device),
        )  # on the device: no host sync per micro-batch; a process with only stand-ins still joins the reduce
        counts = self.accelerator.reduce(counts, reduction="sum")
        return StepTotals(pairs=counts[0], chosen_tokens=counts[1], rejected_tokens=counts[2])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch: StepTotals | None = None):
        chosen, rejected = self.token_logps(model, inputs)
        chosen_mask, rejected_mask = inputs["chosen_mask"], inputs["rejected_mask"]
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        out = self.loss_fn(chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected,
                           step_totals=num_items_in_batch)
        loss = out.loss
        if num_items_in_batch is not None:
            # This micro-batch's share of the step's loss; DDP and FSDP average gradients over
            # processes, so the share is scaled back up by their number.
            loss = loss * self.accelerator.num_processes
        counted = "stand_in" not in inputs
        if not counted:
            # An empty batch's stand-in (StandInCollator): its backward joins the gradient reduction, adding 0.
            loss = loss * 0.0

        metrics = dict(out.metrics)
        metrics["logps/chosen_sum"] = chosen.detach().sum(-1).mean()
        metrics["logps/rejected_sum"] = rejected.detach().sum(-1).mean()
        metrics.update(collapse_metrics(rejected, rejected_mask))
        split = "train" if model.training else "eval"
        # Kept as device tensors: converting each to float here would sync the GPU every micro-batch.
        # A stand-in's are kept too, not counted, so that every process has the same keys to reduce.
        for key, value in metrics.items():
            self._stored[split][key].append((value.detach(), counted))
        if split == "train" and counted:
            self._window_tokens = self._window_tokens + inputs["num_tokens"]
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss terms and diagnostics since the last log: means (or minima) over the
        micro-batches of all processes, stand-ins left out."""
        split = "train" if "loss" in logs else "eval"
        prefix = "" if split == "train" else "eval_"
        for key, stored in self._stored[split].items():
            values = torch.stack([value for value, _ in stored]).to(self.args.device, torch.float64)
            counted = torch.tensor([c for _, c in stored], device=values.device)
            if key.endswith("min_logp"):
                local = torch.where(counted, values, torch.inf).min().reshape(1)
                logs[prefix + key] = float(self.accelerator.gather(local).min())
            else:
                local = torch.stack([torch.where(counted, values, 0.0).sum(), counted.sum().to(values.dtype)])
                total, count = self.accelerator.reduce(local, reduction="sum")
                logs[prefix + key] = float(total / count)
        self._stored[split].clear()
        if split == "train":
            elapsed = time.perf_counter() - self._window_start
            tokens = self.accelerator.reduce(
                torch.as_tensor(self._window_tokens, device=self.args.device), reduction="sum"
            )
            logs["tokens_per_second"] = float(tokens) / max(elapsed, 1e-9)
            logs["skipped_steps"] = self.fault_guard.skipped_steps
            self._window_tokens = 0
            self._window_start = time.perf_counter()
        super().log(logs, start_time)

    # --- Reliability: skip non-finite steps (faults.py), crash-safe checkpoints (checkpoint.py) ---

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        if isinstance(resume_from_checkpoint, str):
            self.fault_guard.load_state_dict(read_run_state(resume_from_checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        # Resumed at max_steps in mid-epoch, transformers would train one step too many.
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.fault_guard.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer asks for the global grad norm right before the optimizer step: decide on it here."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self.fault_guard.decide(grad_norm, self.state.global_step, lambda t: self.accelerator.reduce(t, "sum"))
        return grad_norm

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written in a staging folder and renamed into place when complete."""
        if self.fault_guard.consecutive_bad:
            logger.warning("step %d: no checkpoint while optimizer steps are being skipped", self.state.global_step)
            return
        out, step = self.args.output_dir, self.state.global_step
        is_writer = self.args.should_save
        with staged_checkpoint(out, step, is_writer=is_writer, wait_for_everyone=self.accelerator.wait_for_everyone) as root:
            self._checkpoint_root = str(root)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._checkpoint_root = None
            if is_writer:
                write_run_state(root / f"checkpoint-{step}", self.fault_guard.state_dict())
        if is_writer:
            rotate(out, self.args.save_total_limit)

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is being saved, the Trainer writes (and rotates) inside the staging folder.
        return self._checkpoint_root or super()._get_output_dir(trial)
