"""The ``ifeval`` scorer: the share of a prompt's IFEval instructions that an answer follows.

The prompt row carries IFEval's ``instruction_id_list`` and ``kwargs`` (one dict per
instruction; JSON text is read too, as CSV holds it), like IFEval's ``input_data.jsonl`` and
the rows of ``slimepo make-prompts``. Each instruction is decided by its official checker,
strict or loose as IFEval reads them (:func:`slimepo.eval.ifeval.check_response`); the score
is ``followed / instructions`` in [0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from slimepo.eval.ifeval import check_response
from slimepo.ifeval_checkers import build_checker, seeded_random
from slimepo.pairs.prompts import PromptRecord
from slimepo.pairs.scorers.base import Score, failed


class IFEvalScorer:
    name = "ifeval"

    def __init__(self, mode: str = "strict") -> None:
        if mode not in ("strict", "loose"):
            raise ValueError(f"mode must be strict or loose, got {mode!r}")
        self.mode = mode

    def settings(self) -> dict[str, Any]:
        return {"scorer": self.name, "mode": self.mode, "benchmark": "ifeval"}

    def problem(self, record: PromptRecord) -> str | None:
        try:
            checked = _instructions(record)
            with seeded_random():
                for instruction_id, kwargs in zip(checked["instruction_id_list"], checked["kwargs"], strict=True):
                    build_checker(instruction_id, kwargs, checked["prompt"])
        except (ValueError, TypeError, KeyError) as error:
            return f"{type(error).__name__}: {error}"
        return None

    def score(self, items: Sequence[tuple[PromptRecord, str]]) -> list[Score]:
        scores = []
        for record, answer in items:
            try:
                followed = check_response(_instructions(record), answer)[self.mode]
            except Exception as error:  # a checker that raises on this answer: recorded, not fatal
                scores.append(failed(error))
                continue
            scores.append(Score(sum(followed) / len(followed), {"followed": followed}))
        return scores


def _instructions(record: PromptRecord) -> dict[str, Any]:
    """The IFEval record :func:`~slimepo.eval.ifeval.check_response` reads; raises on a row without one."""
    ids, kwargs = (_json_or_value(record.data.get(name)) for name in ("instruction_id_list", "kwargs"))
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValueError("the row needs instruction_id_list: a non-empty list of IFEval instruction ids")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, Mapping) for k in kwargs):
        raise ValueError("the row needs kwargs: one dict per instruction id")
    return {"prompt": record.request, "instruction_id_list": ids, "kwargs": [dict(k) for k in kwargs]}


def _json_or_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
