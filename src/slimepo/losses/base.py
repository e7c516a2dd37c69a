"""What every preference loss shares: inputs, outputs, masked reductions, parameters.

Notation follows ``shared/PAPER.md``: ``ℓ_t`` is a per-token log-probability (natural
log), ``r(y) = (1/|y|) Σ_t ℓ_t`` the length-normalized log-likelihood of a response.

Every batch mean of every loss is a sum divided by a count: a mean over pairs
(``SequenceStats.pair_mean``) or a mean over all valid tokens of one side
(``SequenceStats.token_mean``). By default the counts are the batch's own. When one
optimizer step is split into parts (micro-batches of gradient accumulation, processes of
data parallelism), :class:`StepTotals` gives the counts of the whole step, so that the
parts' losses add up to the loss of the unsplit step, and so do their gradients.

Per-pair weights ``w_i >= 0`` (``weights``, ``[batch]``) make every such mean a weighted
one, the counts weighted alike::

    mean over pairs   Σ_i w_i·v_i / Σ_i w_i
    mean over tokens  Σ_i w_i·Σ_{t∈y_i} v_it / Σ_i w_i·|y_i|

so a pair of weight 2 counts exactly as the same pair twice, one of weight 0 as no pair,
and all weights 1 give the unweighted means. A batch (or step) whose weights are all 0
has loss 0.

Per-pair factors ``c_i >= 0`` (``pair_factors``, ``[batch]``) scale each pair's
terms without entering the counts, ``Σ_i w_i·c_i·v_i / Σ_i w_i``: WPO's weights
(:mod:`slimepo.losses.wpo`), which make a pair the policy finds unlikely count for less
rather than the others for more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor


@dataclass
class LossOutput:
    """A loss value and what explains it.

    ``loss`` is the scalar to backpropagate. ``metrics`` maps names to detached fp32
    scalars: ``loss/<term>`` for each term of the objective, ``rewards/chosen`` and
    ``rewards/rejected`` as the loss defines them, ``margin`` (their mean difference),
    ``accuracy`` (fraction of pairs with a positive margin), ``logps/chosen`` and
    ``logps/rejected`` (mean over pairs of r(y), nats per token).
    """

    loss: Tensor
    metrics: dict[str, Tensor]


def param(default: Any, help: str, **kwargs: Any) -> Any:
    """A loss hyperparameter: its default and the one line that documents it everywhere."""
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class StepTotals:
    """The counts a batch mean divides by, over a whole optimizer step.

    ``pairs``: pairs in the step; ``chosen_tokens`` / ``rejected_tokens``: valid response
    tokens of each side. Scalars (numbers or 0-d tensors), summed over every micro-batch
    and every process of the step. With per-pair weights they are weighted counts:
    ``Σ_i w_i``, ``Σ_i w_i·|y_w,i|``, ``Σ_i w_i·|y_l,i|``.
    """

    pairs: Tensor | float
    chosen_tokens: Tensor | float
    rejected_tokens: Tensor | float


@dataclass(frozen=True)
class SequenceStats:
    """Per-pair reductions of one side (chosen or rejected) of a batch, in fp32.

    ``logps``: ``[batch, tokens]`` per-token log-probs with masked positions set to 0;
    ``mask``: ``[batch, tokens]`` bool; ``sum``: ``[batch]`` Σ_t ℓ_t; ``length``:
    ``[batch]`` |y|; ``mean``: ``[batch]`` r(y) = sum / length. ``num_pairs`` and
    ``num_tokens``: what :meth:`pair_mean` and :meth:`token_mean` divide by (this batch's
    counts, or the step's, see :class:`StepTotals`). ``weights``: ``[batch]`` fp32 w_i >= 0
    of each pair (times its factor c_i under ``pair_factors``), or None (every w_i = 1).
    """

    logps: Tensor
    mask: Tensor
    sum: Tensor
    length: Tensor
    mean: Tensor
    num_pairs: Tensor | float
    num_tokens: Tensor | float
    weights: Tensor | None = None

    def pair_mean(self, values: Tensor) -> Tensor:
        """Mean over pairs of ``values`` ``[batch]``: ``Σ_i w_i·values_i / num_pairs``."""
        if self.weights is None:
            return values.sum() / self.num_pairs
        return (self.weights * values).sum() / _nonzero(self.num_pairs)

    def token_mean(self, per_token: Tensor) -> Tensor:
        """Mean over valid tokens of ``per_token`` ``[batch, tokens]`` (0 where masked):
        ``Σ_i w_i·Σ_t per_token_it / num_tokens``, each token weighing its pair's w_i."""
        if self.weights is None:
            return per_token.sum() / self.num_tokens
        return (self.weights[:, None] * per_token).sum() / _nonzero(self.num_tokens)


def _nonzero(count: Tensor | float) -> Tensor | float:
    """``count``, or 1 where it is 0: pairs that all weigh 0 give a weighted sum of 0, whose mean is 0, not 0/0."""
    if isinstance(count, Tensor):
        return torch.where(count > 0, count, torch.ones_like(count))
    return count if count > 0 else 1.0


def sequence_stats(
    logps: Tensor, mask: Tensor, side: str, num_pairs: Tensor | float | None = None,
    num_tokens: Tensor | float | None = None, weights: Tensor | None = None,
) -> SequenceStats:
    """Reduce per-token log-probs over the valid tokens given by ``mask``, in fp32.

    Masked-out positions may hold anything (0, -1e4, NaN): ``torch.where`` keeps them out
    of both the value and the gradient, which a multiplication by the mask would not.
    ``weights``: ``[batch]`` w_i >= 0 per pair (finite), or None. ``num_pairs`` /
    ``num_tokens`` default to this batch's pairs and valid tokens, weighted:
    ``Σ_i w_i`` and ``Σ_i w_i·|y_i|``.
    """
    if logps.dim() != 2 or mask.shape != logps.shape:
        raise ValueError(
            f"{side}_logps and {side}_mask must both be [batch, tokens]; "
            f"got {tuple(logps.shape)} and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"{side}_mask must be a bool tensor, got {mask.dtype}")
    length = mask.sum(-1)
    if bool((length == 0).any()):
        rows = torch.nonzero(length == 0).flatten().tolist()
        raise ValueError(f"{side}_mask has no valid token in row(s) {rows}: every response needs >= 1 token")
    masked = torch.where(mask, logps.float(), torch.zeros((), dtype=torch.float32, device=logps.device))
    total = masked.sum(-1)
    length = length.to(torch.float32)
    if weights is None:
        # A 0-d tensor, not a Python number: a compiled loss would specialize on each batch size.
        pairs, tokens = length.new_tensor(mask.shape[0]), length.sum()
    else:
        weights = _checked_weights(weights, length.shape, side)
        pairs, tokens = weights.sum(), (weights * length).sum()
    return SequenceStats(
        logps=masked, mask=mask, sum=total, length=length, mean=total / length,
        num_pairs=pairs if num_pairs is None else num_pairs,
        num_tokens=tokens if num_tokens is None else num_tokens,
        weights=weights,
    )


def _checked_weights(weights: Tensor, batch: torch.Size, side: str) -> Tensor:
    """``weights`` as fp32 ``[batch]``; raise ``ValueError`` for another shape or a weight that is not finite and >= 0."""
    if weights.shape != batch:
        raise ValueError(f"weights must be [batch]={tuple(batch)} like {side}_mask's rows, got {tuple(weights.shape)}")
    weights = weights.detach().to(torch.float32)
    bad = ~torch.isfinite(weights) | (weights < 0)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise ValueError(f"weights must be finite and >= 0; row(s) {rows} are not: {weights[bad].tolist()}")
    return weights


class PreferenceLoss:
    """Base of every registered loss: a dataclass of hyperparameters with ``__call__``.

    Subclasses set ``name``, ``citation``, ``requires_reference`` and implement
    ``compute(chosen, rejected, ref_chosen, ref_rejected)`` on :class:`SequenceStats`.
    ``requires_log_sum_sq``: the loss takes, besides the log-probs, each response token's
    ``log Σ_v π(v)²`` under the policy (``chosen_log_sum_sq`` / ``rejected_log_sum_sq``), which
    the log-prob head computes only for such a loss (:class:`~slimepo.losses.wpo.WpoWeighted`).
    """

    name: ClassVar[str]
    citation: ClassVar[str]
    requires_reference: ClassVar[bool] = False
    requires_log_sum_sq: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._warned_unused_reference = False
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the parameter when a value is out of range."""

    def _check_nonnegative(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{self.name}: {name} must be a number >= 0, got {value!r}")

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{self.name}: {name} must be a number > 0, got {value!r}")

    def __call__(
        self,
        chosen_logps: Tensor,
        chosen_mask: Tensor,
        rejected_logps: Tensor,
        rejected_mask: Tensor,
        ref_chosen_logps: Tensor | None = None,
        ref_rejected_logps: Tensor | None = None,
        step_totals: StepTotals | None = None,
        weights: Tensor | None = None,
        pair_factors: Tensor | None = None,
    ) -> LossOutput:
        """The loss of one batch and its metrics.

        ``step_totals``: when this batch is one part of an optimizer step, the step's
        counts; every batch mean then divides by them, so the parts' losses sum to the
        step's loss. The metrics stay this batch's own means either way.

        ``weights``: ``[batch]`` per-pair weights w_i >= 0 (finite), or None (all 1). Every
        batch mean of the loss becomes a weighted mean (see the module docstring); with
        ``step_totals`` those are the step's weighted counts. The ``loss/<term>`` metrics are
        weighted like the loss; ``rewards/*``, ``margin``, ``accuracy`` and ``logps/*`` stay
        plain means over the batch's pairs.

        ``pair_factors``: ``[batch]`` factors c_i >= 0 multiplying every term of pair i, its
        tokens' in token means too, while the counts stay those of ``weights``: each mean becomes
        ``Σ_i w_i·c_i·v_i / Σ_i w_i`` (see the module docstring). Used as given: a factor meant
        as a constant comes detached.
        """
        chosen = sequence_stats(chosen_logps, chosen_mask, "chosen", weights=weights)
        rejected = sequence_stats(rejected_logps, rejected_mask, "rejected", weights=weights)
        if chosen.sum.shape != rejected.sum.shape:
            raise ValueError(
                f"chosen and rejected batch sizes differ: {chosen.sum.shape[0]} vs {rejected.sum.shape[0]}"
            )
        if pair_factors is not None:
            if pair_factors.shape != chosen.sum.shape:
                raise ValueError(f"pair_factors must be [batch]={tuple(chosen.sum.shape)}, got {tuple(pair_factors.shape)}")
            # Not checked for NaN: a non-finite policy makes a non-finite loss, a step the trainer skips.
            factors = pair_factors.to(torch.float32)
            scaled = factors if weights is None else chosen.weights * factors
            chosen, rejected = dataclasses.replace(chosen, weights=scaled), dataclasses.replace(rejected, weights=scaled)
        given_reference = ref_chosen_logps is not None or ref_rejected_logps is not None
        if self.requires_reference:
            if ref_chosen_logps is None or ref_rejected_logps is None:
                raise ValueError(
                    f"loss '{self.name}' needs reference log-probs: pass ref_chosen_logps and "
                    "ref_rejected_logps (per-sequence sums, [batch])"
                )
            ref_chosen_logps = ref_chosen_logps.float()
            ref_rejected_logps = ref_rejected_logps.float()
            for label, ref in (("ref_chosen_logps", ref_chosen_logps), ("ref_rejected_logps", ref_rejected_logps)):
                if ref.shape != chosen.sum.shape:
                    raise ValueError(f"{label} must be [batch]={tuple(chosen.sum.shape)}, got {tuple(ref.shape)}")
        elif given_reference and not self._warned_unused_reference:
            warnings.warn(
                f"loss '{self.name}' is reference-free; the reference log-probs passed to it are ignored",
                stacklevel=2,
            )
            self._warned_unused_reference = True
        # The metrics explain this batch: its own means. The loss to backpropagate divides by the step's counts.
        with torch.no_grad() if step_totals is not None else contextlib.nullcontext():
            loss, terms, chosen_rewards, rejected_rewards = self.compute(
                chosen, rejected, ref_chosen_logps, ref_rejected_logps
            )
        if step_totals is not None:
            loss = self.compute(
                dataclasses.replace(chosen, num_pairs=step_totals.pairs, num_tokens=step_totals.chosen_tokens),
                dataclasses.replace(rejected, num_pairs=step_totals.pairs, num_tokens=step_totals.rejected_tokens),
                ref_chosen_logps, ref_rejected_logps,
            )[0]
        margins = chosen_rewards - rejected_rewards
        metrics = {f"loss/{term}": value.detach() for term, value in terms.items()}
        metrics.update(
            {
                "rewards/chosen": chosen_rewards.detach().mean(),
                "rewards/rejected": rejected_rewards.detach().mean(),
                "margin": margins.detach().mean(),
                "accuracy": (margins.detach() > 0).float().mean(),
                "logps/chosen": chosen.mean.detach().mean(),
                "logps/rejected": rejected.mean.detach().mean(),
            }
        )
        return LossOutput(loss=loss, metrics=metrics)

    def reference_sums(
        self, chosen_logps: Tensor, chosen_mask: Tensor, rejected_logps: Tensor, rejected_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The reference model's per-token log-probs ``[batch, tokens]`` reduced to what ``compute``
        takes as ``ref_chosen`` / ``ref_rejected`` ``[batch]``: their sums over each response's
        mask (a loss that weighs tokens otherwise, as LD-DPO, overrides this and
        :meth:`reference_key`). The trainer calls it on the reference forward of every step, and
        ``--precompute-ref-logps`` once per pair."""
        zero = torch.zeros((), dtype=torch.float32, device=chosen_logps.device)
        return (torch.where(chosen_mask, chosen_logps.float(), zero).sum(-1),
                torch.where(rejected_mask, rejected_logps.float(), zero).sum(-1))

    def reference_key(self) -> dict[str, Any]:
        """What :meth:`reference_sums` depends on beyond the log-probs (part of the reference cache's key)."""
        return {}

    def compiled(self) -> PreferenceLoss:
        """This loss with its arithmetic compiled by ``torch.compile`` (same values)."""
        self.compute = torch.compile(self.compute)
        return self

    def compute(
        self,
        chosen: SequenceStats,
        rejected: SequenceStats,
        ref_chosen: Tensor | None,
        ref_rejected: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        """Return (loss, {term: scalar}, chosen_rewards [batch], rejected_rewards [batch])."""
        raise NotImplementedError

    @classmethod
    def parameters(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    def hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.parameters()}
