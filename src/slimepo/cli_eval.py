"""``slimepo eval`` and ``slimepo compare``: options parsed here, work done by the library.

``register(subparsers)`` adds both commands; ``slimepo.cli`` hands their parsed
arguments to :func:`run`, which returns the exit status.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from slimepo.config import DEMO, ConfigError


def register(subparsers: Any) -> None:
    """Add ``eval`` and ``compare`` to the ``slimepo`` sub-command parsers."""
    evaluation = subparsers.add_parser(
        "eval", help="held-out preference metrics, generation health and constraints of a model",
        allow_abbrev=False,
        description="Evaluate a model or run folder on held-out pairs: accuracy, margin, chosen-likelihood "
        "drift and unlearning rate against --base, rejected-token collapse, formatting health of "
        "generations and constraint pass rate; optionally MT-Bench. Writes eval.json and generations.jsonl.",
    )
    evaluation.add_argument("--model", required=True,
                            help="Hub id, local folder, 'default', or a run folder holding a LoRA adapter")
    evaluation.add_argument("--adapter", help="PEFT adapter folder to load on top of --model")
    evaluation.add_argument("--dataset", default=DEMO, help="held-out data: as for training; 'demo' = the shipped set")
    evaluation.add_argument("--split", default="test", help="split of --dataset (default: test)")
    evaluation.add_argument("--base", help="model to measure drift against, e.g. the initial model ('default')")
    evaluation.add_argument("--out", help="output folder (default: the adapter or model folder when local)")
    evaluation.add_argument("--max-pairs", type=int, help="evaluate the first N held-out pairs only")
    evaluation.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    evaluation.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    _add_generation_options(evaluation)

    compare = subparsers.add_parser(
        "compare", help="train one run per loss on the same data and budget, evaluate each, report",
        allow_abbrev=False,
        description="For each of --losses: train with the shared options into OUT_ROOT/<loss>, evaluate "
        "against the initial model, then write OUT_ROOT/report/report.md. Finished runs are skipped, "
        "so an interrupted study resumes.",
    )
    compare.add_argument("--losses", required=True, type=_parse_list, metavar="A,B,...",
                         help="losses to compare, e.g. slime,dpo,simpo")
    compare.add_argument("--out-root", required=True, help="study folder: one sub-folder per loss, and report/")
    compare.add_argument("--config", help="YAML file of shared training options")
    _add_generation_options(compare)
    from slimepo.cli import add_config_options

    add_config_options(compare)


def _parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation options")
    group.add_argument("--no-generate", dest="generate", action="store_false",
                       help="skip generation checks (preference metrics only)")
    group.add_argument("--max-new-tokens", type=int, default=128, help="generation budget (default: 128)")
    group.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    bench = parser.add_argument_group("benchmark options")
    bench.add_argument("--bench", choices=("mt-bench",), help="also answer a benchmark")
    bench.add_argument("--questions", help="MT-Bench question.jsonl (default: the installed one)")
    bench.add_argument("--bench-max-new-tokens", type=int, default=1024, help="budget per answer (default: 1024)")
    bench.add_argument("--judge-url", help="OpenAI-compatible API that grades the answers (MT-Bench single mode)")
    bench.add_argument("--judge-model", help="judge model name (needed with --judge-url)")
    bench.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                       help="environment variable holding the judge API key (default: OPENAI_API_KEY)")


def _eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``evaluate`` options shared by both commands; checks them before any loading."""
    if args.max_new_tokens < 1 or args.bench_max_new_tokens < 1:
        raise ConfigError("max_new_tokens: must be >= 1")
    if args.sample and (args.temperature <= 0 or not 0 < args.top_p <= 1):
        raise ConfigError("sampling needs --temperature > 0 and 0 < --top-p <= 1")
    if args.judge_url and not args.judge_model:
        raise ConfigError("--judge-url needs --judge-model")
    if args.judge_url and not args.bench:
        raise ConfigError("--judge-url grades benchmark answers: add --bench mt-bench")
    judge = None
    if args.judge_url:
        from slimepo.eval.judge import JudgeClient

        judge = JudgeClient(args.judge_url, args.judge_model, api_key_env=args.judge_key_env)
    return dict(
        generate=args.generate, max_new_tokens=args.max_new_tokens, sampling=args.sample,
        temperature=args.temperature, top_p=args.top_p, mt_bench=args.bench == "mt-bench",
        questions=args.questions, bench_max_new_tokens=args.bench_max_new_tokens, judge=judge,
    )


def default_out_dir(model: str, adapter: str | None) -> Path:
    """The adapter or model folder when local (next to what it evaluates), else ``eval-<name>``."""
    for candidate in (adapter, model):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path("eval-" + re.sub(r"[^\w.-]+", "_", adapter or model))


def run_eval(args: argparse.Namespace) -> int:
    from slimepo.eval.run import evaluate, format_eval_table

    if args.max_pairs is not None and args.max_pairs < 1:
        raise ConfigError("max_pairs: must be >= 1")
    out = Path(args.out) if args.out else default_out_dir(args.model, args.adapter)
    result = evaluate(
        args.model, args.dataset, adapter=args.adapter, base=args.base, split=args.split,
        max_pairs=args.max_pairs, seed=args.seed, dtype=args.dtype, out_dir=out, **_eval_kwargs(args),
    )
    print(format_eval_table(result))
    print(f"\neval.json{', generations.jsonl' if args.generate else ''} written to {out}/")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from slimepo.cli import resolve_train_config
    from slimepo.compare import compare

    config = resolve_train_config(args)
    report = compare(args.losses, config, Path(args.out_root), _eval_kwargs(args))
    print(f"report written to {report}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``slimepo eval`` or ``slimepo compare`` (``args.command``); return the exit status."""
    return {"eval": run_eval, "compare": run_compare}[args.command](args)
