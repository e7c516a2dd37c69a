"""``--bench arena-hard``: Arena-Hard v2.0's prompts answered by the model and, with a judge,
judged pairwise against the baseline's answers (:mod:`slimepo.eval.arena_hard`).

Its ``eval.json`` entry, ``arena_hard``: :func:`answer_arena_hard`'s result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slimepo.eval import arena_hard
from slimepo.eval.answers import BENCH_DECODING
from slimepo.eval.benchmarks.base import Benchmark, TableRow, answer_then_judge, interval
from slimepo.eval.judge import CompletionClient
from slimepo.generation.base import Decoding, Engine


def answer_arena_hard(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    questions: Sequence[Mapping[str, Any]],
    judge: CompletionClient | None = None,
    *,
    decoding: Decoding = BENCH_DECODING,
    batch_size: int = 8,
    weights: str | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Answer Arena-Hard questions (resumable, into ``out_dir/answers.jsonl``) and, with a
    ``judge``, judge them against the baseline (``out_dir/judgments.jsonl``).

    Returns ``{"questions", "answers", "generation"}`` and with a judge ``"judgments"`` and
    :func:`slimepo.eval.arena_hard.summarize_verdicts`.
    """
    judge_answers = None if judge is None else (lambda answers: arena_hard.judge_pairs(questions, answers, judge))
    return {"questions": len(questions), **answer_then_judge(
        model, tokenizer, out_dir, {q["uid"]: q["prompt"] for q in questions}, judge_answers,
        arena_hard.summarize_verdicts, decoding, desc="arena-hard", batch_size=batch_size, weights=weights,
        engine=engine,
    )}


def _answer(
    model: torch.nn.Module, tokenizer: Any, out_dir: Path, prompts: list[dict[str, Any]], decoding: Decoding, *,
    judge: CompletionClient | None, batch_size: int, weights: str | None, model_id: str,
    engine: Engine | None = None,
) -> dict[str, Any]:
    return answer_arena_hard(model, tokenizer, out_dir, prompts, judge, decoding=decoding, batch_size=batch_size,
                             weights=weights, engine=engine)


def table_rows(result: Mapping[str, Any]) -> list[TableRow]:
    return [
        ("Arena-Hard questions answered", result.get("questions")),
        ("Arena-Hard score vs baseline (0.5 = par)", result.get("score")),
        ("  95% interval", interval(result, 3)),
    ]


BENCHMARK = Benchmark(
    name="arena-hard", result_key="arena_hard", judged=True,
    find_prompts=lambda: arena_hard.find_file("question.jsonl"), read_prompts=arena_hard.load_questions,
    answer=_answer, table_rows=table_rows,
)
