"""Drift and collapse from per-token log-probs: the two failures SLIME claims to fix. Torch only.

One definition each, used by training (logged metrics, the stability monitor) and by
evaluation (``eval.json``):

- *collapse*: the share of valid rejected tokens whose probability fell below a
  threshold (``ℓ_t < log p``), and the lowest rejected token log-prob (nats);
- *drift*: per pair, ``r_model(y) − r_base(y)`` with ``r(y) = (1/|y|) Σ_t ℓ_t``
  (nats/token); the *unlearning rate* is the share of pairs whose chosen drift is < 0.
"""

from __future__ import annotations

import math

from torch import Tensor

#: A rejected token "collapses" below this probability (PAPER.md's formatting collapse).
COLLAPSE_PROB = 1e-4
#: Thresholds of the collapse fractions: key suffix -> probability.
COLLAPSE_THRESHOLDS: dict[str, float] = {"1e-4": COLLAPSE_PROB, "1e-8": 1e-8}


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
