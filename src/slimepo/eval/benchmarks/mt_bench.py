"""``--bench mt-bench``: MT-Bench's two-turn questions answered in FastChat's format
(:mod:`slimepo.eval.mtbench`) and, with a judge, graded 1 to 10 per turn (:mod:`slimepo.eval.judge`).

Its ``eval.json`` entry, ``mt_bench``: ``{"questions", "answers"}`` (the answers file,
``mt_bench/answers/<model_id>.jsonl``) and with a judge ``"judgments"`` and
:func:`~slimepo.eval.judge.summarize_scores`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slimepo.eval.answers import BENCH_DECODING
from slimepo.eval.benchmarks.base import Benchmark, Prompts, TableRow, records
from slimepo.eval.generate import chat_generator
from slimepo.eval.judge import CompletionClient, judge_answers, summarize_scores
from slimepo.eval.mtbench import answer_questions, find_questions, load_questions, write_answers
from slimepo.generation.base import Decoding, Engine, Message


def answer_mtbench(
    model: torch.nn.Module,
    tokenizer: Any,
    out_path: str | os.PathLike[str],
    questions: Prompts = None,
    *,
    decoding: Decoding = BENCH_DECODING,
    model_id: str = "slimepo",
    batch_size: int = 8,
    engine: Engine | None = None,
) -> list[dict[str, Any]]:
    """Answer both turns of MT-Bench with ``decoding`` and write FastChat answer records to ``out_path``.

    ``questions``: records, a question.jsonl, or None for the installed set; ``batch_size``:
    conversations per :func:`slimepo.generation.batched.generate` batch; ``engine``: answer with this
    generation engine instead of ``model`` and ``tokenizer`` in this process.
    """
    if engine is None:
        generate = chat_generator(model, tokenizer, decoding, batch_size=batch_size)
    else:
        def generate(conversations: list[list[Message]]) -> list[str]:
            return [sample.text for (sample,) in engine.generate(conversations, decoding, 1)]
    answers = answer_questions(records(questions, load_questions), generate, model_id, seed=decoding.seed)
    write_answers(answers, out_path)
    return answers


def judge_mtbench(
    questions: Sequence[Mapping[str, Any]],
    answers: Sequence[Mapping[str, Any]],
    client: CompletionClient,
    out_path: str | os.PathLike[str],
    **options: Any,
) -> dict[str, Any]:
    """Grade ``answers`` with ``client``, write the judgments as JSON lines to ``out_path``;
    return ``{"judgments": path, **summarize_scores(...)}``. ``options`` go to ``judge_answers``."""
    judgments = judge_answers(questions, answers, client, **options)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in judgments)
    return {"judgments": str(out_path), **summarize_scores(judgments)}


def _answer(
    model: torch.nn.Module, tokenizer: Any, out_dir: Path, prompts: list[dict[str, Any]], decoding: Decoding, *,
    judge: CompletionClient | None, batch_size: int, weights: str | None, model_id: str,
    engine: Engine | None = None,
) -> dict[str, Any]:
    # FastChat's answer files record no model fingerprint (``weights``), and MT-Bench has always
    # been answered in answer_mtbench's default batches of 8, whatever --batch-size says.
    answers_path = out_dir / "answers" / f"{model_id}.jsonl"
    answers = answer_mtbench(model, tokenizer, answers_path, prompts, decoding=decoding, model_id=model_id,
                             engine=engine)
    result: dict[str, Any] = {"questions": len(prompts), "answers": str(answers_path)}
    if judge is not None:
        result.update(judge_mtbench(prompts, answers, judge, out_dir / "judgments.jsonl"))
    return result


def table_rows(result: Mapping[str, Any]) -> list[TableRow]:
    return [
        ("MT-Bench questions answered", result.get("questions")),
        ("MT-Bench score (1-10)", result.get("overall")),
        *((f"  turn {turn}", score) for turn, score in (result.get("per_turn") or {}).items()),
    ]


BENCHMARK = Benchmark(
    name="mt-bench", result_key="mt_bench", judged=True, find_prompts=find_questions, read_prompts=load_questions,
    answer=_answer, table_rows=table_rows,
)
