"""``slimepo eval`` and ``slimepo compare``: options parsed here, work done by the library.

``register(subparsers)`` adds both commands; ``slimepo.cli`` hands their parsed
arguments to :func:`run`, which returns the exit status. Their options are the fields of
:class:`slimepo.config.EvalConfig` (and, for ``compare``, of :class:`~slimepo.config.TrainConfig`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from slimepo.cli_options import add_config_options, parse_list, resolve_config
from slimepo.config import (
    COMPARE_EVAL_GROUPS,
    EvalConfig,
    TrainConfig,
    config_from_mapping,
    field_names,
)
from slimepo.report import EVALUATION_DIR


def register(subparsers: Any) -> None:
    """Add ``eval`` and ``compare`` to the ``slimepo`` sub-command parsers."""
    evaluation = subparsers.add_parser(
        "eval", help="held-out preference metrics, generation health and constraints of a model",
        allow_abbrev=False,
        description="Evaluate a model or run folder on held-out pairs: accuracy, margin, chosen-likelihood "
        "drift and unlearning rate against --base, rejected-token collapse, formatting health of "
        "generations and constraint pass rate; optionally a benchmark (MT-Bench, IFEval). "
        "Writes eval.json and generations.jsonl.",
    )
    evaluation.add_argument("--config", help="YAML file of options (same names as the flags, with underscores)")
    add_config_options(evaluation, EvalConfig)

    compare = subparsers.add_parser(
        "compare", help="train one run per loss on the same data and budget, evaluate each, report",
        allow_abbrev=False,
        description="For each of --losses: train with the shared options into OUT_ROOT/<loss>, evaluate "
        "against the initial model, then write OUT_ROOT/report/report.md. Finished runs are skipped, "
        "so an interrupted study resumes.",
    )
    compare.add_argument("--losses", required=True, type=parse_list, metavar="A,B,...",
                         help="losses to compare, e.g. slime,dpo,simpo")
    compare.add_argument("--out-root", required=True, help="study folder: one sub-folder per loss, and report/")
    compare.add_argument("--config", help="YAML file of shared training options")
    add_config_options(compare, EvalConfig, groups=COMPARE_EVAL_GROUPS)
    add_config_options(compare, TrainConfig)


def default_out_dir(model: str, adapter: str | None) -> Path:
    """``eval/`` inside the adapter or model folder when local (beside what training wrote there,
    never over it), else ``eval-<name>``."""
    for candidate in (adapter, model):
        if candidate and Path(candidate).is_dir():
            return Path(candidate) / EVALUATION_DIR
    return Path("eval-" + re.sub(r"[^\w.-]+", "_", adapter or model))


def run_eval(args: argparse.Namespace) -> int:
    from slimepo.eval.run import evaluate, format_eval_table

    config = resolve_config(EvalConfig, args, args.config)
    out = Path(config.out) if config.out else default_out_dir(config.model, config.adapter)
    result = evaluate(config, out_dir=out)
    print(format_eval_table(result))
    print(f"\neval.json{', generations.jsonl' if config.generate else ''} written to {out}/")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from slimepo.compare import compare

    train_config = resolve_config(TrainConfig, args, args.config)
    given = {k: v for k, v in vars(args).items() if k in field_names(EvalConfig)}
    eval_config = config_from_mapping(given, cls=EvalConfig)
    eval_config.validate()
    report = compare(args.losses, train_config, Path(args.out_root), eval_config)
    print(f"report written to {report}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``slimepo eval`` or ``slimepo compare`` (``args.command``); return the exit status."""
    return {"eval": run_eval, "compare": run_compare}[args.command](args)
