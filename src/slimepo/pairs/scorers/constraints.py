"""The ``constraints`` scorer: 1 when an answer obeys the row's slimepo ``constraint``, else 0.

The row carries ``constraint``: ``{"family", "params"}`` (or its JSON text), as the demo
data and ``data/onpolicy/`` hold it; :func:`slimepo.constraints.check` decides, and its
reason is the score's detail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from slimepo.constraints import Constraint, check
from slimepo.pairs.prompts import PromptRecord
from slimepo.pairs.scorers.base import Score


class ConstraintsScorer:
    name = "constraints"

    def settings(self) -> dict[str, Any]:
        return {"scorer": self.name}

    def problem(self, record: PromptRecord) -> str | None:
        try:
            _constraint(record)
        except ValueError as error:
            return str(error)
        return None

    def score(self, items: Sequence[tuple[PromptRecord, str]]) -> list[Score]:
        results = [check(_constraint(record), answer) for record, answer in items]
        return [Score(float(result.passed), result.detail) for result in results]


def _constraint(record: PromptRecord) -> Constraint:
    raw = record.data.get("constraint")
    if raw is None:
        raise ValueError("the row has no constraint")
    if isinstance(raw, str):
        raw = json.loads(raw)  # a JSONDecodeError is a ValueError
    return Constraint.from_dict(raw)
