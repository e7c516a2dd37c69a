"""``evaluate(config, out_dir=...)``: does a trained model still prefer, still talk, still obey?

It measures the failures SLIME claims to fix (``shared/PAPER.md``) on held-out pairs:

1. preference metrics from log-probs (:func:`slimepo.diagnostics.preference_metrics`):
   accuracy and margin, and against a ``base`` model the chosen-likelihood drift,
   the unlearning rate and rejected-token collapse of both;
2. generations for the held-out prompts: formatting health
   (:func:`slimepo.eval.health.generation_health`) and, where a row carries a
   ``constraint`` (:class:`slimepo.constraints.Constraint` as a dict), whether the
   response obeys it;
3. optionally a benchmark of :data:`slimepo.eval.benchmarks.REGISTRY` (MT-Bench, IFEval,
   IFBench, Arena-Hard, AlpacaEval): its answers scored by the official checkers or judged by
   an LLM judge, its result recording its ``provenance`` (:func:`bench_provenance`).

Outputs in ``out_dir``: ``eval.json`` (the returned dict), ``generations.jsonl`` (one
line per held-out prompt: origin, prompt, response, checks), and the benchmark's folder
(its ``result_key``: ``mt_bench/``, ``ifeval/``, ``ifbench/``, ``arena_hard/``, ``alpaca_eval/``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slimepo.atomic_io import write_json
from slimepo.config import EvalConfig
from slimepo.constraints import Constraint, check
from slimepo.data import Origin, TokenizedPair, load_rows, prepare_pairs
from slimepo.data.tokenize import end_of_turn_id, ends_with
from slimepo.diagnostics import preference_metrics
from slimepo.eval.benchmarks import REGISTRY
from slimepo.eval.health import generation_health, summarize_health
from slimepo.eval.judge import CompletionClient, JudgeClient
from slimepo.fingerprint import weights_sha256
from slimepo.generation import make_engine
from slimepo.generation.base import Decoding
from slimepo.generation.batched import end_of_turn_ids
from slimepo.generation.batched import generate as generate_responses
from slimepo.model import device, load_causal_lm, load_model, resolve_model_path
from slimepo.report import GENERATION_COLUMNS, PREFERENCE_COLUMNS, lookup, markdown_table
from slimepo.scoring import PairScores, score_pairs

logger = logging.getLogger(__name__)

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
    config: EvalConfig,
    *,
    out_dir: str | os.PathLike[str],
    held_out: Sequence[TokenizedPair] | None = None,
    prepare_options: Mapping[str, Any] | None = None,
    judge: CompletionClient | None = None,
) -> dict[str, Any]:
    """Evaluate ``config.model`` (+ ``config.adapter``) on the held-out ``config.split`` of
    ``config.dataset``; write ``out_dir``.

    ``config`` holds the options of ``slimepo eval`` (:class:`~slimepo.config.EvalConfig`, checked
    here before anything loads): ``dataset`` as ``prepare_pairs`` takes it (``"demo"`` is the
    shipped set, its ``split`` ``test`` or ``train``; rows may carry a ``constraint``); ``base``,
    the model the drift is measured against (an adapter's own base is scored with the adapter
    disabled, with no second copy); ``max_pairs``; ``generate`` with its decoding
    (:meth:`~slimepo.config.EvalConfig.decoding`); ``bench``, one of
    :data:`slimepo.eval.benchmarks.REGISTRY`, with ``questions`` (default: the installed
    prompts), ``max_prompts`` and its decoding (:meth:`~slimepo.config.EvalConfig.bench_decoding`).
    Its ``out`` is the command's: the caller resolves it into ``out_dir``.

    Args:
        out_dir: must not hold a training run's outputs (its ``metrics.jsonl``): the
            evaluation's ``eval.json`` would replace training's (:func:`check_out_dir`).
        held_out: already tokenized pairs to use instead of tokenizing ``config.dataset``
            (e.g. training's own held-out share); their origins locate each row's
            constraint in the dataset.
        prepare_options: further keyword arguments of ``prepare_pairs`` (``columns``,
            ``max_length``, ``max_prompt_length``, ``chat_template``...).
        judge: grades the answers of a judged benchmark (MT-Bench, Arena-Hard, AlpacaEval);
            default: the :class:`JudgeClient` of ``config.judge_url`` (:func:`judge_client`).

    Returns (and writes as ``eval.json``) the ``preference_metrics`` dict, plus with
    ``generate``: ``generation`` (``summarize_health``), ``constraint_pass_rate``,
    ``constraint_pass_rate_by_family``, ``constraints_checked``, ``constraints_invalid``;
    with ``bench``: the benchmark's entry under its ``result_key`` (``mt_bench``, ``ifeval``,
    ``ifbench``, ``arena_hard``, ``alpaca_eval``; see :mod:`slimepo.eval.benchmarks`), with its
    ``provenance`` (:func:`bench_provenance`) and, for a judged benchmark and a
    :class:`JudgeClient`, ``judge_usage`` (its :attr:`~JudgeClient.usage` during this call); and
    ``settings`` (what was evaluated, how, and ``weights_sha256``: the model as loaded, adapter
    included).
    """
    config.validate()
    out = Path(out_dir)
    benchmark = REGISTRY[config.bench] if config.bench else None
    # Benchmark prompts are read before a model is loaded, so that a missing file fails fast.
    prompts = benchmark.prompts(config.questions, config.max_prompts) if benchmark else []
    check_out_dir(out)
    policy, tokenizer, adapter_base = load_model(
        config.model, config.adapter, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
    )
    weights = weights_sha256(policy)
    judge = judge_client(config) if judge is None else judge
    # A client may judge before, after or beside this call: this call's requests are counted apart.
    metered = isinstance(judge, JudgeClient) and benchmark is not None and benchmark.judged
    if metered:
        judge = judge.metered()
    source = _source(config.dataset, config.split)
    if held_out is None:
        held_out, report = prepare_pairs(source, tokenizer, split=config.split, **dict(prepare_options or {}))
        logger.info("held-out data: %s", report)
    pairs = list(held_out)[: config.max_pairs] if config.max_pairs else list(held_out)

    score = dict(pad_token_id=tokenizer.pad_token_id, batch_size=config.batch_size)
    scores = score_pairs(policy, pairs, **score)
    base_scores = _base_scores(policy, config, adapter_base, pairs, score) if config.base else None
    ends = ends_with(pairs, end_of_turn_id(tokenizer, (prepare_options or {}).get("chat_template", "auto")))
    result = preference_metrics(*scores.as_tuple(), base=base_scores.as_tuple() if base_scores else None, ends=ends)

    out.mkdir(parents=True, exist_ok=True)
    if config.generate:
        rows = {row.origin: row.data for row in load_rows(source, config.split, (prepare_options or {}).get("columns"))}
        records = _generation_checks(policy, tokenizer, pairs, rows, config.decoding(), config.batch_size)
        with (out / "generations.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
        result["generation"] = summarize_health(r["checks"]["health"] for r in records)
        result.update(_constraint_rates([r["checks"]["constraint"] for r in records]))
    if benchmark is not None:
        bench_decoding = config.bench_decoding()
        engine = None if config.engine == "hf" else make_engine(
            config.engine, model=config.model, adapter=config.adapter, dtype=config.dtype,
            trust_remote_code=config.trust_remote_code, batch_size=config.batch_size, url=config.engine_url,
            served_model=config.engine_model, key_env=config.engine_key_env,
        )
        entry = benchmark.answer(
            policy, tokenizer, out / benchmark.result_key, prompts, bench_decoding,
            judge=judge if benchmark.judged else None, batch_size=config.batch_size, weights=weights,
            model_id=Path(str(config.adapter or config.model)).name or "model", engine=engine,
        )
        questions_file = benchmark.find_prompts() if config.questions is None else config.questions
        entry["provenance"] = {
            **bench_provenance(questions_file, tokenizer, judge, bench_decoding.to_dict(),
                               installed=config.questions is None),
            "weights_sha256": weights,
        }
        if engine is not None:  # the answers' maker; weights_sha256 is the model scored in this process
            entry["provenance"]["engine"] = engine.identity()
        if metered:
            entry["judge_usage"] = dict(judge.usage)
        result[benchmark.result_key] = entry
    result["settings"] = {
        "model": str(config.model), "adapter": None if config.adapter is None else str(config.adapter),
        "base": config.base, "dataset": str(config.dataset), "split": config.split, "generate": config.generate,
        **config.decoding().to_dict(), "weights_sha256": weights,
    }
    write_json(out / "eval.json", result)
    return result


def finished_evaluation(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``eval.json`` :func:`evaluate` wrote in ``out_dir`` (it has ``settings``, which training's
    own eval.json has not), or None when there is none or it cannot be read."""
    try:
        evaluation = json.loads((Path(out_dir) / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return evaluation if isinstance(evaluation, dict) and "settings" in evaluation else None


def judge_client(config: EvalConfig) -> JudgeClient | None:
    """The judge ``config`` names (``judge_url``, ``judge_model``, ``judge_key_env``); None without one."""
    if not config.judge_url:
        return None
    return JudgeClient(config.judge_url, config.judge_model, api_key_env=config.judge_key_env)


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
    questions: str | os.PathLike[str] | Sequence[Mapping[str, Any]], tokenizer: Any, judge: CompletionClient | None,
    decoding: Mapping[str, Any],
    *, installed: bool = False,
) -> dict[str, Any]:
    """What a benchmark score needs said to be reproduced: ``{"questions_file",
    "questions_sha256", "judge", "decoding", "chat_template"}``.

    ``questions``: the prompts file (its path and the sha256 of its bytes; both None when
    records were passed in instead; an ``installed`` file is named by its path inside the
    installed packages, not this machine's absolute path); ``judge``: its ``model``, ``url``, ``temperature`` and
    ``max_tokens`` where it has them (None without a judge); ``chat_template``: the
    tokenizer's template text, None when prompts were plain text (no template); ``decoding``: as
    recorded (:meth:`Decoding.to_dict`, or the settings a caller names).
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
    policy: torch.nn.Module, config: EvalConfig, adapter_base: str | None, pairs: list, score: dict[str, Any],
) -> PairScores:
    if adapter_base is not None and _same_model(config.base, adapter_base):
        with policy.disable_adapter():
            return score_pairs(policy, pairs, **score)
    base_model = load_causal_lm(config.base, dtype=config.dtype, training=False,
                                trust_remote_code=config.trust_remote_code)
    return score_pairs(base_model.to(device()), pairs, **score)


def _generation_checks(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[TokenizedPair], rows: Mapping[Origin, Any],
    decoding: Decoding, batch_size: int,
) -> list[dict[str, Any]]:
    """One record per pair: ``{"origin", "prompt", "response", "checks": {"health", "constraint"}}``."""
    generations = generate_responses(model, tokenizer, [p.prompt_ids for p in pairs], **decoding.to_dict(),
                                     batch_size=batch_size)
    eot_ids = end_of_turn_ids(tokenizer)
    records = []
    for pair, generation in zip(pairs, generations, strict=True):
        data = rows.get(pair.origin)
        prompt = data.get("prompt") if isinstance(data, dict) else None
        health = generation_health(generation.text, generation.token_ids, eot_ids, decoding.max_new_tokens)
        records.append({
            "origin": str(pair.origin),
            "prompt": prompt if prompt is not None else tokenizer.decode(pair.prompt_ids),
            "response": generation.text,
            "checks": {"health": health, "constraint": _constraint_check(data, generation.text)},
        })
    return records


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
    for benchmark in REGISTRY.values():
        entry = result.get(benchmark.result_key)
        if isinstance(entry, Mapping):
            rows += [(metric, value, None) for metric, value in benchmark.table_rows(entry)]
    for benchmark in REGISTRY.values():
        usage = (result.get(benchmark.result_key) or {}).get("judge_usage")
        if usage:
            rows.append(("judge requests (usable replies)", f"{usage['requests']} ({usage['replies']})", None))
            rows.append(("judge tokens, prompt + completion", f"{usage['prompt_tokens']} + {usage['completion_tokens']}"
                         f" (reported in {usage['responses_with_usage']} responses)", None))
    headers = ("metric", "model", "base") if has_base else ("metric", "model")
    return "\n".join(markdown_table(headers, [row[: len(headers)] for row in rows]))
