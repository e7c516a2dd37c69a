"""SLIME: Stabilized Likelihood Implicit Margin Enforcement.

Iov & Afanasyev, "SLIME: Stabilized Likelihood Implicit Margin Enforcement for
Preference Optimization", arXiv:2602.02383 (2026).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from slimepo.losses.base import PreferenceLoss, SequenceStats, param

MARGIN_MODES = ("dual", "hard", "soft")
STABILIZER_REDUCTIONS = ("batch_tokens", "sequence")


@dataclass
class SlimeLoss(PreferenceLoss):
    """SLIME, reference-free, in the notation of ``shared/PAPER.md``.

    Per pair, with ``r(y) = (1/|y|) Σ_t ℓ_t`` and ``Δ = r(y_w) − r(y_l)``::

        L_margin = λ_m · max(0, m_h − Δ) · σ(−k (Δ − m_s))       margin_mode="dual"
                 = λ_m · max(0, m_h − Δ)                          margin_mode="hard"
                 = λ_m · softplus(−k (Δ − m_s)) / k               margin_mode="soft"
        L_anchor = −λ_w · r(y_w)

    Over the batch's valid rejected tokens ``t`` (from ``rejected_mask``, never from the
    value of ``ℓ_t``)::

        φ(ℓ_t) = softplus(−ℓ_t − δ)^p
        L_stab = λ_l · mean_t φ(ℓ_t)                 stabilizer_reduction="batch_tokens"
               = λ_l · mean_pairs mean_{t∈y_l} φ(ℓ_t)   stabilizer_reduction="sequence"

    Total: ``L = mean_pairs(L_margin + L_anchor) + L_stab``. Under a split optimizer step the
    means run over the whole step (see :class:`~slimepo.losses.base.StepTotals`).

    Rewards are ``r(y_w)`` and ``r(y_l)``; the margin metric is Δ.

    Inputs: ``chosen_logps``/``rejected_logps`` float ``[batch, tokens]``,
    ``chosen_mask``/``rejected_mask`` bool ``[batch, tokens]``.
    """

    name = "slime"
    citation = "Iov & Afanasyev, arXiv:2602.02383 (2026)"

    margin_weight: float = param(1.0, "λ_m, weight of the margin term")
    hard_margin: float = param(1.5, "m_h, hinge of the margin term (nats/token)")
    soft_margin: float = param(1.0, "m_s, centre of the sigmoid gate (nats/token)")
    gate_slope: float = param(2.5, "k, slope of the sigmoid gate (fixed to 2.5 in the authors' code)")
    anchor_weight: float = param(0.1, "λ_w, weight of the chosen-likelihood anchor")
    stabilizer_weight: float = param(5e-4, "λ_l, weight of the rejected-token stabilizer")
    stabilizer_shift: float = param(1.25, "δ, the stabilizer acts on tokens with p below about e^-δ")
    stabilizer_power: float = param(2.5, "p, exponent of the stabilizer (fixed to 2.5 in the authors' code)")
    margin_mode: str = param("dual", "dual (hinge x gate) | hard (hinge only) | soft (smooth softplus)", choices=MARGIN_MODES)
    stabilizer_reduction: str = param(
        "batch_tokens",
        "batch_tokens (mean over all rejected tokens of the batch, as the authors) | sequence (per response, then over pairs)",
        choices=STABILIZER_REDUCTIONS,
    )

    def validate(self) -> None:
        self._check_nonnegative("margin_weight", "anchor_weight", "stabilizer_weight")
        if self.gate_slope <= 0:
            raise ValueError(f"slime: gate_slope must be > 0, got {self.gate_slope!r}")
        if self.stabilizer_power < 1:
            raise ValueError(f"slime: stabilizer_power must be >= 1, got {self.stabilizer_power!r}")
        if self.margin_mode not in MARGIN_MODES:
            raise ValueError(f"slime: margin_mode must be one of {', '.join(MARGIN_MODES)}; got {self.margin_mode!r}")
        if self.stabilizer_reduction not in STABILIZER_REDUCTIONS:
            raise ValueError(
                f"slime: stabilizer_reduction must be one of {', '.join(STABILIZER_REDUCTIONS)}; "
                f"got {self.stabilizer_reduction!r}"
            )

    def margin_term(self, delta: Tensor) -> Tensor:
        """L_margin per pair, ``[batch]``."""
        k = self.gate_slope
        if self.margin_mode == "soft":
            return self.margin_weight * F.softplus(-k * (delta - self.soft_margin)) / k
        # relu, not clamp: its gradient is exactly 0 at Δ = m_h, clamp's is not.
        hinge = F.relu(self.hard_margin - delta)
        if self.margin_mode == "hard":
            return self.margin_weight * hinge
        return self.margin_weight * hinge * torch.sigmoid(-k * (delta - self.soft_margin))

    def stabilizer_term(self, rejected: SequenceStats) -> Tensor:
        """L_stab, a scalar; φ is evaluated on valid rejected tokens only."""
        phi = F.softplus(-rejected.logps - self.stabilizer_shift).pow(self.stabilizer_power)
        phi = torch.where(rejected.mask, phi, torch.zeros_like(phi))
        if self.stabilizer_reduction == "batch_tokens":
            reduced = rejected.token_mean(phi)
        else:
            reduced = rejected.pair_mean(phi.sum(-1) / rejected.length)
        return self.stabilizer_weight * reduced

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        delta = chosen.mean - rejected.mean
        margin = chosen.pair_mean(self.margin_term(delta))
        anchor = -self.anchor_weight * chosen.pair_mean(chosen.mean)
        stabilizer = self.stabilizer_term(rejected)
        loss = margin + anchor + stabilizer
        terms = {"margin": margin, "anchor": anchor, "stabilizer": stabilizer}
        return loss, terms, chosen.mean, rejected.mean
