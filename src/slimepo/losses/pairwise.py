"""The baselines SLIME is measured against, on the same inputs and code path.

Notation: ``π(y) = Σ_t ℓ_t`` the summed log-likelihood of a response under the policy,
``π_ref(y)`` the same under the reference model (given as ``[batch]`` sums),
``r(y) = π(y)/|y|`` the length-normalized log-likelihood, σ the logistic function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from slimepo.losses.base import PreferenceLoss, SequenceStats, param

NLL_REDUCTIONS = ("sequence", "batch_tokens")


def chosen_token_nll(chosen: SequenceStats) -> Tensor:
    """Mean negative log-likelihood over all chosen tokens of the batch (TRL's cross-entropy)."""
    return -chosen.token_mean(chosen.logps)


@dataclass
class SftLoss(PreferenceLoss):
    """Supervised fine-tuning on the chosen responses only: their negative log-likelihood (NLL).

    Two per-token means, which differ when the chosen responses differ in length::

        L = −mean_pairs r(y_w) = −(1/B) Σ_pairs (1/|y_w|) Σ_t ℓ_t     reduction="sequence"
          = −Σ_pairs Σ_t ℓ_t / Σ_pairs |y_w|                          reduction="batch_tokens"

    ``sequence`` (default) weighs every response the same: the NLL of Pang et al.'s RPO
    (arXiv:2404.19733, each winner's NLL divided by its length), LLaMA-Factory's ``pref_ftx``
    and OpenRLHF's ``nll_loss_coef`` terms. ``batch_tokens`` weighs every token the same:
    TRL's ``sft`` loss type (one cross-entropy over all chosen tokens of the batch) and the
    NLL of CPO and ORPO here. Under a split step both divide by the whole step's pairs or
    chosen tokens. Rewards are ``r(y_w)``, ``r(y_l)``.
    """

    name = "sft"
    citation = "maximum likelihood on the chosen responses"

    reduction: str = param(
        "sequence",
        "sequence (mean NLL of each response, then over pairs) | batch_tokens (mean over all chosen tokens, as TRL's sft)",
        choices=NLL_REDUCTIONS,
    )

    def validate(self) -> None:
        if self.reduction not in NLL_REDUCTIONS:
            raise ValueError(f"sft: reduction must be one of {', '.join(NLL_REDUCTIONS)}; got {self.reduction!r}")

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        if self.reduction == "sequence":
            nll = -chosen.pair_mean(chosen.mean)
        else:
            nll = chosen_token_nll(chosen)
        return nll, {"nll": nll}, chosen.mean, rejected.mean


@dataclass
class DpoLoss(PreferenceLoss):
    """DPO, sigmoid form with conservative label smoothing (cDPO).

    Rafailov et al., "Direct Preference Optimization", NeurIPS 2023; label smoothing
    after Mitchell (2023), "A note on DPO with noisy preferences".

    ``h = β [(π(y_w) − π_ref(y_w)) − (π(y_l) − π_ref(y_l))]``,
    ``L = −(1−ε) log σ(h) − ε log σ(−h)``.
    Rewards: ``β (π(y) − π_ref(y))``.
    """

    name = "dpo"
    citation = "Rafailov et al., NeurIPS 2023 (arXiv:2305.18290)"
    requires_reference = True

    beta: float = param(0.1, "β, inverse temperature of the implicit reward")
    label_smoothing: float = param(0.0, "ε in [0, 0.5), assumed probability that a label is flipped")

    def validate(self) -> None:
        self._check_positive("beta")  # β = 0 makes every pair's loss log 2: nothing trains
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"{self.name}: label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")

    def log_ratios(
        self, chosen: SequenceStats, rejected: SequenceStats, ref_chosen: Tensor, ref_rejected: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(π(y_w) − π_ref(y_w), π(y_l) − π_ref(y_l))``, each ``[batch]``."""
        return chosen.sum - ref_chosen, rejected.sum - ref_rejected

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        chosen_ratio, rejected_ratio = self.log_ratios(chosen, rejected, ref_chosen, ref_rejected)
        chosen_rewards = self.beta * chosen_ratio
        rejected_rewards = self.beta * rejected_ratio
        h = chosen_rewards - rejected_rewards
        eps = self.label_smoothing
        loss = chosen.pair_mean(-(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h))
        return loss, {"sigmoid": loss}, chosen_rewards, rejected_rewards


@dataclass
class DpoNormLoss(DpoLoss):
    """Length-normalized DPO: DPO on per-token mean log-ratios, with a reference.

    Lambert et al., "Tülu 3: Pushing Frontiers in Open Language Model Post-Training",
    arXiv:2411.15124 (open-instruct's ``dpo_norm``, TRL's ``sigmoid_norm``); first ablated as
    "DPO w/ LN" in the SimPO paper (Meng et al., NeurIPS 2024).

    ``h = β [(r(y_w) − π_ref(y_w)/|y_w|) − (r(y_l) − π_ref(y_l)/|y_l|)]``,
    ``L = −(1−ε) log σ(h) − ε log σ(−h)``. Rewards: ``β (r(y) − π_ref(y)/|y|)``.
    The reference log-probs arrive as per-sequence sums ``[batch]``; each is divided by the
    length |y| of its response's mask, as the policy's is. β = 5 is Tülu 3's (open-instruct
    ``scripts/train/tulu3/dpo_8b.sh``: ``--dpo_loss_type dpo_norm --dpo_beta 5``); TRL's
    ``sigmoid_norm`` keeps DPO's default β = 0.1.
    """

    name = "dpo-norm"
    citation = "Lambert et al., Tülu 3, arXiv:2411.15124 (2024); Meng et al., NeurIPS 2024 (arXiv:2405.14734)"

    beta: float = param(5.0, "β, inverse temperature of the per-token implicit reward (Tülu 3 uses 5)")

    def log_ratios(self, chosen, rejected, ref_chosen, ref_rejected):
        """``(r(y_w) − π_ref(y_w)/|y_w|, r(y_l) − π_ref(y_l)/|y_l|)``, each ``[batch]``."""
        return chosen.mean - ref_chosen / chosen.length, rejected.mean - ref_rejected / rejected.length


def length_desensitized_sums(
    chosen_logps: Tensor, chosen_mask: Tensor, rejected_logps: Tensor, rejected_mask: Tensor, alpha: float,
) -> tuple[Tensor, Tensor]:
    """LD-DPO's log-likelihoods of a pair ``([batch], [batch])``: the tokens of each response up to
    the shorter response's length ``l_p = min(|y_w|, |y_l|)`` count fully, the tokens past it
    weigh ``alpha``: ``Σ_{t ≤ l_p} ℓ_t + α Σ_{t > l_p} ℓ_t``. Positions count the response's own
    tokens in order (its mask), in any layout; masked-out positions may hold anything."""
    shared = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1))[:, None]
    zero = torch.zeros((), dtype=torch.float32, device=chosen_logps.device)

    def weighted(logps: Tensor, mask: Tensor) -> Tensor:
        rank = mask.long().cumsum(-1)  # 1 at the response's first token
        weight = torch.where(rank <= shared, torch.ones((), device=logps.device), torch.full((), float(alpha)))
        return torch.where(mask, logps.float() * weight, zero).sum(-1)

    return weighted(chosen_logps, chosen_mask), weighted(rejected_logps, rejected_mask)


@dataclass
class LdDpoLoss(DpoLoss):
    """LD-DPO: DPO on length-desensitized log-likelihoods.

    Liu et al., "Length Desensitization in Direct Preference Optimization", arXiv:2409.06411
    (2024); TRL's ``ld_alpha``.

    With ``l_p = min(|y_w|, |y_l|)`` and ``π̂(y) = Σ_{t ≤ l_p} log π(y_t|·) + α Σ_{t > l_p} log π(y_t|·)``
    (the same for the reference, ``π̂_ref``):
    ``h = β [(π̂(y_w) − π̂_ref(y_w)) − (π̂(y_l) − π̂_ref(y_l))]``, ``L = −(1−ε) log σ(h) − ε log σ(−h)``.
    Rewards: ``β (π̂(y) − π̂_ref(y))``. ``α = 1`` is DPO; ``α → 0`` keeps only the shared-length
    prefix, so the longer response's surplus tokens cannot carry the margin. The reference's
    π̂ comes from :meth:`reference_sums` (per-token reference log-probs reduced the same way),
    once per step or once per pair with ``--precompute-ref-logps``. TRL leaves ``ld_alpha`` unset
    (plain DPO); 0.5 here is a middle value, not the paper's: tune it per model.
    """

    name = "ld-dpo"
    citation = "Liu et al., arXiv:2409.06411 (2024)"

    alpha: float = param(0.5, "α in [0, 1], weight of the tokens past the shorter response's length (1: DPO)")

    def validate(self) -> None:
        super().validate()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"{self.name}: alpha must be a number in [0, 1], got {self.alpha!r}")

    def log_ratios(self, chosen, rejected, ref_chosen, ref_rejected):
        """``(π̂(y_w) − π̂_ref(y_w), π̂(y_l) − π̂_ref(y_l))``, each ``[batch]``."""
        policy_chosen, policy_rejected = length_desensitized_sums(
            chosen.logps, chosen.mask, rejected.logps, rejected.mask, self.alpha)
        return policy_chosen - ref_chosen, policy_rejected - ref_rejected

    def reference_sums(self, chosen_logps, chosen_mask, rejected_logps, rejected_mask):
        return length_desensitized_sums(chosen_logps, chosen_mask, rejected_logps, rejected_mask, self.alpha)

    def reference_key(self) -> dict[str, Any]:
        return {"length_desensitized_alpha": float(self.alpha)}


@dataclass
class IpoLoss(PreferenceLoss):
    """IPO, the squared-loss ΨPO with identity Ψ.

    Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", AISTATS 2024.

    ``h = (π(y_w) − π_ref(y_w)) − (π(y_l) − π_ref(y_l))``, ``L = (h − 1/(2τ))²``.
    With ``length_normalized`` the log-ratios are divided by each response's length
    (TRL's choice). Rewards: ``τ (π(y) − π_ref(y))``.
    """

    name = "ipo"
    citation = "Azar et al., AISTATS 2024 (arXiv:2310.12036)"
    requires_reference = True

    tau: float = param(0.1, "τ, regularization strength; the target log-ratio gap is 1/(2τ)")
    length_normalized: bool = param(False, "divide each log-ratio by its response length (as TRL does)")

    def validate(self) -> None:
        self._check_positive("tau")  # the target gap is 1/(2τ)

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        chosen_ratio = chosen.sum - ref_chosen
        rejected_ratio = rejected.sum - ref_rejected
        if self.length_normalized:
            chosen_ratio = chosen_ratio / chosen.length
            rejected_ratio = rejected_ratio / rejected.length
        h = chosen_ratio - rejected_ratio
        loss = chosen.pair_mean((h - 1 / (2 * self.tau)) ** 2)
        return loss, {"squared": loss}, self.tau * chosen_ratio, self.tau * rejected_ratio


@dataclass
class HingeLoss(PreferenceLoss):
    """Hinge on the reference-normalized likelihood gap (SLiC-HF calibration, RSO's hinge).

    Zhao et al., "SLiC-HF", arXiv:2305.10425; Liu et al., "Statistical Rejection Sampling
    Improves Preference Optimization" (RSO), ICLR 2024.

    ``h = (π(y_w) − π_ref(y_w)) − (π(y_l) − π_ref(y_l))``, ``L = max(0, 1 − β h)``.
    Rewards: ``β (π(y) − π_ref(y))``.
    """

    name = "hinge"
    citation = "Zhao et al. 2023 (arXiv:2305.10425); Liu et al., ICLR 2024 (arXiv:2309.06657)"
    requires_reference = True

    beta: float = param(0.1, "β, scale of the log-ratio gap; the hinge acts until β h reaches 1")

    def validate(self) -> None:
        self._check_positive("beta")  # β = 0 holds the loss at 1 with no gradient

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        chosen_rewards = self.beta * (chosen.sum - ref_chosen)
        rejected_rewards = self.beta * (rejected.sum - ref_rejected)
        loss = chosen.pair_mean(F.relu(1 - (chosen_rewards - rejected_rewards)))
        return loss, {"hinge": loss}, chosen_rewards, rejected_rewards


@dataclass
class SimpoLoss(PreferenceLoss):
    """SimPO, reference-free with a length-normalized reward and a target margin.

    Meng, Xia & Chen, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", NeurIPS 2024.

    ``L = −log σ(β r(y_w) − β r(y_l) − γ)``. Rewards: ``β r(y)``.
    Defaults β = 2.0, γ = 1.0 (γ/β = 0.5) lie in the paper's recommended ranges. TRL's
    CPOTrainer takes γ itself as ``simpo_gamma`` (default 0.5, with β = 0.1).
    """

    name = "simpo"
    citation = "Meng et al., NeurIPS 2024 (arXiv:2405.14734)"

    beta: float = param(2.0, "β, scale of the length-normalized reward")
    gamma: float = param(1.0, "γ, target reward margin (TRL's simpo_gamma)")
    label_smoothing: float = param(0.0, "ε in [0, 0.5), as in DPO's conservative variant")

    def validate(self) -> None:
        self._check_positive("beta")  # β = 0 leaves a constant loss: nothing trains
        self._check_nonnegative("gamma")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"simpo: label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        chosen_rewards = self.beta * chosen.mean
        rejected_rewards = self.beta * rejected.mean
        h = chosen_rewards - rejected_rewards - self.gamma
        eps = self.label_smoothing
        loss = chosen.pair_mean(-(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h))
        return loss, {"sigmoid": loss}, chosen_rewards, rejected_rewards


@dataclass
class CpoLoss(PreferenceLoss):
    """CPO, a reference-free sigmoid preference loss plus an NLL regularizer.

    Xu et al., "Contrastive Preference Optimization", ICML 2024.

    ``L = −mean_pairs log σ(β π(y_w) − β π(y_l)) + α · NLL(y_w)`` where NLL is the mean
    negative log-likelihood over all chosen tokens of the batch (as in TRL).
    Rewards: ``β π(y)``.
    """

    name = "cpo"
    citation = "Xu et al., ICML 2024 (arXiv:2401.08417)"

    beta: float = param(0.1, "β, scale of the summed log-likelihood reward")
    alpha: float = param(1.0, "α, weight of the NLL term on chosen tokens")

    def validate(self) -> None:
        self._check_nonnegative("beta", "alpha")

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        chosen_rewards = self.beta * chosen.sum
        rejected_rewards = self.beta * rejected.sum
        prefer = -chosen.pair_mean(F.logsigmoid(chosen_rewards - rejected_rewards))
        nll = chosen_token_nll(chosen)
        loss = prefer + self.alpha * nll
        return loss, {"sigmoid": prefer, "nll": nll}, chosen_rewards, rejected_rewards


def log_odds(mean_logp: Tensor) -> Tensor:
    """``log(P / (1 − P))`` for ``P = exp(r)``, stable for r ≤ 0.

    r is clamped just below 0 so that a response of probability 1 gives a large finite
    log-odds instead of +inf. ``log(1 − e^r)`` uses ``log(−expm1(r))`` near 0 and
    ``log1p(−e^r)`` far from it.
    """
    r = mean_logp.clamp(max=-1e-6)
    log1m_exp = torch.where(r > -0.6931, torch.log(-torch.expm1(r)), torch.log1p(-torch.exp(r)))
    return r - log1m_exp


@dataclass
class OrpoLoss(PreferenceLoss):
    """ORPO, monolithic preference optimization with an odds-ratio term.

    Hong, Lee & Thorne, "ORPO: Monolithic Preference Optimization without Reference
    Model", EMNLP 2024.

    ``odds(y) = P(y)/(1 − P(y))`` with ``P(y) = exp(r(y))``;
    ``L = NLL(y_w) − λ · mean_pairs log σ(log odds(y_w) − log odds(y_l))``
    with NLL the mean over all chosen tokens of the batch. Rewards: ``λ r(y)`` (as TRL).
    """

    name = "orpo"
    citation = "Hong et al., EMNLP 2024 (arXiv:2403.07691)"

    lam: float = param(0.1, "λ, weight of the odds-ratio term (TRL's beta)")

    def validate(self) -> None:
        self._check_nonnegative("lam")

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        ratio = log_odds(chosen.mean) - log_odds(rejected.mean)
        odds_ratio = -chosen.pair_mean(F.logsigmoid(ratio))
        nll = chosen_token_nll(chosen)
        loss = nll + self.lam * odds_ratio
        return loss, {"nll": nll, "odds_ratio": odds_ratio}, self.lam * chosen.mean, self.lam * rejected.mean
