"""``evaluate(model, dataset)``: does a trained model still prefer, still talk, still obey?

It measures the failures SLIME claims to fix (``shared/PAPER.md``) on held-out pairs:

1. preference metrics from log-probs (:func:`slimepo.eval.metrics.preference_metrics`):
   accuracy and margin, and against a ``base`` model the chosen-likelihood drift,
   the unlearning rate and rejected-token collapse of both;
2. generations for the held-out prompts: formatting health
   (:func:`slimepo.eval.health.generation_health`) and, where a row carries a
   ``constraint`` (:class:`slimepo.constraints.Constraint` as a dict), whether the
   response obeys it;
3. optionally a benchmark: MT-Bench answers, graded by an LLM judge when one is given;
   IFEval or IFBench answers, scored by the official checkers (:mod:`slimepo.eval.ifeval`;
   IFBench without the prompts whose checkers need NLTK data not on PyPI); or
   Arena-Hard or AlpacaEval answers, judged pairwise against a baseline's. Each benchmark
   result records its ``provenance`` (:func:`bench_provenance`).

Outputs in ``out_dir``: ``eval.json`` (the returned dict), ``generations.jsonl`` (one
line per held-out prompt: origin, prompt, response, checks), and one folder per benchmark
(``mt_bench/``, ``ifeval/``, ``ifbench/``, ``arena_hard/``, ``alpaca_eval/``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slimepo.atomic_io import write_json
from slimepo.config import JUDGED_BENCHMARKS
from slimepo.constraints import Constraint, check
from slimepo.data import Origin, TokenizedPair, load_rows, prepare_pairs
from slimepo.eval import alpacaeval, arena_hard, ifeval
from slimepo.eval.answers import answer_prompts
from slimepo.eval.generate import chat_generator, end_of_turn_ids
from slimepo.eval.generate import generate as generate_responses
from slimepo.eval.health import generation_health, summarize_health
from slimepo.eval.judge import CompletionClient, JudgeClient, judge_answers, summarize_scores
from slimepo.eval.metrics import preference_metrics
from slimepo.eval.mtbench import answer_questions, find_questions, load_questions, write_answers
from slimepo.fingerprint import weights_sha256
from slimepo.ifeval_checkers import IFBENCH_MISSING_DATA
from slimepo.model import load_causal_lm, load_tokenizer, quiet_peft, resolve_model_path
from slimepo.report import GENERATION_COLUMNS, PREFERENCE_COLUMNS, lookup, markdown_table
from slimepo.scoring import PairScores, score_pairs

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
Questions = Sequence[Mapping[str, Any]] | str | os.PathLike[str] | None
#: Each benchmark's key in the result, and where its installed prompts file is.
BENCH_RESULTS = {"mt-bench": "mt_bench", "ifeval": "ifeval", "ifbench": "ifbench", "arena-hard": "arena_hard",
                 "alpaca-eval": "alpaca_eval"}
DEFAULT_QUESTIONS = {
    "mt-bench": find_questions, "ifeval": ifeval.find_prompts, "ifbench": lambda: ifeval.find_prompts("ifbench"),
    "arena-hard": lambda: arena_hard.find_file("question.jsonl"), "alpaca-eval": alpacaeval.find_instructions,
}


def load_model(
    model: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None, *, dtype: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any, str | None]:
    """The model to evaluate, its tokenizer, and the base path under its LoRA adapter (if any).

    ``model`` is a Hub id, a local folder, ``"default"``, or a folder holding a PEFT
    adapter (its base then comes from ``adapter_config.json``). The tokenizer is the
    adapter folder's when it saved one (training does), else the model's.
    ``trust_remote_code``: let the model repository's own Python code run.
    """
    model = str(model)
    if adapter is None and (Path(model) / ADAPTER_CONFIG).is_file():
        adapter, model = model, _adapter_base(model)
    device = _device()
    remote = dict(trust_remote_code=trust_remote_code)
    if adapter is None:
        return (load_causal_lm(model, dtype=dtype, training=False, **remote).to(device).eval(),
                load_tokenizer(model, **remote), None)
    from peft import PeftModel

    adapter = str(adapter)
    tokenizer = load_tokenizer(adapter if (Path(adapter) / "tokenizer_config.json").is_file() else model, **remote)
    base = load_causal_lm(model, dtype=dtype, training=False, **remote)
    with quiet_peft():
        policy = PeftModel.from_pretrained(base, adapter)
    return policy.to(device).eval(), tokenizer, resolve_model_path(model)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _adapter_base(adapter: str) -> str:
    """The base an adapter folder names: a Hub id, or a local folder (training records local
    bases as absolute paths, so a run loads from any working directory)."""
    base = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise FileNotFoundError(f"{adapter}/{ADAPTER_CONFIG} does not name its base model; pass it as --model")
    if Path(base).is_absolute() and not Path(base).exists():
        raise FileNotFoundError(f"{adapter}/{ADAPTER_CONFIG} names the base {base!r}, which does not exist here; "
                                "pass the base as --model and the adapter as --adapter")
    return base


def _same_model(a: str, b: str) -> bool:
    a, b = resolve_model_path(a), resolve_model_path(b)
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _source(dataset: str | os.PathLike[str], split: str) -> str:
    if str(dataset) == "demo":
        from slimepo.data import demo_file

        return demo_file(split)
    return str(dataset)


def _row_constraint(data: Any) -> Constraint | None:
    """The row's ``constraint`` (a dict, or its JSON text as CSV holds it); None if absent."""
    raw = data.get("constraint") if isinstance(data, dict) else None
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = json.loads(raw)
    return Constraint.from_dict(raw)


def _constraint_check(data: Any, response: str) -> dict[str, Any] | None:
    try:
        constraint = _row_constraint(data)
    except ValueError as err:  # a malformed constraint is reported, not counted
        return {"error": str(err)}
    if constraint is None:
        return None
    result = check(constraint, response)
    return {**constraint.to_dict(), "passed": result.passed, "detail": result.detail}


def _constraint_rates(checks: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """``constraint_pass_rate`` (None without any valid constraint), per family, and counts."""
    valid = [c for c in checks if c is not None and "passed" in c]
    families: dict[str, list[bool]] = {}
    for c in valid:
        families.setdefault(c["family"], []).append(c["passed"])
    return {
        "constraint_pass_rate": sum(c["passed"] for c in valid) / len(valid) if valid else None,
        "constraint_pass_rate_by_family": {f: sum(p) / len(p) for f, p in sorted(families.items())},
        "constraints_checked": len(valid),
        "constraints_invalid": sum(1 for c in checks if c is not None and "error" in c),
    }


def rescore_constraints(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """The constraint checks of ``generations.jsonl`` records (:func:`evaluate`'s) done again with
    today's checkers: ``(records with new checks, the constraint rates, records whose verdict changed)``.

    For answers kept from an earlier version of ``slimepo.constraints`` (a checker fixed, or
    replaced by the official IFEval one): their scores become those a new evaluation would give.
    """
    rescored, changed = [], 0
    for record in records:
        old = (record.get("checks") or {}).get("constraint")
        new = old
        if old is not None and "family" in old:
            new = _constraint_check({"constraint": {"family": old["family"], "params": old.get("params", {})}},
                                    record["response"])
            changed += new.get("passed") != old.get("passed")
        rescored.append({**record, "checks": {**(record.get("checks") or {}), "constraint": new}})
    return rescored, _constraint_rates([r["checks"]["constraint"] for r in rescored]), changed


def evaluate(
    model: str | os.PathLike[str],
    dataset: str | os.PathLike[str] = "demo",
    *,
    out_dir: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None = None,
    base: str | None = None,
    split: str = "test",
    max_pairs: int | None = None,
    generate: bool = True,
    max_new_tokens: int = 128,
    sampling: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    dtype: str = "auto",
    prepare_options: Mapping[str, Any] | None = None,
    held_out: Sequence[TokenizedPair] | None = None,
    bench: str | None = None,
    questions: Questions = None,
    max_prompts: int | None = None,
    bench_max_new_tokens: int = 1024,
    judge: CompletionClient | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (+ ``adapter``) on the held-out ``split`` of ``dataset``; write ``out_dir``.

    ``out_dir`` must not hold a training run's outputs (its ``metrics.jsonl``): the
    evaluation's ``eval.json`` would replace training's (:func:`check_out_dir`).

    Args:
        dataset: as ``prepare_pairs`` takes it; ``"demo"`` is the shipped set (its
            ``split`` is ``test`` or ``train``). Rows may carry a ``constraint``.
        base: the model the drift is measured against (e.g. the initial weights); the
            adapter's own base is scored with the adapter disabled, with no second copy.
        max_pairs: the first this many held-out pairs only.
        generate: also generate a response per held-out prompt and check it.
        sampling, temperature, top_p, seed: decoding (greedy unless ``sampling``).
        prepare_options: further keyword arguments of ``prepare_pairs`` (``columns``,
            ``max_length``, ``max_prompt_length``, ``chat_template``...).
        held_out: already tokenized pairs to use instead of tokenizing ``dataset``
            (e.g. training's own held-out share); their origins locate each row's
            constraint in ``dataset``.
        bench, questions, max_prompts, bench_max_new_tokens, judge: answer a benchmark,
            ``"mt-bench"``, ``"ifeval"``, ``"arena-hard"`` or ``"alpaca-eval"``
            (``questions``: records or the benchmark's prompts file, default the installed
            set; the first ``max_prompts`` only), and grade MT-Bench, Arena-Hard or
            AlpacaEval answers with ``judge`` (e.g. a :class:`slimepo.eval.judge.JudgeClient`).

    Returns (and writes as ``eval.json``) the ``preference_metrics`` dict, plus with
    ``generate``: ``generation`` (``summarize_health``), ``constraint_pass_rate``,
    ``constraint_pass_rate_by_family``, ``constraints_checked``, ``constraints_invalid``;
    with ``bench="mt-bench"``: ``mt_bench`` {questions, answers file, and with a judge
    judgments file + ``summarize_scores``}; with ``bench="ifeval"`` (``"ifbench"``): ``ifeval`` (``ifbench``; see
    :func:`answer_ifeval`); with ``bench="arena-hard"``: ``arena_hard`` (see
    :func:`answer_arena_hard`); with ``bench="alpaca-eval"``: ``alpaca_eval`` (see
    :func:`answer_alpaca_eval`); each benchmark's with its ``provenance``
    (:func:`bench_provenance`) and, for a judged benchmark and a :class:`JudgeClient`,
    ``judge_usage`` (its :attr:`~JudgeClient.usage` during this call); and ``settings``
    (what was evaluated, how, and ``weights_sha256``: the model as loaded, adapter included).
    """
    out = Path(out_dir)
    # Benchmark prompts are read before a model is loaded, so that a missing file fails fast.
    question_list = _records(questions, load_questions)[:max_prompts] if bench == "mt-bench" else None
    ifeval_prompts = (_records(questions, lambda path: ifeval.load_prompts(path, bench))[:max_prompts]
                      if bench in ("ifeval", "ifbench") else None)
    arena_questions = arena_hard.load_questions(questions)[:max_prompts] if bench == "arena-hard" else None
    alpaca_records = _records(questions, alpacaeval.load_instructions)[:max_prompts] if bench == "alpaca-eval" else None
    check_out_dir(out)
    policy, tokenizer, adapter_base = load_model(model, adapter, dtype=dtype, trust_remote_code=trust_remote_code)
    weights = weights_sha256(policy)
    # A client may judge before, after or beside this call: this call's requests are counted apart.
    metered = isinstance(judge, JudgeClient) and bench in JUDGED_BENCHMARKS
    if metered:
        judge = judge.metered()
    source = _source(dataset, split)
    if held_out is None:
        held_out, report = prepare_pairs(source, tokenizer, split=split, **dict(prepare_options or {}))
        logger.info("held-out data: %s", report)
    pairs = list(held_out)[:max_pairs] if max_pairs else list(held_out)

    score = dict(pad_token_id=tokenizer.pad_token_id, batch_size=batch_size)
    scores = score_pairs(policy, pairs, **score)
    base_scores = (_base_scores(policy, base, adapter_base, pairs, dtype, score, trust_remote_code)
                   if base else None)
    result = preference_metrics(*scores.as_tuple(), base=base_scores.as_tuple() if base_scores else None)

    decoding = dict(max_new_tokens=max_new_tokens, sampling=sampling, temperature=temperature, top_p=top_p, seed=seed)
    bench_decoding = {**decoding, "max_new_tokens": bench_max_new_tokens}
    out.mkdir(parents=True, exist_ok=True)
    if generate:
        rows = {row.origin: row.data for row in load_rows(source, split, (prepare_options or {}).get("columns"))}
        records = _generation_checks(policy, tokenizer, pairs, rows, batch_size=batch_size, **decoding)
        with (out / "generations.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
        result["generation"] = summarize_health(r["checks"]["health"] for r in records)
        result.update(_constraint_rates([r["checks"]["constraint"] for r in records]))
    if question_list is not None:
        model_id = Path(str(adapter or model)).name or "model"
        answers_path = out / "mt_bench" / "answers" / f"{model_id}.jsonl"
        answers = answer_mtbench(
            policy, tokenizer, answers_path, question_list, model_id=model_id, **bench_decoding,
        )
        result["mt_bench"] = {"questions": len(question_list), "answers": str(answers_path)}
        if judge is not None:
            result["mt_bench"].update(judge_mtbench(question_list, answers, judge, out / "mt_bench" / "judgments.jsonl"))
    if ifeval_prompts is not None:
        result[bench] = answer_ifeval(
            policy, tokenizer, out / bench, ifeval_prompts, batch_size=batch_size, benchmark=bench, weights=weights,
            **bench_decoding,
        )
    if arena_questions is not None:
        result["arena_hard"] = answer_arena_hard(
            policy, tokenizer, out / "arena_hard", arena_questions, judge, batch_size=batch_size, weights=weights,
            **bench_decoding,
        )
    if alpaca_records is not None:
        result["alpaca_eval"] = answer_alpaca_eval(
            policy, tokenizer, out / "alpaca_eval", alpaca_records, judge, batch_size=batch_size, weights=weights,
            **bench_decoding,
        )
    if bench is not None:
        questions_file = DEFAULT_QUESTIONS[bench]() if questions is None else questions
        result[BENCH_RESULTS[bench]]["provenance"] = {
            **bench_provenance(questions_file, tokenizer, judge, bench_decoding, installed=questions is None),
            "weights_sha256": weights,
        }
        if metered:
            result[BENCH_RESULTS[bench]]["judge_usage"] = dict(judge.usage)
    result["settings"] = {
        "model": str(model), "adapter": None if adapter is None else str(adapter), "base": base,
        "dataset": str(dataset), "split": split, "generate": generate, **decoding, "weights_sha256": weights,
    }
    write_json(out / "eval.json", result)
    return result


#: A training run's own outputs: an evaluation never writes into a folder that holds them.
TRAINING_OUTPUTS = ("metrics.jsonl",)


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that holds a training run: its ``eval.json`` (before/after,
    drift, unlearning) would be replaced by the evaluation's."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out: {str(out)!r} is a file, not a folder")
    found = [name for name in TRAINING_OUTPUTS if (out / name).exists()]
    if found:
        raise FileExistsError(
            f"out: {str(out)!r} holds a training run ({', '.join(found)}); evaluating into it would replace the "
            f"eval.json training wrote. Evaluate into a folder of its own, e.g. --out {out / 'eval'} "
            "(slimepo eval's default for a run folder)"
        )


def bench_provenance(
    questions: Questions, tokenizer: Any, judge: CompletionClient | None, decoding: Mapping[str, Any],
    *, installed: bool = False,
) -> dict[str, Any]:
    """What a benchmark score needs said to be reproduced: ``{"questions_file",
    "questions_sha256", "judge", "decoding", "chat_template"}``.

    ``questions``: the prompts file (its path and the sha256 of its bytes; both None when
    records were passed in instead; an ``installed`` file is named by its path inside the
    installed packages, not this machine's absolute path); ``judge``: its ``model``, ``url``, ``temperature`` and
    ``max_tokens`` where it has them (None without a judge); ``chat_template``: the
    tokenizer's template text, None when prompts were plain text (no template).
    """
    path = Path(questions) if isinstance(questions, (str, os.PathLike)) else None
    judge_settings = None if judge is None else {
        name: getattr(judge, name, None) for name in ("model", "url", "temperature", "max_tokens")
    }
    return {
        "questions_file": None if path is None else installed_name(path) if installed else str(path),
        "questions_sha256": None if path is None else hashlib.sha256(path.read_bytes()).hexdigest(),
        "judge": judge_settings,
        "decoding": dict(decoding),
        "chat_template": getattr(tokenizer, "chat_template", None) or None,
    }


def installed_name(path: Path) -> str:
    """An installed data file's path below the ``sys.path`` entry that holds it (its name
    in any environment), else the path as given."""
    import sys

    resolved = path.resolve()
    roots = sorted((Path(p).resolve() for p in sys.path if p), key=lambda p: -len(p.parts))
    for root in roots:
        if root != Path("/") and resolved.is_relative_to(root):
            return resolved.relative_to(root).as_posix()
    return str(path)


def _base_scores(
    policy: torch.nn.Module, base: str, adapter_base: str | None, pairs: list, dtype: str, score: dict[str, Any],
    trust_remote_code: bool = False,
) -> PairScores:
    if adapter_base is not None and _same_model(base, adapter_base):
        with policy.disable_adapter():
            return score_pairs(policy, pairs, **score)
    base_model = load_causal_lm(base, dtype=dtype, training=False, trust_remote_code=trust_remote_code)
    return score_pairs(base_model.to(_device()), pairs, **score)


def _generation_checks(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[TokenizedPair], rows: Mapping[Origin, Any], **options: Any
) -> list[dict[str, Any]]:
    """One record per pair: ``{"origin", "prompt", "response", "checks": {"health", "constraint"}}``."""
    generations = generate_responses(model, tokenizer, [p.prompt_ids for p in pairs], **options)
    eot_ids = end_of_turn_ids(tokenizer)
    records = []
    for pair, generation in zip(pairs, generations, strict=True):
        data = rows.get(pair.origin)
        prompt = data.get("prompt") if isinstance(data, dict) else None
        health = generation_health(generation.text, generation.token_ids, eot_ids, options["max_new_tokens"])
        records.append({
            "origin": str(pair.origin),
            "prompt": prompt if prompt is not None else tokenizer.decode(pair.prompt_ids),
            "response": generation.text,
            "checks": {"health": health, "constraint": _constraint_check(data, generation.text)},
        })
    return records


def _records(value: Questions, load) -> list[dict[str, Any]]:
    """A benchmark's records: ``load``ed from a file (None: the installed one), or copied as given."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return load(value)
    return [dict(r) for r in value]


def answer_ifeval(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    prompts: Questions = None,
    *,
    max_new_tokens: int = 1024,
    batch_size: int = 8,
    benchmark: str = "ifeval",
    **decoding: Any,
) -> dict[str, Any]:
    """Answer IFEval (or IFBench) prompts in batches and score them with the official checkers.

    Resumable (:func:`slimepo.eval.answers.answer_prompts` into ``out_dir/answers.jsonl``).
    Then ``out_dir/input_response_data.jsonl`` is written in the official form.
    ``prompts``: IFEval records, an input_data.jsonl, or None for the installed set;
    ``decoding``: ``sampling``, ``temperature``, ``top_p``, ``seed`` of
    :func:`slimepo.eval.generate.generate`.

    Returns :func:`slimepo.eval.ifeval.score` plus ``generation``
    (:func:`slimepo.eval.health.summarize_health`: end-of-turn rate, mean answer length in
    tokens, ...) and ``responses`` (the path of the official file).
    """
    records, left_out = ifeval.scorable(_records(prompts, lambda path: ifeval.load_prompts(path, benchmark)), benchmark)
    out = Path(out_dir)
    answers = answer_prompts(
        model, tokenizer, out / ifeval.ANSWERS_FILE, {str(r["key"]): r["prompt"] for r in records},
        max_new_tokens=max_new_tokens, batch_size=batch_size, desc=benchmark, **decoding,
    )
    responses_path = ifeval.write_responses(records, answers, out / ifeval.RESPONSES_FILE)
    chosen = [answers[str(r["key"])] for r in records]
    result = ifeval.score(records, [a["response"] for a in chosen], benchmark)
    result["generation"] = summarize_health(a["health"] for a in chosen)
    result["responses"] = str(responses_path)
    if benchmark == "ifbench":
        result["official"] = False
        result["left_out"] = {"prompts": len(left_out), "keys": [str(r["key"]) for r in left_out],
                              "why": dict(IFBENCH_MISSING_DATA)}
    return result


def _answer_then_judge(
    model: torch.nn.Module, tokenizer: Any, out_dir: str | os.PathLike[str], prompts: Mapping[str, str],
    judge_answers: Callable[[dict[str, str]], list[dict[str, Any]]] | None,
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]], *, desc: str, **generation: Any,
) -> dict[str, Any]:
    """Answer ``prompts`` (key -> text; resumable, into ``out_dir/answers.jsonl``), then, with
    ``judge_answers`` (key -> answer, to judgments), judge them into ``out_dir/judgments.jsonl``.

    Returns ``{"answers", "generation"}`` and with a judge ``"judgments"`` and ``summarize(judgments)``.
    """
    out = Path(out_dir)
    answers = answer_prompts(model, tokenizer, out / "answers.jsonl", dict(prompts), desc=desc, **generation)
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


def answer_arena_hard(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    questions: Sequence[Mapping[str, Any]],
    judge: CompletionClient | None = None,
    *,
    max_new_tokens: int = 1024,
    batch_size: int = 8,
    **decoding: Any,
) -> dict[str, Any]:
    """Answer Arena-Hard questions (resumable, into ``out_dir/answers.jsonl``) and, with a
    ``judge``, judge them against the baseline (``out_dir/judgments.jsonl``).

    Returns ``{"questions", "answers", "generation"}`` and with a judge ``"judgments"`` and
    :func:`slimepo.eval.arena_hard.summarize_verdicts`.
    """
    judge_answers = None if judge is None else (lambda answers: arena_hard.judge_pairs(questions, answers, judge))
    return {"questions": len(questions), **_answer_then_judge(
        model, tokenizer, out_dir, {q["uid"]: q["prompt"] for q in questions}, judge_answers,
        arena_hard.summarize_verdicts, desc="arena-hard", max_new_tokens=max_new_tokens, batch_size=batch_size,
        **decoding,
    )}


def answer_alpaca_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    records: Sequence[Mapping[str, Any]],
    judge: CompletionClient | None = None,
    *,
    max_new_tokens: int = 1024,
    batch_size: int = 8,
    **decoding: Any,
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
        **_answer_then_judge(
            model, tokenizer, out_dir, {r["key"]: r["instruction"] for r in records}, judge_answers,
            alpacaeval.summarize_preferences, desc="alpaca-eval", max_new_tokens=max_new_tokens,
            batch_size=batch_size, **decoding,
        ),
        "length_controlled_win_rate": None,  # its GLM needs data AlpacaEval downloads (see alpacaeval)
    }


def answer_mtbench(
    model: torch.nn.Module,
    tokenizer: Any,
    out_path: str | os.PathLike[str],
    questions: Questions = None,
    *,
    model_id: str = "slimepo",
    max_new_tokens: int = 1024,
    **decoding: Any,
) -> list[dict[str, Any]]:
    """Answer both turns of MT-Bench and write FastChat answer records to ``out_path``.

    ``questions``: records, a question.jsonl, or None for the installed set;
    ``decoding``: ``sampling``, ``temperature``, ``top_p``, ``seed``, ``batch_size`` of
    :func:`slimepo.eval.generate.generate` (FastChat's default of 1024 new tokens).
    """
    generate = chat_generator(model, tokenizer, max_new_tokens=max_new_tokens, **decoding)
    records = answer_questions(_records(questions, load_questions), generate, model_id, seed=decoding.get("seed", 0))
    write_answers(records, out_path)
    return records


def judge_mtbench(
    questions: Sequence[Mapping[str, Any]],
    answers: Sequence[Mapping[str, Any]],
    client: CompletionClient,
    out_path: str | os.PathLike[str],
    **options: Any,
) -> dict[str, Any]:
    """Grade ``answers`` with ``client``, write the judgments as JSON lines to ``out_path``;
    return ``{"judgments": path, **summarize_scores(...)}``. ``options`` go to ``judge_answers``."""
    records = judge_answers(questions, answers, client, **options)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    return {"judgments": str(out_path), **summarize_scores(records)}


def format_eval_table(result: Mapping[str, Any]) -> str:
    """A Markdown table of an ``evaluate`` result: one row per metric, model vs base."""
    has_base = isinstance(result.get("base"), Mapping)
    rows: list[tuple[Any, ...]] = []
    for header, keys in PREFERENCE_COLUMNS:
        if keys[0] == "drift" and not has_base:
            continue
        base_value = lookup(result.get("base"), keys) if has_base and keys[0] not in ("pairs", "drift") else None
        rows.append((header, lookup(result, keys), base_value))
    if has_base:
        rows.append(("rejected drift vs base (nats/token)", lookup(result, ("drift", "rejected_drift_mean")), None))
    rows += [(header, lookup(result, keys), None) for header, keys in GENERATION_COLUMNS]
    by_family = result.get("constraint_pass_rate_by_family") or {}
    rows += [(f"  pass rate: {family}", rate, None) for family, rate in by_family.items()]
    bench = result.get("mt_bench")
    if isinstance(bench, Mapping):
        rows.append(("MT-Bench questions answered", bench.get("questions"), None))
        rows.append(("MT-Bench score (1-10)", bench.get("overall"), None))
        rows += [(f"  turn {turn}", score, None) for turn, score in (bench.get("per_turn") or {}).items()]
    for key, name in (("ifeval", "IFEval"), ("ifbench", "IFBench (partial)")):
        scores = result.get(key)
        if not isinstance(scores, Mapping):
            continue
        rows.append((f"{name} prompts answered", scores.get("prompts"), None))
        if scores.get("left_out"):
            rows.append((f"{name} prompts left out (unscorable offline)", scores["left_out"].get("prompts"), None))
        for level in ("prompt", "instruction"):
            for mode in ("strict", "loose"):
                rows.append((f"{name} {level}-level accuracy, {mode}", scores.get(f"{level}_level_{mode}"), None))
        generation = scores.get("generation") or {}
        rows.append((f"{name} end-of-turn rate", generation.get("ended_rate"), None))
        rows.append((f"{name} mean answer length (tokens)", generation.get("length_tokens_mean"), None))
    arena = result.get("arena_hard")
    if isinstance(arena, Mapping):
        rows.append(("Arena-Hard questions answered", arena.get("questions"), None))
        rows.append(("Arena-Hard score vs baseline (0.5 = par)", arena.get("score"), None))
        rows.append(("  95% interval", f"{arena['ci_lower']:.3f} to {arena['ci_upper']:.3f}"
                     if arena.get("ci_lower") is not None else None, None))
    alpaca = result.get("alpaca_eval")
    if isinstance(alpaca, Mapping):
        rows.append(("AlpacaEval instructions answered", alpaca.get("instructions"), None))
        rows.append(("AlpacaEval win rate vs GPT-4 Turbo (%, 50 = par)", alpaca.get("win_rate"), None))
        rows.append(("  95% interval", f"{alpaca['ci_lower']:.1f} to {alpaca['ci_upper']:.1f}"
                     if alpaca.get("ci_lower") is not None else None, None))
    for key in BENCH_RESULTS.values():
        usage = (result.get(key) or {}).get("judge_usage")
        if usage:
            rows.append(("judge requests (usable replies)", f"{usage['requests']} ({usage['replies']})", None))
            rows.append(("judge tokens, prompt + completion", f"{usage['prompt_tokens']} + {usage['completion_tokens']}"
                         f" (reported in {usage['responses_with_usage']} responses)", None))
    headers = ("metric", "model", "base") if has_base else ("metric", "model")
    return "\n".join(markdown_table(headers, [row[: len(headers)] for row in rows]))
