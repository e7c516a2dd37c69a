"""Losses on unpaired data: one response per example, labelled desirable or not. KTO.

Ethayarajh, Xu, Muennighoff, Jurafsky & Kiela, "KTO: Model Alignment as Prospect Theoretic
Optimization", ICML 2024 (arXiv:2402.01306); as TRL's ``KTOTrainer`` computes it.

An example is a prompt ``x``, a completion ``y`` and a label (desirable or undesirable);
there is no second response to compare with. Notation: ``π(y) = Σ_t ℓ_t`` the summed
log-likelihood of a completion, ``π_ref(y)`` the same under the reference (``[batch]``
sums), ``r_θ(x, y) = π(y) − π_ref(y)`` the log-ratio, ``σ`` the logistic function.

The reference point ``z_0`` is an estimate of ``KL(π_θ ‖ π_ref)``: the mean log-ratio of the
*KL batch*, mismatched pairs ``(x_j, y'_j)`` made by giving each prompt of the batch another
example's completion. It is detached (no gradient flows through it), as in the paper and
TRL.

Which batch: the optimizer step's. Its examples e_0 … e_{N−1}, in the order they are dealt,
each prompt with the completion of the example before it (the last's for e_0): TRL's rotation
by one, over the whole step's global batch instead of each process's micro-batch. The paper
estimates z_0 on the batch a step is taken on; a step split over processes or micro-batches is
meant to be that same step (every batch mean of slimepo's losses divides by the step's counts),
and pairs and means per micro-batch would make z_0, and through it the loss and the gradient,
depend on the split (TRL averages per-process means at each micro-step). With the step's KL
batch, one process taking the step whole, one accumulating micro-batches and several processes
give the same z_0, loss and gradient; a step that is one batch on one process keeps that batch's
own rotation. This module takes the KL batch as given: ``kl_logratios`` when a batch is its own
KL batch, ``kl_totals`` when the step's spans several micro-batches or processes (the trainer:
``StepRotation`` makes the pairs, ``slimepo.train.unpaired.UnpairedSteps.unpaired_step`` sums them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from slimepo.losses.base import LossOutput, SequenceStats, param, sequence_stats

#: The two labels; a metric named ``<name>/<label>`` is a mean over that label's examples only.
LABELS = ("desirable", "undesirable")


@dataclass(frozen=True)
class KlTotals:
    """The KL batch when it spans more than this batch: every micro-batch of one optimizer step, on every process.

    ``sum``: Σ_j r_θ(x_j, y'_j) over its mismatched pairs; ``count``: their number. 0-d tensors,
    summed over the micro-batches and processes.
    """

    sum: Tensor
    count: Tensor


def label_means(values: Tensor, desirable: Tensor) -> dict[str, Tensor]:
    """``{"desirable": mean of values [batch] over desirable rows, "undesirable": ...}``; 0 for a label with no row."""
    means = {}
    for label, rows in zip(LABELS, (desirable, ~desirable)):
        total = torch.where(rows, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
        means[label] = total / rows.sum().clamp(min=1)
    return means


class UnpairedLoss:
    """Base of losses on unpaired examples: a dataclass of hyperparameters with ``__call__``.

    Inputs, for a batch of B examples ``(x_i, y_i, label_i)``:

    - ``completion_logps`` ``[B, T]`` per-token log-probs of ``y_i`` (any value where
      masked), ``completion_mask`` ``[B, T]`` bool, ``desirable`` ``[B]`` bool;
    - ``ref_completion_logps`` ``[B]``: ``π_ref(y_i)``, summed (when ``requires_reference``);
    - ``kl_logratios`` ``[B]``: ``r_θ(x_i, y'_i)`` of the KL batch, each prompt with a
      mismatched completion; ``kl_mask`` ``[B]`` bool, False where a row has no mismatched
      completion (a batch of one example). Or ``kl_totals``: the sum and count of the KL batch
      of this batch's whole optimizer step, which then replace this batch's.

    The loss is ``Σ_i L_i / num_examples``: a mean over the examples (the batch's count by
    default, or the whole optimizer step's when this batch is one part of it).

    Metrics: ``loss/<label>``, ``rewards/<label>`` and ``logps/<label>`` (mean ``r(y)``, nats
    per token) for each label of :data:`LABELS`, each a mean over that label's examples of
    this batch (0 when it has none: weigh by the label's count to average batches), ``kl``
    (the KL estimate) and what the loss adds. Subclasses set ``name``, ``citation``,
    ``requires_reference`` and implement :meth:`compute`.
    """

    name: ClassVar[str]
    citation: ClassVar[str]
    requires_reference: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the parameter when a value is out of range."""

    def __call__(
        self,
        completion_logps: Tensor,
        completion_mask: Tensor,
        desirable: Tensor,
        ref_completion_logps: Tensor | None = None,
        kl_logratios: Tensor | None = None,
        kl_mask: Tensor | None = None,
        *,
        kl_totals: KlTotals | None = None,
        num_examples: Tensor | float | None = None,
    ) -> LossOutput:
        completion = sequence_stats(completion_logps, completion_mask, "completion", num_pairs=num_examples)
        batch = completion.sum.shape
        if desirable.dtype != torch.bool or desirable.shape != batch:
            raise ValueError(f"desirable must be a bool tensor of shape [batch]={tuple(batch)}, got "
                             f"{desirable.dtype} {tuple(desirable.shape)}")
        if self.requires_reference:
            if ref_completion_logps is None:
                raise ValueError(f"loss '{self.name}' needs reference log-probs: pass ref_completion_logps "
                                 "(per-sequence sums, [batch])")
            ref_completion_logps = ref_completion_logps.float()
            if ref_completion_logps.shape != batch:
                raise ValueError(f"ref_completion_logps must be [batch]={tuple(batch)}, got "
                                 f"{tuple(ref_completion_logps.shape)}")
        kl = self.kl_estimate(kl_logratios, kl_mask, kl_totals)
        per_example, rewards, extra = self.compute(completion, desirable, ref_completion_logps, kl)
        loss = completion.pair_mean(per_example)
        metrics = {"kl": kl, **{key: value.detach() for key, value in extra.items()}}
        for name, values in (("loss", per_example), ("rewards", rewards), ("logps", completion.mean)):
            for label, mean in label_means(values.detach(), desirable).items():
                metrics[f"{name}/{label}"] = mean
        return LossOutput(loss=loss, metrics=metrics)

    @staticmethod
    def kl_estimate(kl_logratios: Tensor | None, kl_mask: Tensor | None, kl_totals: KlTotals | None) -> Tensor:
        """Mean log-ratio of the KL batch, detached, fp32 0-d; 0 when it has no pair."""
        if kl_totals is not None:
            total, count = kl_totals.sum, kl_totals.count
        elif kl_logratios is None:
            raise ValueError("the reference point needs the KL batch: pass kl_logratios ([batch]) or kl_totals")
        else:
            kl_logratios = kl_logratios.float()
            if kl_logratios.dim() != 1 or (kl_mask is not None and kl_mask.shape != kl_logratios.shape):
                raise ValueError(f"kl_logratios and kl_mask must be [batch]; got {tuple(kl_logratios.shape)} and "
                                 f"{None if kl_mask is None else tuple(kl_mask.shape)}")
            if kl_mask is None:
                kl_mask = torch.ones_like(kl_logratios, dtype=torch.bool)
            total = torch.where(kl_mask, kl_logratios, torch.zeros((), device=kl_logratios.device)).sum()
            count = kl_mask.sum()
        return (total.float() / count.clamp(min=1)).detach()

    def compute(
        self, completion: SequenceStats, desirable: Tensor, ref_completion: Tensor | None, kl: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Return (per-example loss [batch], rewards [batch], {metric: scalar})."""
        raise NotImplementedError

    def balance_warning(self, n_desirable: int, n_undesirable: int) -> str | None:
        """What to say when the training data's label counts do not suit this loss's weights (None: fine)."""
        return None

    def compiled(self) -> UnpairedLoss:
        """This loss with its arithmetic compiled by ``torch.compile`` (same values)."""
        self.compute = torch.compile(self.compute)
        return self

    @classmethod
    def parameters(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    def hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.parameters()}


@dataclass
class KtoLoss(UnpairedLoss):
    """KTO, Kahneman-Tversky optimization, with the paper's and TRL's reference point.

    With ``r = π(y) − π_ref(y)`` (sums over the completion's tokens) and the detached
    reference point ``z_0 = max(0, mean_j r_θ(x_j, y'_j))`` over the KL batch:

        L_i = λ_D · (1 − σ(β (r_i − z_0)))     y_i desirable
        L_i = λ_U · (1 − σ(β (z_0 − r_i)))     y_i undesirable

    and ``L = mean_i L_i`` over all examples of both labels. This is the paper's
    ``E_{x,y}[λ_y − v(x, y)]`` and TRL's ``losses.nanmean()`` over its concatenated
    desirable and undesirable losses: each example weighs ``1/B``, so a label's share of the
    loss follows its share of the batch (which is what ``λ_D`` and ``λ_U`` correct; the paper
    advises ``λ_D n_D / (λ_U n_U)`` in [1, 4/3]). Rewards: ``β r`` (as TRL, without ``z_0``).
    """

    name = "kto"
    citation = "Ethayarajh et al., ICML 2024 (arXiv:2402.01306)"
    requires_reference = True

    beta: float = param(0.1, "β, how fast the value saturates around the reference point")
    desirable_weight: float = param(1.0, "λ_D, weight of the desirable examples' losses")
    undesirable_weight: float = param(1.0, "λ_U, weight of the undesirable examples' losses")

    def validate(self) -> None:
        for name in ("beta", "desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{self.name}: {name} must be a number > 0, got {value!r}")

    def balance_warning(self, n_desirable: int, n_undesirable: int) -> str | None:
        """The paper's advice, which TRL warns about too: λ_D n_D / (λ_U n_U) in [1, 4/3]."""
        if not n_desirable or not n_undesirable:
            label = "desirable" if not n_desirable else "undesirable"
            return f"kto: the training data has no {label} example; KTO learns from both labels"
        ratio = self.desirable_weight * n_desirable / (self.undesirable_weight * n_undesirable)
        if 1 <= ratio <= 4 / 3:
            return None
        return (f"kto: desirable_weight·n_desirable / (undesirable_weight·n_undesirable) = {ratio:.3g} "
                f"({n_desirable} desirable, {n_undesirable} undesirable examples); the KTO paper advises a value "
                "in [1, 4/3]: set desirable_weight or undesirable_weight to bring it there")

    def compute(self, completion, desirable, ref_completion, kl):
        logratio = completion.sum - ref_completion
        z0 = kl.clamp(min=0)
        desirable_loss = self.desirable_weight * (1 - torch.sigmoid(self.beta * (logratio - z0)))
        undesirable_loss = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - logratio)))
        per_example = torch.where(desirable, desirable_loss, undesirable_loss)
        return per_example, self.beta * logratio, {"reference_point": z0}
