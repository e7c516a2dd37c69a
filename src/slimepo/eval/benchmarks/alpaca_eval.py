"""``--bench alpaca-eval``: AlpacaEval's instructions answered by the model and, with a judge,
judged against GPT-4 Turbo's outputs (:mod:`slimepo.eval.alpacaeval`).

Its ``eval.json`` entry, ``alpaca_eval``: :func:`answer_alpaca_eval`'s result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slimepo.eval import alpacaeval
from slimepo.eval.answers import BENCH_DECODING
from slimepo.eval.benchmarks.base import Benchmark, TableRow, answer_then_judge, interval
from slimepo.eval.judge import CompletionClient
from slimepo.generation.base import Decoding, Engine


def answer_alpaca_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    records: Sequence[Mapping[str, Any]],
    judge: CompletionClient | None = None,
    *,
    decoding: Decoding = BENCH_DECODING,
    batch_size: int = 8,
    weights: str | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Answer AlpacaEval instructions (resumable, into ``out_dir/answers.jsonl``) and, with a
    ``judge``, judge them against the baseline's outputs (``out_dir/judgments.jsonl``).

    ``records``: :func:`slimepo.eval.alpacaeval.load_instructions` records. Returns
    ``{"instructions", "answers", "generation", "length_controlled_win_rate": None}`` and
    with a judge ``"judgments"`` and :func:`slimepo.eval.alpacaeval.summarize_preferences`.
    """
    judge_answers = None if judge is None else (lambda answers: alpacaeval.judge_pairs(records, answers, judge))
    return {
        "instructions": len(records),
        **answer_then_judge(
            model, tokenizer, out_dir, {r["key"]: r["instruction"] for r in records}, judge_answers,
            alpacaeval.summarize_preferences, decoding, desc="alpaca-eval", batch_size=batch_size, weights=weights,
        engine=engine,
        ),
        "length_controlled_win_rate": None,  # its GLM needs data AlpacaEval downloads (see alpacaeval)
    }


def _answer(
    model: torch.nn.Module, tokenizer: Any, out_dir: Path, prompts: list[dict[str, Any]], decoding: Decoding, *,
    judge: CompletionClient | None, batch_size: int, weights: str | None, model_id: str,
    engine: Engine | None = None,
) -> dict[str, Any]:
    return answer_alpaca_eval(model, tokenizer, out_dir, prompts, judge, decoding=decoding, batch_size=batch_size,
                              weights=weights, engine=engine)


def table_rows(result: Mapping[str, Any]) -> list[TableRow]:
    return [
        ("AlpacaEval instructions answered", result.get("instructions")),
        ("AlpacaEval win rate vs GPT-4 Turbo (%, 50 = par)", result.get("win_rate")),
        ("  95% interval", interval(result, 1)),
    ]


BENCHMARK = Benchmark(
    name="alpaca-eval", result_key="alpaca_eval", judged=True, find_prompts=alpacaeval.find_instructions,
    read_prompts=alpacaeval.load_instructions, answer=_answer, table_rows=table_rows,
)
