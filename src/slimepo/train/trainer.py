"""The training step: one forward over chosen and rejected, per-token log-probs, loss, metrics.

:class:`PreferenceTrainer` is a ``transformers.Trainer`` so that accelerate, DDP, FSDP,
DeepSpeed, gradient accumulation, schedulers, checkpoints and ``--resume`` behave as
users of TRL expect. Everything specific to preference optimization is in
:meth:`PreferenceTrainer.compute_loss`, readable top to bottom.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import torch
from torch import Tensor
from transformers import Trainer

from slimepo.logprobs import sequence_token_logps
from slimepo.losses import PreferenceLoss

#: A rejected token "collapses" below this probability (PAPER.md's formatting collapse).
COLLAPSE_PROB = 1e-4


def collapse_metrics(rejected_logps: Tensor, rejected_mask: Tensor) -> dict[str, Tensor]:
    """Fraction of valid rejected tokens with p < 1e-4, and the lowest token log-prob."""
    valid = rejected_logps.detach()[rejected_mask]
    return {
        "collapse/rejected_p_lt_1e-4": (valid < math.log(COLLAPSE_PROB)).float().mean(),
        "collapse/rejected_min_logp": valid.min(),
    }


def split_pairs(logps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``[2B, T]`` rows (chosen first, then rejected) into (chosen, chosen_mask, rejected, rejected_mask)."""
    n = logps.shape[0] // 2
    return logps[:n], mask[:n], logps[n:], mask[n:]


class PreferenceTrainer(Trainer):
    """``transformers.Trainer`` whose loss is any :mod:`slimepo.losses` objective.

    ``ref_model``: a frozen reference for reference-based losses; None with LoRA means
    the policy's own base weights with adapters disabled.
    """

    def __init__(self, *args, loss_fn: PreferenceLoss, ref_model=None, logprob_chunk_size: int = 512, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.ref_model = ref_model
        if ref_model is not None:
            self.ref_model = ref_model.to(self.args.device)
        self.chunk_size = logprob_chunk_size or None
        # Our loss is a per-micro-batch mean: the Trainer must divide it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._stored: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._window_tokens = 0
        self._window_start = time.perf_counter()

    def token_logps(self, model, batch: dict[str, Tensor]) -> Tensor:
        chunk = None if self.is_fsdp_enabled else self.chunk_size  # FSDP shards the head outside forward
        return sequence_token_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], chunk_size=chunk
        )

    @torch.no_grad()
    def reference_logps(self, model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """Per-sequence summed reference log-probs ``([B], [B])``, when the loss needs them."""
        if not self.loss_fn.requires_reference:
            return None, None
        if self.ref_model is not None:
            logps = self.token_logps(self.ref_model, batch)
        else:
            peft_model = self.accelerator.unwrap_model(model)
            with peft_model.disable_adapter():
                logps = self.token_logps(model, batch)
        sums = logps.sum(-1)
        n = sums.shape[0] // 2
        return sums[:n], sums[n:]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = self.token_logps(model, inputs)
        chosen, chosen_mask, rejected, rejected_mask = split_pairs(logps, inputs["response_mask"])
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        out = self.loss_fn(chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected)

        metrics = dict(out.metrics)
        metrics["logps/chosen_sum"] = chosen.detach().sum(-1).mean()
        metrics["logps/rejected_sum"] = rejected.detach().sum(-1).mean()
        metrics.update(collapse_metrics(rejected, rejected_mask))
        split = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._stored[split][key].append(float(value))
        if split == "train":
            self._window_tokens += int(inputs["attention_mask"].sum())
        return (out.loss, out) if return_outputs else out.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss terms and diagnostics gathered since the last log."""
        split = "train" if "loss" in logs else "eval"
        prefix = "" if split == "train" else "eval_"
        for key, values in self._stored[split].items():
            reduce = torch.min if key.endswith("min_logp") else torch.mean
            local = reduce(torch.tensor(values, dtype=torch.float64, device=self.args.device)).reshape(1)
            logs[prefix + key] = float(reduce(self.accelerator.gather(local)))
        self._stored[split].clear()
        if split == "train":
            elapsed = time.perf_counter() - self._window_start
            tokens = self.accelerator.reduce(
                torch.tensor(self._window_tokens, device=self.args.device), reduction="sum"
            )
            logs["tokens_per_second"] = float(tokens) / max(elapsed, 1e-9)
            self._window_tokens = 0
            self._window_start = time.perf_counter()
        super().log(logs, start_time)
