"""What a scorer is: it says which prompts it can score, and scores answers to them.

A :class:`Score` is a number (higher is better; only differences between answers to the same
prompt matter) or ``None`` with the error that prevented it: a failure is recorded and
counted, never turned into a score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slimepo.pairs.prompts import PromptRecord


@dataclass(frozen=True)
class Score:
    """``value`` (``None`` when scoring failed), ``detail`` (what decided it: per-instruction
    flags, a checker's reason, the judgment), ``error`` (why there is no value)."""

    value: float | None
    detail: Any = None
    error: str | None = None


class Scorer(Protocol):
    name: str

    def settings(self) -> dict[str, Any]:
        """Everything the scores depend on besides the answers (recorded with every score)."""
        ...

    def problem(self, record: PromptRecord) -> str | None:
        """Why answers to ``record`` cannot be scored (a missing or invalid column), else ``None``."""
        ...

    def score(self, items: Sequence[tuple[PromptRecord, str]]) -> list[Score]:
        """One :class:`Score` per ``(prompt, answer)``, in order."""
        ...


def failed(error: BaseException) -> Score:
    """The score of an answer whose scoring raised ``error``."""
    return Score(None, None, f"{type(error).__name__}: {error}")
