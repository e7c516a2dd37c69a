"""The training step: one forward over chosen and rejected, per-token log-probs, loss, metrics.

:class:`PreferenceTrainer` is a ``transformers.Trainer`` so that accelerate, DDP, FSDP,
DeepSpeed, gradient accumulation, schedulers, checkpoints and ``--resume`` behave as
users of TRL expect. Everything specific to preference optimization is in
:meth:`PreferenceTrainer.compute_loss`, readable top to bottom: :meth:`~PreferenceTrainer.pair_step`
for pairs, :meth:`~slimepo.train.unpaired.UnpairedSteps.unpaired_step` for KTO's unpaired examples
(in :mod:`slimepo.train.unpaired`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader
from transformers import Trainer

from slimepo import zero3
from slimepo.data.batching import StandInCollator, TokenBudgetBatchSampler, WholeRounds, pair_tokens
from slimepo.data.unpaired import KlExamples, StepRotation, example_tokens
from slimepo.diagnostics import collapse_metrics
from slimepo.logprobs import output_projection, pair_token_logps
from slimepo.losses import PreferenceLoss, StepTotals, UnpairedLoss
from slimepo.scoring import release_gathered_weights
from slimepo.train.checkpoint import read_run_state, rotate, staged_checkpoint, write_run_state
from slimepo.train.faults import NonFiniteStepGuard
from slimepo.train.unpaired import UnpairedSteps, UnpairedStepTotals

logger = logging.getLogger(__name__)


class PreferenceTrainer(UnpairedSteps, Trainer):
    """``transformers.Trainer`` whose loss is any :mod:`slimepo.losses` objective.

    ``ref_model``: a frozen reference for reference-based losses; None with LoRA means
    the policy's own base weights with adapters disabled. With an :class:`UnpairedLoss`
    (KTO) the datasets hold :class:`~slimepo.data.unpaired.TokenizedExample` and the
    collator is an :class:`~slimepo.data.unpaired.UnpairedCollator`.
    """

    def __init__(self, *args, loss_fn: PreferenceLoss | UnpairedLoss, ref_model=None, logprob_chunk_size: int = 512,
                 max_bad_steps: int = 5, max_tokens_per_batch: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.unpaired = isinstance(loss_fn, UnpairedLoss)
        self.example_tokens = example_tokens if self.unpaired else pair_tokens
        if self.unpaired and self.train_dataset:
            advice = loss_fn.balance_warning(sum(e.desirable for e in self.train_dataset),
                                             sum(not e.desirable for e in self.train_dataset))
            if advice:
                logger.warning("%s", advice)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.fault_guard = NonFiniteStepGuard(max_bad_steps, self.args.output_dir)
        self.add_callback(self.fault_guard)
        self._checkpoint_root: str | None = None
        self.loss_fn = loss_fn
        self.ref_model = ref_model
        if ref_model is not None and zero3.partitioned(ref_model.parameters()):
            # Partitioned at load (DeepSpeed ZeRO-3) like the policy, whose engine train() makes: one of its own.
            self.ref_model = zero3.inference_engine(ref_model, self.accelerator.state.deepspeed_plugin.deepspeed_config)
        elif ref_model is not None:
            self.ref_model = ref_model.to(self.args.device)
        self.chunk_size = logprob_chunk_size or None
        if self.chunk_size and zero3.trains_partitioned(output_projection(self.model) or ()):
            logger.warning("DeepSpeed ZeRO-3 partitions the output head this run trains, and the chunked log-prob head "
                           "cannot pass it a gradient: the full logits are materialized instead (--logprob-chunk-size 0)")
            self.chunk_size = None
        # Training losses divide by the whole step's counts (step_totals): the Trainer must not rescale them.
        self.loss_is_scaled_for_ga = True
        # Per split and metric, each micro-batch's value and its weight: 1, the number of examples a
        # per-label mean is over (KTO's ``<metric>/desirable``), 0 for a stand-in.
        self._stored: dict[str, dict[str, list[tuple[Tensor, Tensor | float]]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._window_tokens = 0
        self._window_start = time.perf_counter()

    def get_train_dataloader(self) -> DataLoader:
        """Fixed-size batches, or length-bucketed ones under ``max_tokens_per_batch``, dealt to the
        processes in whole rounds: an epoch's last step counts every pair once (:class:`WholeRounds`)."""
        if self.max_tokens_per_batch:
            batches = TokenBudgetBatchSampler(
                [self.example_tokens(p) for p in self.train_dataset], self.max_tokens_per_batch, seed=self.args.seed
            )
        else:
            batches = BatchSampler(self._get_train_sampler(), self._train_batch_size, self.args.dataloader_drop_last)
        stand_in = min(self.train_dataset, key=self.example_tokens)  # the cheapest pair to run for nothing
        dataset, rounds = self.train_dataset, WholeRounds(batches, self.accelerator.num_processes)
        if self.unpaired:  # KTO's mismatched pairs, made over each optimizer step's examples
            dataset = KlExamples(self.train_dataset)
            rounds = StepRotation(batches, self.accelerator.num_processes, self.args.gradient_accumulation_steps)
        loader = DataLoader(dataset, batch_sampler=rounds,
                            collate_fn=StandInCollator(self.data_collator, stand_in),
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        # Whole rounds leave accelerate nothing to even out; accelerate < 1.4 refuses a sampler
        # without a batch size unless told so. Only this loader: evaluation's keeps its padding.
        even_batches = self.accelerator.even_batches
        self.accelerator.even_batches = False
        try:
            return self.accelerator.prepare(loader)
        finally:
            self.accelerator.even_batches = even_batches

    def token_logps(self, model, batch: dict[str, Tensor], log_sum_sq: bool = False) -> tuple[Tensor, ...]:
        """``(chosen_logps [B, Lc], rejected_logps [B, Lr])``, 0 where masked; with ``log_sum_sq`` also
        each response token's ``log Σ_v π(v)²`` (:func:`~slimepo.logprobs.pair_token_logps`)."""
        # FSDP2 keeps the root's (the head's) weights gathered from forward to backward, so the chunked
        # projection can use them; FSDP1's flat parameters are not checked here: materialized logits.
        fsdp1 = self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) == 1
        chunk = None if fsdp1 else self.chunk_size
        return pair_token_logps(model, batch, chunk_size=chunk, log_sum_sq=log_sum_sq)

    @torch.no_grad()
    def reference_logps(self, model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """Per-sequence reference log-probs ``([B], [B])`` as the loss reduces them (sums, unless
        :meth:`~slimepo.losses.base.PreferenceLoss.reference_sums` says otherwise), when it needs them."""
        if not self.loss_fn.requires_reference:
            return None, None
        if "ref_chosen_logps" in batch:  # precomputed before training
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.ref_model is not None:
            with self.accelerator.autocast():  # the precision of the policy's forward (its own is wrapped)
                chosen, rejected = self.token_logps(self.ref_model, batch)
            release_gathered_weights(self.ref_model)  # a sharded reference has no backward to reshard its root
        else:
            peft_model = self.accelerator.unwrap_model(model)
            with peft_model.disable_adapter():
                chosen, rejected = self.token_logps(model, batch)
        reduce = getattr(self.loss_fn, "reference_sums", None)  # pair losses; unpaired ones take sums
        if reduce is None:
            return chosen.sum(-1), rejected.sum(-1)
        return reduce(chosen, batch["chosen_mask"], rejected, batch["rejected_mask"])

    def _get_num_items_in_batch(self, batch_samples: list[dict[str, Tensor]], device) -> StepTotals | None:
        """The counts of one optimizer step: pairs and response tokens of all its micro-batches, all processes.

        The Trainer hands them to :meth:`compute_loss` as ``num_items_in_batch``, as it hands
        a causal LM its step's label count: every batch mean of the loss divides by them.
        With per-pair weights (``batch["weights"]``) they are weighted: Σ w_i, Σ w_i·|y_w,i|, Σ w_i·|y_l,i|.
        """
        if not batch_samples:
            return None
        counts = sum(
            (self._step_counts(b, device) for b in batch_samples if "stand_in" not in b),
            torch.zeros(3, device=device),
        )  # on the device: no host sync per micro-batch; a process with only stand-ins still joins the reduce
        counts = self.accelerator.reduce(counts, reduction="sum")
        if self.unpaired:  # KTO's reference point is the step's too
            kl = self.step_kl_totals(batch_samples) if len(batch_samples) > 1 else None
            return UnpairedStepTotals(pairs=counts[0], chosen_tokens=counts[1], rejected_tokens=counts[2], kl=kl)
        return StepTotals(pairs=counts[0], chosen_tokens=counts[1], rejected_tokens=counts[2])

    @staticmethod
    def _step_counts(batch: dict[str, Tensor], device) -> Tensor:
        """``[pairs, chosen tokens, rejected tokens]`` of one micro-batch, each pair counted w_i times."""
        chosen_lengths = batch["chosen_mask"].sum(-1).to(device, torch.float32)
        rejected_lengths = batch["rejected_mask"].sum(-1).to(device, torch.float32)
        weights = batch["weights"].to(device, torch.float32) if "weights" in batch else torch.ones_like(chosen_lengths)
        return torch.stack([weights.sum(), (weights * chosen_lengths).sum(), (weights * rejected_lengths).sum()])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch: StepTotals | None = None):
        counted = "stand_in" not in inputs
        step = self.unpaired_step if self.unpaired else self.pair_step
        out, metrics, weights = step(model, inputs, num_items_in_batch, counted)
        loss = out.loss
        if num_items_in_batch is not None:
            # This micro-batch's share of the step's loss; DDP and FSDP average gradients over
            # processes, so the share is scaled back up by their number.
            loss = loss * self.accelerator.num_processes
        if not counted:
            # An empty batch's stand-in (StandInCollator): its backward joins the gradient reduction, adding 0.
            loss = loss * 0.0

        split = "train" if model.training else "eval"
        # Kept as device tensors: converting each to float here would sync the GPU every micro-batch.
        # A stand-in's are kept too, of weight 0, so that every process has the same keys to reduce.
        for key, value in metrics.items():
            self._stored[split][key].append((value.detach(), weights.get(key, 1.0) if counted else 0.0))
        if split == "train" and counted:
            self._window_tokens = self._window_tokens + inputs["num_tokens"]
        return (loss, out) if return_outputs else loss

    def pair_step(self, model, inputs, step_totals: StepTotals | None, counted: bool):
        """Loss, metrics and metric weights of a batch of preference pairs."""
        wpo = self.loss_fn.requires_log_sum_sq  # WPO: the head also reduces each position's logits to log Σ_v π(v)²
        chosen, rejected, *log_sum_sq = self.token_logps(model, inputs, log_sum_sq=wpo)
        chosen_mask, rejected_mask = inputs["chosen_mask"], inputs["rejected_mask"]
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        extra = dict(zip(("chosen_log_sum_sq", "rejected_log_sum_sq"), log_sum_sq))
        out = self.loss_fn(chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected,
                           step_totals=step_totals, weights=inputs.get("weights"), **extra)
        metrics = dict(out.metrics)
        metrics["logps/chosen_sum"] = chosen.detach().sum(-1).mean()
        metrics["logps/rejected_sum"] = rejected.detach().sum(-1).mean()
        metrics.update(collapse_metrics(rejected, rejected_mask))
        return out, metrics, {}

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss terms and diagnostics since the last log: weighted means (or minima) over
        the micro-batches of all processes, stand-ins left out (weight 0)."""
        split = "train" if "loss" in logs else "eval"
        prefix = "" if split == "train" else "eval_"
        for key, stored in self._stored[split].items():
            values = torch.stack([value for value, _ in stored]).to(self.args.device, torch.float64)
            weights = torch.stack([torch.as_tensor(w, dtype=torch.float64, device=values.device) for _, w in stored])
            if key.endswith("min_logp"):
                local = torch.where(weights > 0, values, torch.inf).min().reshape(1)
                smallest = float(self.accelerator.gather(local).min())
                if math.isfinite(smallest):
                    logs[prefix + key] = smallest
            else:
                local = torch.stack([torch.where(weights > 0, values * weights, 0.0).sum(), weights.sum()])
                total, weight = self.accelerator.reduce(local, reduction="sum")
                if weight > 0:  # else nothing to average: e.g. no undesirable example since the last log
                    logs[prefix + key] = float(total / weight)
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

