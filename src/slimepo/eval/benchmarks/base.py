"""What every benchmark of ``slimepo eval --bench`` is (:class:`Benchmark`), and what several share.

A benchmark owns its prompts (the installed file, how to read it), how a model answers
them and how the answers are scored or judged, its key in ``eval.json`` (also its folder
in the evaluation's output folder) and its rows of the evaluation table. ``evaluate``
adds what every benchmark result says: its ``provenance`` and, when judged by a
:class:`~slimepo.eval.judge.JudgeClient`, its ``judge_usage``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from slimepo.eval.answers import answer_prompts
from slimepo.eval.health import summarize_health
from slimepo.eval.judge import CompletionClient
from slimepo.generation.base import Decoding, Engine

#: A benchmark's prompts: records, their file, or None for the installed file.
Prompts = Sequence[Mapping[str, Any]] | str | os.PathLike[str] | None
#: One row of the evaluation table: ``(metric, value)``.
TableRow = tuple[str, Any]


class Answer(Protocol):
    """Answer ``prompts`` into ``out_dir`` and score or judge them; the benchmark's ``eval.json`` entry.

    ``judge``: None when no judge was given (or the benchmark is not judged); ``weights``:
    the model's ``weights_sha256``; ``model_id``: its name in answer files that need one.
    """

    def __call__(
        self, model: torch.nn.Module, tokenizer: Any, out_dir: Path, prompts: list[dict[str, Any]],
        decoding: Decoding, *, judge: CompletionClient | None, batch_size: int, weights: str | None, model_id: str,
        engine: Engine | None = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: ``name`` (its ``--bench`` choice), ``result_key`` (its key in ``eval.json``
    and its folder in the output folder), ``judged`` (graded by ``--judge-url``), ``find_prompts``
    (the installed prompts file), ``read_prompts`` (records of a prompts file; None: the
    installed one), ``answer`` and ``table_rows`` (its rows of ``format_eval_table``, from its
    ``eval.json`` entry)."""

    name: str
    result_key: str
    judged: bool
    find_prompts: Callable[[], Path]
    read_prompts: Callable[[str | os.PathLike[str] | None], list[dict[str, Any]]]
    answer: Answer
    table_rows: Callable[[Mapping[str, Any]], list[TableRow]]

    def prompts(self, source: Prompts = None, max_prompts: int | None = None) -> list[dict[str, Any]]:
        """The first ``max_prompts`` (None: all) prompt records of ``source`` (:data:`Prompts`)."""
        return records(source, self.read_prompts)[:max_prompts]


def records(source: Prompts, read: Callable[[str | os.PathLike[str] | None], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A benchmark's records: ``read`` from a file (None: the installed one), or copied as given."""
    if source is None or isinstance(source, (str, os.PathLike)):
        return read(source)
    return [dict(r) for r in source]


def answer_then_judge(
    model: torch.nn.Module, tokenizer: Any, out_dir: str | os.PathLike[str], prompts: Mapping[str, str],
    judge_answers: Callable[[dict[str, str]], list[dict[str, Any]]] | None,
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]], decoding: Decoding, *, desc: str,
    batch_size: int, weights: str | None, engine: Engine | None = None,
) -> dict[str, Any]:
    """Answer ``prompts`` (key -> text; resumable, into ``out_dir/answers.jsonl``), then, with
    ``judge_answers`` (key -> answer, to judgments), judge them into ``out_dir/judgments.jsonl``.

    Returns ``{"answers", "generation"}`` and with a judge ``"judgments"`` and ``summarize(judgments)``.
    """
    out = Path(out_dir)
    answers = answer_prompts(model, tokenizer, out / "answers.jsonl", dict(prompts), decoding=decoding,
                             batch_size=batch_size, desc=desc, weights=weights, engine=engine)
    chosen = [answers[key] for key in prompts]
    result: dict[str, Any] = {
        "answers": str(out / "answers.jsonl"), "generation": summarize_health(a["health"] for a in chosen),
    }
    if judge_answers is not None:
        judgments = judge_answers({a["key"]: a["response"] for a in chosen})
        with (out / "judgments.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in judgments)
        result.update(judgments=str(out / "judgments.jsonl"), **summarize(judgments))
    return result


def interval(result: Mapping[str, Any], digits: int) -> str | None:
    """``"lower to upper"`` of a pairwise result's 95% interval, None without one."""
    if result.get("ci_lower") is None:
        return None
    return f"{result['ci_lower']:.{digits}f} to {result['ci_upper']:.{digits}f}"
