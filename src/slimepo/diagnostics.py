"""Drift, collapse and held-out preference metrics from per-token log-probs. Torch only.

They measure the two failures SLIME claims to fix (``shared/PAPER.md``), not only the
margin; one definition each, used by training (logged metrics, the stability monitor,
before/after validation) and by evaluation (``eval.json``):

- *collapse*: the share of valid rejected tokens whose probability fell below a
  threshold (``ℓ_t < log p``), and the lowest rejected token log-prob (nats);
- *drift*: per pair, ``r_model(y) − r_base(y)`` with ``r(y) = (1/|y|) Σ_t ℓ_t``
  (nats/token); the *unlearning rate* is the share of pairs whose chosen drift is < 0
  (the chosen answer's likelihood falls relative to the base model);
- *end of turn*: the log-prob of the end-of-turn token that closes each answer, i.e. how
  much the model still wants to stop where the answer stops. Every training answer ends
  with it, chosen and rejected alike, so it is the one token every pair shares; a loss
  that pushes it down on rejected answers can teach the model to stop ending its answers;
- :func:`preference_metrics`: accuracy and the implicit margin ``Δ = r(y_w) − r(y_l)`` of
  held-out pairs, with collapse, the end of turn, and drift against a base model.

Notation: ``ℓ_t`` per-token log-prob (natural log), ``r(y)`` in nats/token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from slimepo.losses.base import SequenceStats, sequence_stats

#: A rejected token "collapses" below this probability (PAPER.md's formatting collapse).
COLLAPSE_PROB = 1e-4
#: Thresholds of the collapse fractions: key suffix -> probability.
COLLAPSE_THRESHOLDS: dict[str, float] = {"1e-4": COLLAPSE_PROB, "1e-8": 1e-8}

#: A model's ``(chosen_logps, chosen_mask, rejected_logps, rejected_mask)`` on the same pairs.
LogProbs = tuple[Tensor, Tensor, Tensor, Tensor]


def collapse_stats(rejected_logps: Tensor, rejected_mask: Tensor) -> dict[str, Tensor]:
    """``rejected_p_lt_<p>`` for each of :data:`COLLAPSE_THRESHOLDS` and ``rejected_min_logp``.

    ``rejected_logps``, ``rejected_mask``: ``[pairs, tokens]``; masked positions are ignored.
    Returns 0-d tensors.
    """
    valid = rejected_logps.detach()[rejected_mask]
    stats = {f"rejected_p_lt_{label}": (valid < math.log(p)).float().mean() for label, p in COLLAPSE_THRESHOLDS.items()}
    stats["rejected_min_logp"] = valid.min()
    return stats


def collapse_metrics(rejected_logps: Tensor, rejected_mask: Tensor) -> dict[str, Tensor]:
    """:func:`collapse_stats` under the names training logs them: ``collapse/<key>``."""
    return {f"collapse/{key}": value for key, value in collapse_stats(rejected_logps, rejected_mask).items()}


def end_of_turn_stats(logps: Tensor, mask: Tensor, ends: Tensor | Sequence[bool]) -> dict[str, Any]:
    """The last valid token's log-prob on the responses that ``ends`` marks.

    ``logps``, ``mask``: ``[pairs, tokens]``; ``ends``: ``[pairs]`` bool, True where the
    response's last token is the end-of-turn token (False where truncation cut it off).
    Returns ``count`` (responses marked), ``logp_mean`` (their mean log-prob of that token,
    nats) and ``p_mean`` (their mean probability of it); both None when none is marked.
    """
    ends = torch.as_tensor(ends, dtype=torch.bool, device=mask.device)
    if ends.shape != mask.shape[:1]:
        raise ValueError(f"ends must be [pairs] = [{mask.shape[0]}]; got {tuple(ends.shape)}")
    # The index of each row's last valid token: the first True of the row read backwards.
    last = mask.shape[1] - 1 - mask.flip(-1).int().argmax(-1)
    final = logps.detach().float().gather(1, last[:, None])[:, 0][ends]
    if final.numel() == 0:
        return {"count": 0, "logp_mean": None, "p_mean": None}
    return {"count": int(final.numel()), "logp_mean": final.mean().item(), "p_mean": final.exp().mean().item()}


def drift_stats(
    chosen_mean: Tensor, base_chosen_mean: Tensor, rejected_mean: Tensor, base_rejected_mean: Tensor
) -> dict[str, float]:
    """``chosen_drift_mean``, ``unlearning_rate`` and ``rejected_drift_mean`` from ``[pairs]`` r(y) values."""
    chosen_drift = chosen_mean - base_chosen_mean
    return {
        "chosen_drift_mean": chosen_drift.mean().item(),
        "unlearning_rate": (chosen_drift < 0).float().mean().item(),
        "rejected_drift_mean": (rejected_mean - base_rejected_mean).mean().item(),
    }


def preference_metrics(
    chosen_logps: Tensor,
    chosen_mask: Tensor,
    rejected_logps: Tensor,
    rejected_mask: Tensor,
    base: LogProbs | None = None,
    ends: tuple[Sequence[bool], Sequence[bool]] | None = None,
) -> dict[str, Any]:
    """Summarize a model's log-probs on held-out pairs, optionally against a base model.

    Args:
        chosen_logps, rejected_logps: ``[pairs, tokens]`` per-token log-probs; values at
            masked positions are ignored whatever they hold.
        chosen_mask, rejected_mask: ``[pairs, tokens]`` bool, True on response tokens.
        base: the same four tensors computed by the base (e.g. SFT) model on the same
            pairs; each response must have the same number of valid tokens.
        ends: two ``[pairs]`` bool sequences, True where the chosen / rejected response ends with
            the end-of-turn token (:func:`slimepo.data.tokenize.ends_with`).

    Returns a JSON-serializable dict::

        pairs, accuracy (fraction with Δ > 0), margin {mean, std, p10, p50, p90} of Δ,
        chosen_logp_mean, rejected_logp_mean (mean over pairs of r, nats/token),
        collapse {rejected_p_lt_1e-4, rejected_p_lt_1e-8 (fractions of all valid
                  rejected tokens with ℓ_t < log p), rejected_min_logp (nats)},
        base  {the keys above for the base model}                  (with ``base``)
        drift {chosen_drift_mean  = mean over pairs of r_model(y_w) − r_base(y_w),
               unlearning_rate    = fraction of pairs with r_model(y_w) < r_base(y_w),
               rejected_drift_mean = mean over pairs of r_model(y_l) − r_base(y_l)}
        end_of_turn {chosen, rejected: end_of_turn_stats}            (with ``ends``,
                     in ``base`` too)

    ``margin.std`` is the population standard deviation (defined for a single pair);
    percentiles interpolate linearly between pairs.
    """
    chosen, rejected = _pair_stats(chosen_logps, chosen_mask, rejected_logps, rejected_mask)
    result: dict[str, Any] = {"pairs": int(chosen.mean.shape[0]), **_summary(chosen, rejected, ends)}
    if base is None:
        return result

    base_chosen, base_rejected = _pair_stats(*base)
    for side, model, reference in (
        ("chosen", chosen, base_chosen),
        ("rejected", rejected, base_rejected),
    ):
        if model.length.shape != reference.length.shape or not torch.equal(
            model.length, reference.length
        ):
            raise ValueError(
                f"base {side} responses must be the same pairs with the same valid token "
                f"counts as the model's; got lengths {reference.length.tolist()} vs "
                f"{model.length.tolist()}"
            )
    result["base"] = _summary(base_chosen, base_rejected, ends)
    result["drift"] = drift_stats(chosen.mean, base_chosen.mean, rejected.mean, base_rejected.mean)
    return result


def _pair_stats(
    chosen_logps: Tensor, chosen_mask: Tensor, rejected_logps: Tensor, rejected_mask: Tensor
) -> tuple[SequenceStats, SequenceStats]:
    chosen = sequence_stats(chosen_logps.detach(), chosen_mask, "chosen")
    rejected = sequence_stats(rejected_logps.detach(), rejected_mask, "rejected")
    if chosen.mean.shape != rejected.mean.shape:
        raise ValueError(
            f"chosen and rejected pair counts differ: {chosen.mean.shape[0]} vs {rejected.mean.shape[0]}"
        )
    return chosen, rejected


def _summary(
    chosen: SequenceStats, rejected: SequenceStats, ends: tuple[Sequence[bool], Sequence[bool]] | None
) -> dict[str, Any]:
    margins = chosen.mean - rejected.mean
    quantiles = torch.quantile(margins, margins.new_tensor([0.1, 0.5, 0.9]))
    collapse = {key: value.item() for key, value in collapse_stats(rejected.logps, rejected.mask).items()}
    summary = {
        "accuracy": (margins > 0).float().mean().item(),
        "margin": {
            "mean": margins.mean().item(),
            "std": margins.std(correction=0).item(),
            "p10": quantiles[0].item(),
            "p50": quantiles[1].item(),
            "p90": quantiles[2].item(),
        },
        "chosen_logp_mean": chosen.mean.mean().item(),
        "rejected_logp_mean": rejected.mean.mean().item(),
        "collapse": collapse,
    }
    if ends is not None:
        summary["end_of_turn"] = {side: end_of_turn_stats(stats.logps, stats.mask, marks)
                                  for side, stats, marks in (("chosen", chosen, ends[0]), ("rejected", rejected, ends[1]))}
    return summary
