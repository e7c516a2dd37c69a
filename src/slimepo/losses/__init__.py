"""Preference losses from per-token log-probabilities. Imports torch only.

>>> from slimepo.losses import get_loss
>>> loss_fn = get_loss("slime", anchor_weight=0.2)
>>> out = loss_fn(chosen_logps, chosen_mask, rejected_logps, rejected_mask)
>>> out.loss.backward(); out.metrics["loss/stabilizer"]

A weighted sum of losses is a spec, ``get_loss("dpo,sft=0.2", dpo={"beta": 0.2})``: see
:func:`parse_loss_spec` and :class:`CompositeLoss`. ``get_loss("kto")`` is a loss on unpaired
examples (:class:`UnpairedLoss`, its own inputs), which stands alone in a spec.
``WpoWeighted(get_loss("dpo"))`` weighs any loss on pairs by WPO's per-pair weights
(:mod:`slimepo.losses.wpo`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from slimepo.losses.base import (
    LossOutput,
    PreferenceLoss,
    SequenceStats,
    StepTotals,
    sequence_stats,
)
from slimepo.losses.composite import CompositeLoss, spec_text
from slimepo.losses.kto import KlTotals, KtoLoss, UnpairedLoss
from slimepo.losses.pairwise import (
    CpoLoss,
    DpoLoss,
    DpoNormLoss,
    HingeLoss,
    IpoLoss,
    LdDpoLoss,
    OrpoLoss,
    SftLoss,
    SimpoLoss,
)
from slimepo.losses.slime import SlimeLoss
from slimepo.losses.wpo import WpoWeighted, wpo_pair_weights

_CLASSES: dict[str, type[PreferenceLoss]] = {
    cls.name: cls
    for cls in (SlimeLoss, SftLoss, DpoLoss, DpoNormLoss, LdDpoLoss, IpoLoss, HingeLoss, SimpoLoss, CpoLoss,
                OrpoLoss)
}

#: Losses on unpaired examples (prompt, completion, label), each of its own class.
_UNPAIRED_CLASSES: dict[str, type[UnpairedLoss]] = {cls.name: cls for cls in (KtoLoss,)}

#: Named losses: ``name -> (spec, parameter overrides)``, built as ``get_loss(spec, **overrides)``.
#: A spec naming one loss class takes that class's hyperparameters; a composition's overrides
#: are keyed by term. Ablations of PAPER.md and recipes of other papers are presets too.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "slime": ("slime", {}),  # the authors' training-script values (SlimeLoss defaults)
    "slime-config": ("slime", {"anchor_weight": 0.8, "stabilizer_shift": 0.5}),  # their config class
    "slime-no-anchor": ("slime", {"anchor_weight": 0.0}),
    "slime-no-stabilizer": ("slime", {"stabilizer_weight": 0.0}),
    "slime-hard": ("slime", {"margin_mode": "hard"}),
    "slime-soft": ("slime", {"margin_mode": "soft"}),
    **{name: (name, {}) for name in _CLASSES if name != "slime"},
    # Pang et al., NeurIPS 2024: DPO + α·NLL(y_w) with α = 1 and each winner's NLL divided by its
    # length; β = 0.1 is DPO's default here and TRL's. Written out: the recipe outlives the defaults.
    "rpo": ("dpo,sft", {"dpo": {"beta": 0.1}, "sft": {"reduction": "sequence"}}),
    **{name: (name, {}) for name in _UNPAIRED_CLASSES},
}

#: Every name of a loss on preference pairs that ``get_loss`` accepts alone (a composition of
#: them is a spec, not a name).
LOSSES: tuple[str, ...] = tuple(name for name in PRESETS if PRESETS[name][0] not in _UNPAIRED_CLASSES)
#: Every name of a loss on unpaired examples (:class:`UnpairedLoss`).
UNPAIRED_LOSSES: tuple[str, ...] = tuple(name for name in PRESETS if PRESETS[name][0] in _UNPAIRED_CLASSES)


def _is_composition(name: str) -> bool:
    return PRESETS[name][0] not in _CLASSES and PRESETS[name][0] not in _UNPAIRED_CLASSES


def loss_class(name: str) -> type[PreferenceLoss] | type[UnpairedLoss]:
    """The class behind a loss or preset name (:class:`CompositeLoss` for a composition)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, tuple(PRESETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown loss '{name}'{hint}; valid losses: {', '.join(PRESETS)}")
    if _is_composition(name):
        return CompositeLoss
    return _UNPAIRED_CLASSES.get(PRESETS[name][0]) or _CLASSES[PRESETS[name][0]]


def is_unpaired(spec: str | Sequence[Any] | Mapping[str, Any]) -> bool:
    """Whether the loss ``spec`` names trains on unpaired examples (``kto``) rather than on pairs."""
    terms = parse_loss_spec(spec)
    return issubclass(loss_class(terms[0][0]), UnpairedLoss)


def _split_term(term: str) -> tuple[str, Any]:
    """``"name=weight"`` at its last ``=`` (names hold hyphens), or ``"name"`` of weight 1."""
    name, sep, weight = term.rpartition("=")
    return (name, weight) if sep else (weight, 1.0)


def _weight(spec: Any, name: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"loss spec {spec!r}: weight of '{name}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"loss spec {spec!r}: weight of '{name}' must be a finite number > 0, got {value!r}")
    return float(value)


def parse_loss_spec(spec: str | Sequence[str | Mapping[str, Any]] | Mapping[str, Any]) -> list[tuple[str, float]]:
    """The terms ``[(name, weight), ...]`` of a loss spec, in order; each name is in :data:`LOSSES`.

    - a string: ``"dpo"`` (weight 1), ``"dpo,sft=0.2"``, ``"dpo=1, sft=0.2"``; terms split
      on commas, each at its LAST ``=`` (names hold hyphens: ``slime-no-anchor=0.5``);
    - a list (YAML) of names, ``"name=weight"`` strings or one-key mappings ``{sft: 0.2}``;
    - a mapping ``{dpo: 1, sft: 0.2}``.

    Raises ``ValueError`` for an empty spec or term, an unknown name (suggesting the closest),
    a name twice, a weight that is not a finite number > 0, or a composition preset
    (``rpo``) inside a composition.
    """
    if isinstance(spec, str) and not spec.strip():
        raise ValueError("loss spec is empty: name at least one loss")
    if isinstance(spec, str):
        items = [_split_term(term) for term in spec.split(",")]
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, Sequence):
        items = []
        for item in spec:
            if isinstance(item, str) and "," not in item:
                items.append(_split_term(item))
            elif isinstance(item, Mapping) and len(item) == 1:
                items.extend(item.items())
            else:
                raise ValueError(f"loss spec {spec!r}: each item must be a name or a one-key mapping {{name: weight}}, got {item!r}")
    else:
        raise ValueError(f"loss spec must be a string, a list or a mapping, got {spec!r}")
    terms: list[tuple[str, float]] = []
    for name, weight in items:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"loss spec {spec!r}: a term has no loss name")
        name = name.strip()
        loss_class(name)  # an unknown name gets the registry's message
        if any(name == seen for seen, _ in terms):
            raise ValueError(f"loss spec {spec!r}: '{name}' is given twice; give each loss once, with one weight")
        terms.append((name, _weight(spec, name, weight)))
    if not terms:
        raise ValueError("loss spec is empty: name at least one loss")
    unpaired = [name for name, _ in terms if PRESETS[name][0] in _UNPAIRED_CLASSES]
    if unpaired and terms != [(unpaired[0], 1.0)]:
        raise ValueError(
            f"loss spec {spec!r}: '{unpaired[0]}' trains on unpaired examples (prompt, completion, label) and "
            "stands alone: it cannot be weighted or added to a loss on preference pairs"
        )
    nested = [name for name, _ in terms if _is_composition(name)]
    if nested and terms != [(nested[0], 1.0)]:
        raise ValueError(
            f"loss spec {spec!r}: '{nested[0]}' is itself a composition ({PRESETS[nested[0]][0]}); "
            "write its terms out instead"
        )
    return terms


def _single(name: str, params: Mapping[str, Any], within: str | None = None) -> PreferenceLoss | UnpairedLoss:
    cls = loss_class(name)
    valid = cls.parameters()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        allowed = ", ".join(valid) if valid else "none"
        where = f" (a term of '{within}')" if within else ""
        raise ValueError(f"loss '{name}'{where} has no parameter(s) {', '.join(unknown)}; valid parameters: {allowed}")
    return cls(**{**PRESETS[name][1], **params})


def _composite(terms: list[tuple[str, float]], params: Mapping[str, Any], name: str | None = None) -> CompositeLoss:
    names = [term for term, _ in terms]
    label = name or spec_text(terms)
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ValueError(
            f"loss '{label}' is a composition of {', '.join(names)}: its parameters are given per term, "
            f"e.g. {names[0]}={{...}}; it has no term {', '.join(unknown)}"
        )
    for term, overrides in params.items():
        if not isinstance(overrides, Mapping):
            raise ValueError(f"loss '{label}': the parameters of term '{term}' must be a mapping, got {overrides!r}")
    return CompositeLoss({term: (weight, _single(term, params.get(term, {}), label)) for term, weight in terms}, name=label)


def get_loss(spec: str | Sequence[Any] | Mapping[str, Any], **params: Any) -> PreferenceLoss | UnpairedLoss:
    """Build a loss from a name or a composition spec (:func:`parse_loss_spec`).

    One name of weight 1: ``params`` override that loss's or preset's hyperparameters,
    ``get_loss("slime", anchor_weight=0.2)``. A composition, or a preset that is one
    (``rpo``): ``params`` are keyed by term, ``get_loss("dpo,sft=0.2", dpo={"beta": 0.2})``.
    Raises ``ValueError`` naming the valid choices for an unknown loss, term or parameter,
    or a bad weight.
    """
    terms = parse_loss_spec(spec)
    if len(terms) > 1 or terms[0][1] != 1:
        return _composite(terms, params)
    name = terms[0][0]
    if not _is_composition(name):
        return _single(name, params)
    preset_spec, preset_params = PRESETS[name]
    merged = dict(preset_params)
    for term, overrides in params.items():  # a term's overrides update the preset's, not replace them
        merged[term] = {**preset_params.get(term, {}), **overrides} if isinstance(overrides, Mapping) else overrides
    return _composite(parse_loss_spec(preset_spec), merged, name=name)


__all__ = [
    "LOSSES",
    "PRESETS",
    "UNPAIRED_LOSSES",
    "CompositeLoss",
    "KlTotals",
    "LdDpoLoss",
    "KtoLoss",
    "LossOutput",
    "PreferenceLoss",
    "SequenceStats",
    "StepTotals",
    "UnpairedLoss",
    "WpoWeighted",
    "get_loss",
    "is_unpaired",
    "loss_class",
    "parse_loss_spec",
    "spec_text",
    "sequence_stats",
    "wpo_pair_weights",
]
