"""``slimepo pairs`` and ``slimepo make-prompts``: options parsed here, work done by :mod:`slimepo.pairs`.

``register(subparsers)`` adds both commands; ``slimepo.cli`` hands their parsed arguments to
:func:`run`, which returns the exit status. Their options are the fields of
:class:`slimepo.pairs.config.PairsConfig` and :class:`~slimepo.pairs.config.MakePromptsConfig`.
"""

from __future__ import annotations

import argparse
from typing import Any

from slimepo.cli_options import add_config_options, resolve_config
from slimepo.pairs.config import MakePromptsConfig, PairsConfig

COMMANDS = ("pairs", "make-prompts")


def register(subparsers: Any) -> None:
    """Add ``pairs`` and ``make-prompts`` to the ``slimepo`` sub-command parsers."""
    pairs = subparsers.add_parser(
        "pairs", help="preference pairs from a model's own answers, scored", allow_abbrev=False,
        description="Sample --k answers per prompt from --model with --engine, score each with --scorer, and pair "
        "the best with the worst (or every pair over --min-gap). Writes OUT/pairs.jsonl (what slimepo train "
        "--dataset reads), OUT/samples.jsonl (every answer, its score and what made it; a rerun resumes from it) "
        "and OUT/provenance.json.",
    )
    pairs.add_argument("--config", help="YAML file of options (same names as the flags, with underscores)")
    add_config_options(pairs, PairsConfig)
    prompts = subparsers.add_parser(
        "make-prompts", help="verifiable training prompts: requests with IFEval instructions attached",
        allow_abbrev=False,
        description="Attach 1-3 IFEval instructions (the official classes' own wording and seeded kwargs) to each "
        "base request; requests found in IFEval's or IFBench's prompts are left out. Writes rows that slimepo pairs "
        "--scorer ifeval reads.",
    )
    prompts.add_argument("--config", help="YAML file of options (same names as the flags, with underscores)")
    add_config_options(prompts, MakePromptsConfig)


def run(args: argparse.Namespace) -> int:
    """Run ``slimepo pairs`` or ``slimepo make-prompts`` (``args.command``); return the exit status."""
    if args.command == "make-prompts":
        from slimepo.pairs.compose import make_prompts

        config = resolve_config(MakePromptsConfig, args, args.config)
        record = make_prompts(config)
        requests = record["requests"]
        print(f"{record['prompts']} prompts from {requests['used']} requests written to {config.out} "
              f"({requests['duplicates']} duplicate requests, {len(requests['in_a_benchmark'])} found in IFEval/IFBench "
              f"and {len(requests['bad_rows'])} bad rows left out)")
        return 0
    from slimepo.pairs.run import make_pairs

    config = resolve_config(PairsConfig, args, args.config)
    result = make_pairs(config)
    counts = result.counts
    print(f"{counts['pairs']} pairs from {counts['prompts_with_pairs']} of {counts['prompts']} prompts "
          f"({counts['samples']} answers, {counts['scorer_failures']} scorer failures, {counts['bad_prompts']} bad "
          f"prompt rows); prompts without a pair: {counts['prompts_without_pair'] or 'none'}")
    print(f"written to {result.out_dir}/: pairs.jsonl, samples.jsonl, provenance.json")
    return 0
