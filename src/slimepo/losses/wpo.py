"""WPO: every pair weighted by how likely the current policy is to produce it.

Zhou et al., "WPO: Enhancing RLHF with Weighted Preference Optimization", arXiv:2406.11827
(2024); TRL's ``DPOConfig(use_weighting=True)``. Off-policy pairs (written by other models)
are reweighted to resemble pairs the policy would sample itself.

For a response y to x, with ``ℓ_t = log π(y_t | x, y_<t)`` and ``log Σ_v π(v | x, y_<t)²``
over the whole vocabulary at each of its positions (the log-prob head computes it in its
chunks, :func:`slimepo.logprobs.pair_token_logps` with ``log_sum_sq=True``)::

    w(x, y) = exp( (1/|y|) Σ_t [ ℓ_t − log Σ_v π(v | x, y_<t)² ] )
    ω_i     = min(1, w(x_i, y_w,i) · w(x_i, y_l,i)),  a constant (no gradient flows through it)
    L       = Σ_i d_i·ω_i·L_i / Σ_i d_i

where ``L_i`` is the wrapped loss's term of pair i and ``d_i`` the pair's data weight
(``--weight-column``; all 1 without: ``L = (1/B) Σ_i ω_i·L_i``). Every term of pair i, its
tokens' share of a token mean too, is multiplied by ω_i; the counts stay those without
WPO, so the loss shrinks with ω instead of being renormalized (as in the paper and TRL).

Dividing each token's probability by ``Σ_v π(v)² = E_{v∼π} π(v)`` (the chance that two
samples of the position agree) is the paper's "sampled alignment": over tokens the policy
samples itself the ratio has mean 1, whatever the entropy of the position, so on-policy
pairs weigh about alike. The clamp at 1 is the authors' code's (github.com/wzhouad/WPO,
``scripts/run_wpo.py``) and TRL's from 0.12 to 0.28; TRL 0.29 and later do not clamp
(``WpoWeighted(loss, clamp=False)``, ``--no-wpo-clamp``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slimepo.losses.base import LossOutput, PreferenceLoss, StepTotals

CITATION = "WPO weighting: Zhou et al., arXiv:2406.11827 (2024)"


def log_policy_weight(logps: Tensor, mask: Tensor, log_sum_sq: Tensor) -> Tensor:
    """``log w(x, y)`` of each response, ``[batch]`` fp32, detached: the mean over its valid
    tokens of ``ℓ_t − log Σ_v π(v)²``. ``logps``, ``log_sum_sq``: ``[batch, tokens]``
    (anything where ``mask`` is False); ``mask``: bool ``[batch, tokens]``."""
    if log_sum_sq.shape != mask.shape:
        raise ValueError(f"log_sum_sq must be [batch, tokens]={tuple(mask.shape)} like the mask, got {tuple(log_sum_sq.shape)}")
    with torch.no_grad():
        aligned = torch.where(mask, logps.float() - log_sum_sq.float(), torch.zeros((), device=logps.device))
        return aligned.sum(-1) / mask.sum(-1)


def wpo_pair_weights(
    chosen_logps: Tensor, chosen_mask: Tensor, chosen_log_sum_sq: Tensor,
    rejected_logps: Tensor, rejected_mask: Tensor, rejected_log_sum_sq: Tensor, clamp: bool = True,
) -> Tensor:
    """``ω_i = min(1, w(x_i, y_w,i)·w(x_i, y_l,i))`` of each pair, ``[batch]`` fp32, detached;
    without ``clamp``, the product itself (TRL 0.29 and later)."""
    log_weight = log_policy_weight(chosen_logps, chosen_mask, chosen_log_sum_sq) + log_policy_weight(
        rejected_logps, rejected_mask, rejected_log_sum_sq)
    weight = torch.exp(log_weight)
    return weight.clamp(max=1.0) if clamp else weight


class WpoWeighted(PreferenceLoss):
    """Any loss on pairs with WPO's per-pair weights ω_i (see the module docstring).

    Takes, besides the wrapped loss's inputs, ``chosen_log_sum_sq`` / ``rejected_log_sum_sq``
    ``[batch, tokens]``: ``log Σ_v π(v)²`` at each response position under the policy (the
    trainer asks the log-prob head for it, ``requires_log_sum_sq``). Reports the wrapped
    loss's metrics, whose ``loss/<term>`` are WPO-weighted like the loss, and ``wpo/weight``,
    the batch's mean ω. ``clamp=False`` leaves ω = w(y_w)·w(y_l) unclamped (TRL 0.29 and later).
    """

    requires_log_sum_sq = True

    def __init__(self, loss: PreferenceLoss, clamp: bool = True) -> None:
        if not isinstance(loss, PreferenceLoss) or isinstance(loss, WpoWeighted):
            raise TypeError(f"WPO weighs a loss on preference pairs once; got {type(loss).__name__}")
        self.loss = loss
        self.clamp = clamp
        self.name = f"{loss.name}+wpo"
        self.citation = f"{loss.citation}; {CITATION}"
        self.requires_reference = loss.requires_reference
        self.__post_init__()

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
        *,
        chosen_log_sum_sq: Tensor | None = None,
        rejected_log_sum_sq: Tensor | None = None,
    ) -> LossOutput:
        if chosen_log_sum_sq is None or rejected_log_sum_sq is None:
            raise ValueError(f"loss '{self.name}' needs chosen_log_sum_sq and rejected_log_sum_sq: log Σ_v π(v)² at "
                             "each response token ([batch, tokens]), from pair_token_logps(..., log_sum_sq=True)")
        omega = wpo_pair_weights(chosen_logps, chosen_mask, chosen_log_sum_sq,
                                 rejected_logps, rejected_mask, rejected_log_sum_sq, clamp=self.clamp)
        out = self.loss(chosen_logps, chosen_mask, rejected_logps, rejected_mask, ref_chosen_logps, ref_rejected_logps,
                        step_totals=step_totals, weights=weights, pair_factors=omega)
        out.metrics["wpo/weight"] = omega.mean()
        return out

    def reference_sums(self, chosen_logps, chosen_mask, rejected_logps, rejected_mask):
        return self.loss.reference_sums(chosen_logps, chosen_mask, rejected_logps, rejected_mask)

    def reference_key(self) -> dict[str, Any]:
        return self.loss.reference_key()

    def compiled(self) -> WpoWeighted:
        self.loss.compiled()
        return self

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """None of its own: the wrapped loss's are in :meth:`hyperparameters`."""
        return {}

    def hyperparameters(self) -> dict[str, Any]:
        return {**self.loss.hyperparameters(), "wpo": True, "wpo_clamp": self.clamp}
