"""``--bench ifeval``: IFEval's prompts answered by the model and scored by the official checkers
(:mod:`slimepo.eval.ifeval`); :func:`instruction_benchmark` also makes ``--bench ifbench``.

Its ``eval.json`` entry, ``ifeval``: :func:`answer_ifeval`'s result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from slimepo.eval import ifeval
from slimepo.eval.answers import BENCH_DECODING, answer_prompts
from slimepo.eval.benchmarks.base import Benchmark, Prompts, TableRow, records
from slimepo.eval.health import summarize_health
from slimepo.eval.judge import CompletionClient
from slimepo.generation.base import Decoding, Engine
from slimepo.ifeval_checkers import IFBENCH_MISSING_DATA


def answer_ifeval(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    prompts: Prompts = None,
    *,
    decoding: Decoding = BENCH_DECODING,
    batch_size: int = 8,
    benchmark: str = "ifeval",
    weights: str | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Answer IFEval (or IFBench) prompts in batches and score them with the official checkers.

    Resumable (:func:`slimepo.eval.answers.answer_prompts` into ``out_dir/answers.jsonl``;
    ``weights``: the model's ``weights_sha256`` when the caller has it). Then
    ``out_dir/input_response_data.jsonl`` is written in the official form.
    ``prompts``: IFEval records, an input_data.jsonl, or None for the installed set.

    Returns :func:`slimepo.eval.ifeval.score` plus ``generation``
    (:func:`slimepo.eval.health.summarize_health`: end-of-turn rate, mean answer length in
    tokens, ...) and ``responses`` (the path of the official file); for IFBench also
    ``official: False`` and ``left_out`` (the prompts no checker here can score).
    """
    kept, left_out = ifeval.scorable(records(prompts, lambda path: ifeval.load_prompts(path, benchmark)), benchmark)
    out = Path(out_dir)
    answers = answer_prompts(
        model, tokenizer, out / ifeval.ANSWERS_FILE, {str(r["key"]): r["prompt"] for r in kept}, decoding=decoding,
        batch_size=batch_size, desc=benchmark, weights=weights, engine=engine,
    )
    responses_path = ifeval.write_responses(kept, answers, out / ifeval.RESPONSES_FILE)
    chosen = [answers[str(r["key"])] for r in kept]
    result = ifeval.score(kept, [a["response"] for a in chosen], benchmark)
    result["generation"] = summarize_health(a["health"] for a in chosen)
    result["responses"] = str(responses_path)
    if benchmark == "ifbench":
        result["official"] = False
        result["left_out"] = {"prompts": len(left_out), "keys": [str(r["key"]) for r in left_out],
                              "why": dict(IFBENCH_MISSING_DATA)}
    return result


def instruction_benchmark(name: str, title: str) -> Benchmark:
    """IFEval or IFBench (``name``, a key of :data:`slimepo.eval.ifeval.PROMPT_FILES`), named
    ``title`` in the evaluation table."""

    def answer(
        model: torch.nn.Module, tokenizer: Any, out_dir: Path, prompts: list[dict[str, Any]], decoding: Decoding, *,
        judge: CompletionClient | None, batch_size: int, weights: str | None, model_id: str,
        engine: Engine | None = None,
    ) -> dict[str, Any]:
        return answer_ifeval(model, tokenizer, out_dir, prompts, decoding=decoding, batch_size=batch_size,
                             benchmark=name, weights=weights, engine=engine)

    def table_rows(scores: Mapping[str, Any]) -> list[TableRow]:
        rows: list[TableRow] = [(f"{title} prompts answered", scores.get("prompts"))]
        if scores.get("left_out"):
            rows.append((f"{title} prompts left out (unscorable offline)", scores["left_out"].get("prompts")))
        rows += [(f"{title} {level}-level accuracy, {mode}", scores.get(f"{level}_level_{mode}"))
                 for level in ("prompt", "instruction") for mode in ("strict", "loose")]
        generation = scores.get("generation") or {}
        rows.append((f"{title} end-of-turn rate", generation.get("ended_rate")))
        rows.append((f"{title} mean answer length (tokens)", generation.get("length_tokens_mean")))
        return rows

    return Benchmark(
        name=name, result_key=name, judged=False, find_prompts=lambda: ifeval.find_prompts(name),
        read_prompts=lambda path: ifeval.load_prompts(path, name), answer=answer, table_rows=table_rows,
    )


BENCHMARK = instruction_benchmark("ifeval", "IFEval")
