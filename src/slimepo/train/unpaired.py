"""KTO's part of the training step: unpaired examples, the step's KL batch and reference point z_0.

:class:`UnpairedSteps` is mixed into :class:`~slimepo.train.trainer.PreferenceTrainer`, which
calls :meth:`UnpairedSteps.unpaired_step` from ``compute_loss`` when its loss is an
:class:`~slimepo.losses.UnpairedLoss`; the methods use the trainer's ``token_logps``,
``reference_logps``, ``accelerator`` and ``loss_fn``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slimepo.data.collate import without_rejected
from slimepo.diagnostics import drift_stats
from slimepo.losses import KlTotals, StepTotals
from slimepo.losses.kto import LABELS, label_means
from slimepo.scoring import release_gathered_weights


@dataclass(frozen=True)
class UnpairedStepTotals(StepTotals):
    """A KTO step's counts (``pairs`` counts examples) and the totals of its KL batch when they were
    scored before its first micro-batch (:meth:`UnpairedSteps.step_kl_totals`); None when each
    process has one micro-batch, whose forward scores its part (:meth:`UnpairedSteps.unpaired_step`)."""

    kl: KlTotals | None = None


class UnpairedSteps:
    """The KTO steps of :class:`~slimepo.train.trainer.PreferenceTrainer` (a mixin of ``transformers.Trainer``)."""

    def unpaired_step(self, model, inputs, step_totals: StepTotals | None, counted: bool):
        """Loss, metrics and metric weights of a batch of unpaired examples (KTO).

        :class:`~slimepo.data.unpaired.UnpairedCollator` puts each example's completion y_i in the
        chosen slot and its mismatched completion y'_i in the rejected slot: one forward scores both.
        The loss divides by the step's examples, and the reference point z_0 is the step's: its KL
        batch is every micro-batch of every process (:class:`~slimepo.data.unpaired.StepRotation`).
        With one micro-batch per process that is this micro-batch's pairs summed over the processes;
        with several, :meth:`step_kl_totals` scored them before the step and took the mismatched
        completions out of the micro-batches (``mismatched`` is then empty). Held out, each batch
        (over the processes) is its own KL batch.
        """
        completion, mismatched = self.token_logps(model, inputs)
        ref_completion, ref_mismatched = self.reference_logps(model, inputs)
        completion_mask, desirable = inputs["chosen_mask"], inputs["desirable"]
        kl_totals = getattr(step_totals, "kl", None)
        if kl_totals is None:
            local = self.kl_sums(mismatched, ref_mismatched, inputs["kl_mask"] & counted)
            kl_totals = KlTotals(*self.accelerator.reduce(local, reduction="sum"))
        out = self.loss_fn(completion, completion_mask, desirable, ref_completion, kl_totals=kl_totals,
                           num_examples=None if step_totals is None else step_totals.pairs)  # pairs: examples here
        metrics = dict(out.metrics)
        # Drift of each completion's log-lik from the reference's (the initial weights unless --ref-model), nats/token.
        drift = (completion.detach().sum(-1) - ref_completion) / completion_mask.sum(-1)
        metrics.update({f"drift/{label}": mean for label, mean in label_means(drift, desirable).items()})
        metrics["unlearning_rate/desirable"] = label_means((drift < 0).float(), desirable)["desirable"]
        counts = {"desirable": desirable.sum(), "undesirable": (~desirable).sum()}
        weights: dict[str, Any] = {key: counts[key.rpartition("/")[2]] for key in metrics if key.rpartition("/")[2] in LABELS}
        weights["kl"] = weights["reference_point"] = (kl_totals.count > 0).float()  # no mismatched pair: no estimate
        return out, metrics, weights

    @staticmethod
    def kl_sums(mismatched: Tensor, ref_mismatched: Tensor, kl_mask: Tensor) -> Tensor:
        """``[Σ_j r_θ(x_j, y'_j), count]`` over a micro-batch's mismatched pairs (``kl_mask`` ``[B]``), fp32."""
        logratios = mismatched.detach().sum(-1).float() - ref_mismatched.float()
        return torch.stack([torch.where(kl_mask, logratios, 0.0).sum(), kl_mask.sum().float()])

    @torch.no_grad()
    def step_kl_totals(self, batch_samples: list[dict[str, Tensor]]) -> KlTotals:
        """The KL batch of an optimizer step of several micro-batches per process, scored before the first.

        z_0 enters every micro-batch's loss, so it must be known before the first is backpropagated;
        the policy does not change within a step, so a forward without gradient scores the pairs as
        the step's own forwards would (in train mode, as they run). Every micro-batch of every
        process, summed: the KL batch of 1 process taking the step whole. Each micro-batch keeps the
        reference log-probs scored here (``ref_*_logps``), so the step does not run the reference twice,
        and loses its mismatched completions (:func:`~slimepo.data.collate.without_rejected`): its
        gradient forward scores its own completions only.
        """
        model = self.model_wrapped
        model.train()
        local = torch.zeros(2, device=self.args.device)
        with self.compute_loss_context_manager():
            for batch in batch_samples:
                inputs = self._prepare_inputs(batch)
                _, mismatched = self.token_logps(model, inputs)
                batch["ref_chosen_logps"], batch["ref_rejected_logps"] = self.reference_logps(model, inputs)
                kl_mask = inputs["kl_mask"] & ("stand_in" not in inputs)
                local += self.kl_sums(mismatched, batch["ref_rejected_logps"], kl_mask)
                kept = without_rejected(batch)  # the gradient forward scores the completions alone
                batch.clear()
                batch.update(kept)
        release_gathered_weights(model)  # no backward follows to reshard what FSDP2 keeps gathered
        return KlTotals(*self.accelerator.reduce(local, reduction="sum"))

    @torch.no_grad()
    def score_examples(self, examples: list, batch_size: int) -> tuple[Tensor, Tensor]:
        """``(r(y) [N], desirable [N])`` on CPU: each example's completion's mean log-lik per token
        (nats) under the model being trained, in eval mode, and its label."""
        model = self.model
        was_training = model.training
        model.eval()
        means, labels = [], []
        try:
            for start in range(0, len(examples), batch_size):
                batch = self._prepare_inputs(self.data_collator(examples[start : start + batch_size]))
                completion, _ = self.token_logps(model, batch)
                means.append((completion.sum(-1) / batch["chosen_mask"].sum(-1)).float().cpu())
                labels.append(batch["desirable"].cpu())
        finally:
            model.train(was_training)
        return torch.cat(means), torch.cat(labels)


def unpaired_metrics(logp_mean: Tensor, desirable: Tensor, base: Tensor | None = None) -> dict[str, Any]:
    """Held-out summary of unpaired examples from their completions' ``r(y)`` ``[N]`` (nats/token).

    Returns ``examples``, ``desirable``, ``undesirable`` (counts), ``desirable_logp_mean``,
    ``undesirable_logp_mean``; with ``base`` (the same examples under the initial model):
    ``base`` {the keys above}, ``drift`` {``desirable_drift_mean``, ``unlearning_rate`` (share of
    desirable completions that became less likely), ``undesirable_drift_mean``}. A mean over no
    example is None.
    """
    def mean(values: Tensor) -> float | None:
        return float(values.mean()) if values.numel() else None

    result: dict[str, Any] = {
        "examples": int(desirable.numel()), "desirable": int(desirable.sum()), "undesirable": int((~desirable).sum()),
        "desirable_logp_mean": mean(logp_mean[desirable]), "undesirable_logp_mean": mean(logp_mean[~desirable]),
    }
    if base is None:
        return result
    result["base"] = unpaired_metrics(base, desirable)
    drift = drift_stats(logp_mean[desirable], base[desirable], logp_mean[~desirable], base[~desirable])
    result["drift"] = {
        name: None if math.isnan(drift[key]) else drift[key]
        for name, key in (("desirable_drift_mean", "chosen_drift_mean"), ("unlearning_rate", "unlearning_rate"),
                          ("undesirable_drift_mean", "rejected_drift_mean"))
    }
    return result
