"""Preference losses from per-token log-probabilities. Imports torch only.

>>> from slimepo.losses import get_loss
>>> loss_fn = get_loss("slime", anchor_weight=0.2)
>>> out = loss_fn(chosen_logps, chosen_mask, rejected_logps, rejected_mask)
>>> out.loss.backward(); out.metrics["loss/stabilizer"]
"""

from __future__ import annotations

import difflib
from typing import Any

from slimepo.losses.base import (
    LossOutput,
    PreferenceLoss,
    SequenceStats,
    StepTotals,
    sequence_stats,
)
from slimepo.losses.pairwise import (
    CpoLoss,
    DpoLoss,
    HingeLoss,
    IpoLoss,
    OrpoLoss,
    SftLoss,
    SimpoLoss,
)
from slimepo.losses.slime import SlimeLoss

_CLASSES: dict[str, type[PreferenceLoss]] = {
    cls.name: cls for cls in (SlimeLoss, SftLoss, DpoLoss, IpoLoss, HingeLoss, SimpoLoss, CpoLoss, OrpoLoss)
}

#: Named presets: (loss class, parameter overrides). Ablations of PAPER.md are presets too.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "slime": ("slime", {}),  # the authors' training-script values (SlimeLoss defaults)
    "slime-config": ("slime", {"anchor_weight": 0.8, "stabilizer_shift": 0.5}),  # their config class
    "slime-no-anchor": ("slime", {"anchor_weight": 0.0}),
    "slime-no-stabilizer": ("slime", {"stabilizer_weight": 0.0}),
    "slime-hard": ("slime", {"margin_mode": "hard"}),
    "slime-soft": ("slime", {"margin_mode": "soft"}),
    **{name: (name, {}) for name in _CLASSES if name != "slime"},
}

#: Every name ``get_loss`` accepts.
LOSSES: tuple[str, ...] = tuple(PRESETS)


def loss_class(name: str) -> type[PreferenceLoss]:
    """The class behind a loss or preset name."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, LOSSES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown loss '{name}'{hint}; valid losses: {', '.join(LOSSES)}")
    return _CLASSES[PRESETS[name][0]]


def get_loss(name: str, **params: Any) -> PreferenceLoss:
    """Build a loss by name; ``params`` override the preset's hyperparameters.

    Raises ``ValueError`` listing the valid names for an unknown loss or parameter.
    """
    cls = loss_class(name)
    valid = cls.parameters()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        allowed = ", ".join(valid) if valid else "none"
        raise ValueError(f"loss '{name}' has no parameter(s) {', '.join(unknown)}; valid parameters: {allowed}")
    return cls(**{**PRESETS[name][1], **params})


__all__ = [
    "LOSSES",
    "PRESETS",
    "LossOutput",
    "PreferenceLoss",
    "SequenceStats",
    "StepTotals",
    "get_loss",
    "loss_class",
    "sequence_stats",
]
