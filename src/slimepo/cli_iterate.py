"""``slimepo iterate``: options parsed here, work done by :mod:`slimepo.iterate`.

The loop's options are the fields of :class:`slimepo.iterate.IterateConfig`. The three stage
mappings (``--pairs``, ``--train``, ``--eval``) are merged key by key over the YAML file's
sections, so ``--train learning_rate=5e-5`` changes one option of the file's ``train:``.
"""

from __future__ import annotations

import argparse
from typing import Any

from slimepo.cli_options import add_config_options
from slimepo.config import config_from_mapping, field_names, load_yaml
from slimepo.iterate.config import IterateConfig

STAGES = ("pairs", "train", "eval")


def register(subparsers: Any) -> None:
    """Add ``iterate`` to the ``slimepo`` sub-command parsers."""
    parser = subparsers.add_parser(
        "iterate", help="rounds of on-policy training: sample pairs from the policy, train, evaluate",
        allow_abbrev=False,
        description="For each of --rounds rounds: slimepo pairs from the current policy, slimepo train on those "
        "pairs from the current weights (a LoRA adapter is merged into them), slimepo eval against the initial "
        "model. One folder, a subfolder per round, a report over rounds in OUT/report/. Rerun the same command "
        "after a kill: it resumes in the round and stage it stopped in. Stage options: --pairs, --train, --eval "
        "(K=V,... or a YAML mapping; merged key by key over the --config file's sections).",
    )
    parser.add_argument("--config", help="YAML file: the loop's options, and pairs:, train:, eval: sections")
    add_config_options(parser, IterateConfig)


def resolve(args: argparse.Namespace) -> IterateConfig:
    """The loop's config from ``--config`` and the flags, stage sections merged key by key; validated."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_yaml(args.config))
        config_from_mapping(values, source=f"config file {args.config}", cls=IterateConfig)
    for name in field_names(IterateConfig):
        if name not in vars(args):
            continue
        given = getattr(args, name)
        values[name] = {**(values.get(name) or {}), **given} if name in STAGES else given
    config = config_from_mapping(values, source="command line", cls=IterateConfig)
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    """Run ``slimepo iterate``; return the exit status."""
    from slimepo.iterate import iterate
    from slimepo.report import markdown_table

    result = iterate(resolve(args))
    rows = []
    for record in result.rounds:
        evaluation = record.get("eval") or {}
        pairs = (record.get("pairs") or {}).get("counts") or {}
        rows.append((record["round"], pairs.get("pairs"), (evaluation.get("drift") or {}).get("chosen_drift_mean"),
                     (evaluation.get("generation") or {}).get("length_tokens_mean"),
                     (evaluation.get("generation") or {}).get("ended_rate"), evaluation.get("constraint_pass_rate"),
                     *(evaluation.get(key, {}).get("prompt_level_strict") for key in ("ifeval", "ifbench"))))
    print("\n".join(markdown_table(("round", "pairs", "chosen drift vs initial", "length", "ended", "constraint pass",
                                    "IFEval strict", "IFBench strict"), rows)))
    print(f"\nrounds in {result.out_dir}/round-*/; report: {result.out_dir}/report/report.md")
    return 0
