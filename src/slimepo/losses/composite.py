"""Weighted sums of losses: an NLL term added to a preference loss, and the recipes built so.

A composition is written ``"dpo,sft=0.2"`` (see :func:`slimepo.losses.parse_loss_spec`) and
means ``L = 1·L_dpo + 0.2·L_sft``, every term computed on the same batch and the same
:class:`~slimepo.losses.base.SequenceStats`. Recipes that are compositions:

- RPO, Pang et al., "Iterative Reasoning Preference Optimization", NeurIPS 2024
  (arXiv:2404.19733): ``L = L_dpo + α·NLL(y_w)`` with α = 1 and the NLL of each winner
  divided by its length (``sft`` with ``reduction="sequence"``). Preset ``rpo``. TRL writes
  it ``loss_type=["sigmoid", "sft"], loss_weights=[1.0, α]`` (formerly ``rpo_alpha``), whose
  NLL is a mean over all chosen tokens of the batch: ``sft`` with ``reduction="batch_tokens"``.
- LLaMA-Factory's ``pref_ftx=γ`` and OpenRLHF's ``nll_loss_coef=γ``: ``"dpo,sft=γ"``
  (their NLL is each response's mean, then over pairs: ``sft``'s default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from slimepo.losses.base import PreferenceLoss


def spec_text(terms: Iterable[tuple[str, float]]) -> str:
    """The spec of ``[(name, weight), ...]``: ``"dpo,sft=0.2"`` (a weight of 1 left out)."""
    return ",".join(name if weight == 1 else f"{name}={_number(weight)}" for name, weight in terms)


def _number(weight: float) -> str:
    """A weight as written: ``3`` for 3.0, else the float's shortest exact form (``0.2``)."""
    return str(int(weight)) if float(weight).is_integer() else repr(float(weight))


class CompositeLoss(PreferenceLoss):
    """``L = Σ_i w_i · L_i`` over named terms, each a registered loss, every ``w_i > 0``.

    ``terms`` maps each term's name (the name it was built from, e.g. ``"dpo"``) to
    ``(w_i, loss_i)``, in order. Inputs are those of every loss: ``chosen_logps`` /
    ``rejected_logps`` float ``[batch, tokens]``, their bool masks, and, when any term needs
    them (``requires_reference``), ``ref_chosen_logps`` / ``ref_rejected_logps`` ``[batch]``
    sums. Each term divides by the same counts, so under a split optimizer step
    (:class:`~slimepo.losses.base.StepTotals`) the parts still sum to the step's loss.

    Metrics: ``loss/<term>/<part>`` for every ``loss/<part>`` a term reports alone
    (unweighted, e.g. ``loss/dpo/sigmoid``, ``loss/sft/nll``), ``loss/total`` = Σ w_i·L_i on
    this batch; rewards, margin and accuracy are the FIRST term's, so a dashboard of
    ``dpo,sft=0.2`` reads as one of ``dpo``.
    """

    name = "composite"
    citation = ""

    def __init__(self, terms: Mapping[str, tuple[float, PreferenceLoss]], name: str | None = None) -> None:
        self.terms = dict(terms)
        self.name = name or spec_text((term, weight) for term, (weight, _) in self.terms.items())
        losses = [loss for _, loss in self.terms.values()]
        self.citation = "; ".join(dict.fromkeys(loss.citation for loss in losses))
        self.requires_reference = any(loss.requires_reference for loss in losses)
        self.__post_init__()

    def validate(self) -> None:
        if not self.terms:
            raise ValueError("a composite loss needs at least one term")
        for term, (weight, loss) in self.terms.items():
            if not isinstance(loss, PreferenceLoss):
                raise TypeError(f"{self.name}: term '{term}' must be a PreferenceLoss, got {type(loss).__name__}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"{self.name}: weight of '{term}' must be a finite number > 0, got {weight!r}")
        keys = {str(sorted(loss.reference_key().items())) for _, loss in self.terms.values() if loss.requires_reference}
        if len(keys) > 1:
            raise ValueError(f"{self.name}: its terms reduce the reference log-probs differently (e.g. ld-dpo with "
                             "dpo); one reference value per response serves them all only when they agree")

    def _reference_term(self) -> PreferenceLoss | None:
        return next((loss for _, loss in self.terms.values() if loss.requires_reference), None)

    def reference_sums(self, chosen_logps, chosen_mask, rejected_logps, rejected_mask):
        term = self._reference_term()
        if term is None:
            return super().reference_sums(chosen_logps, chosen_mask, rejected_logps, rejected_mask)
        return term.reference_sums(chosen_logps, chosen_mask, rejected_logps, rejected_mask)

    def reference_key(self) -> dict[str, Any]:
        term = self._reference_term()
        return {} if term is None else term.reference_key()

    def compute(self, chosen, rejected, ref_chosen, ref_rejected):
        total = 0.0
        parts = {}
        rewards = []  # (chosen [batch], rejected [batch]) of each term; the first term's are reported
        for term, (weight, loss) in self.terms.items():
            value, term_parts, chosen_rewards, rejected_rewards = loss.compute(chosen, rejected, ref_chosen, ref_rejected)
            total = total + weight * value
            parts.update({f"{term}/{part}": v for part, v in term_parts.items()})
            rewards.append((chosen_rewards, rejected_rewards))
        parts["total"] = total
        return total, parts, *rewards[0]

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """None of its own: a composition's hyperparameters are its terms' (see :meth:`hyperparameters`)."""
        return {}

    def hyperparameters(self) -> dict[str, Any]:
        """``{"<term>.weight": w_i, "<term>.<parameter>": value, ...}`` for every term, in order."""
        values: dict[str, Any] = {}
        for term, (weight, loss) in self.terms.items():
            values[f"{term}.weight"] = weight
            values.update({f"{term}.{key}": value for key, value in loss.hyperparameters().items()})
        return values
