"""``slimepo`` command line. It parses options and calls the library, nothing more."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys

from slimepo import cli_eval, cli_iterate, cli_pairs
from slimepo.cli_options import add_config_options, flag, resolve_config
from slimepo.config import ConfigError, EvalConfig, TrainConfig, field_names


class _Parser(argparse.ArgumentParser):
    """Unknown flags name the closest valid one."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            given = next((u for u in unknown if u.startswith("--")), unknown[0])
            names = {*field_names(TrainConfig), *field_names(EvalConfig)}
            valid = [flag(n) for n in sorted(names)] + ["--config"]
            close = difflib.get_close_matches(given.split("=")[0], valid, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.error(f"unknown option {given}{hint}")
        return parsed


INSPECT_OPTIONS = ("model", "dataset", "dataset_split", "columns", "chat_template", "max_length", "max_prompt_length")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slimepo", description="SLIME and baselines for preference optimization")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a causal LM on preference pairs", allow_abbrev=False,
        description="Train with SLIME or a baseline. Options come from --config YAML, then flags override them. "
        "With no option at all: SLIME + LoRA on the embedded SmolLM2-135M-Instruct and the shipped demo data.",
    )
    train.add_argument("--config", help="YAML file of options (same names as the flags, with underscores)")
    add_config_options(train, TrainConfig)

    inspect = sub.add_parser(
        "inspect-data", help="show the first pairs as training tokenizes them", allow_abbrev=False,
        description="Print the first pairs of --dataset as training sees them: prompt tokens, the trained "
        "response tokens of chosen and rejected, special tokens as written, and what truncation cut.",
    )
    inspect.add_argument("-n", "--num-pairs", type=int, default=3, help="pairs to show (default: 3)")
    inspect.add_argument("--config", help="YAML file of training options (only the data options are used)")
    add_config_options(inspect, TrainConfig, names=INSPECT_OPTIONS)

    cli_eval.register(sub)
    cli_pairs.register(sub)
    cli_iterate.register(sub)
    report = sub.add_parser("report", help="Markdown report with plots comparing run folders, or iterate loops")
    report.add_argument("run_dirs", nargs="+", help="run folders (each with metrics.jsonl), or slimepo iterate "
                        "folders (each with iterate.yaml): their rounds side by side")
    report.add_argument("--out", required=True, help="folder for report.md and the PNG plots")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "inspect-data":
            return _inspect_data(args)
        if args.command in {"eval", "compare"}:
            return cli_eval.run(args)
        if args.command in cli_pairs.COMMANDS:
            return cli_pairs.run(args)
        if args.command == "iterate":
            return cli_iterate.run(args)
        if args.command == "report":
            return _report(args)
    except ConfigError as err:
        print(f"slimepo: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # one clear line for errors we raise on purpose
        from slimepo.data import DataError
        from slimepo.eval.answers import AnswersMismatchError
        from slimepo.train.faults import NonFiniteTrainingError
        from slimepo.train.run import OutputExistsError

        ours = (DataError, OutputExistsError, FileNotFoundError, FileExistsError, NonFiniteTrainingError,
                AnswersMismatchError)
        if isinstance(err, ours):
            print(f"slimepo: error: {err}", file=sys.stderr)
            return 2
        raise
    return 0


def _train(args: argparse.Namespace) -> int:
    config = resolve_config(TrainConfig, args, args.config)
    from slimepo.train import train
    from slimepo.train.card import summary_table

    result = train(config)
    if not _leave_process_group():
        return 0  # process 0 reports
    if result.after:
        print("\n" + summary_table(result.before, result.after))
    print(f"\n{result.global_step} optimizer steps. Outputs in {result.output_dir}/:")
    kind = "LoRA adapter (PEFT)" if config.use_lora else "model weights"
    print(f"  {kind}, tokenizer, config.yaml, metrics.jsonl, eval.json, README.md")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slimepo.iterate.report import is_loop, write_rounds_report
    from slimepo.report import write_report

    folders = [Path(d) for d in args.run_dirs]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"report: run folder {str(folder)!r} does not exist")
    loops = [is_loop(folder) for folder in folders]
    if any(loops):
        if not all(loops):
            mixed = next(str(f) for f, loop in zip(folders, loops, strict=True) if not loop)
            raise ConfigError(f"report: {mixed!r} is not a slimepo iterate folder (no iterate.yaml), unlike the "
                              "others given; report loops and training runs apart")
        path = write_rounds_report(folders, Path(args.out))
    else:
        for folder in folders:
            if not (folder / "metrics.jsonl").is_file():
                raise ConfigError(f"report: {str(folder)!r} holds no metrics.jsonl: not a training run folder "
                                  "(nor a slimepo iterate folder)")
        path = write_report(folders, Path(args.out))
    print(f"report written to {path}")
    return 0


def _leave_process_group() -> bool:
    """Under torchrun/accelerate, after a finished run: destroy the process group; True on process 0.

    Training has done every collective by then (the weights are saved). Left to the interpreter's
    teardown, the group warns under NCCL and can abort a finished process under gloo. Not called
    when training raised: tearing down while other processes sit in a collective can hang.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    rank = dist.get_rank()
    dist.destroy_process_group()
    return rank == 0


def _inspect_data(args: argparse.Namespace) -> int:
    if args.num_pairs < 1:
        raise ConfigError(f"num_pairs: must be >= 1, got {args.num_pairs}")
    config = resolve_config(TrainConfig, args, args.config)
    from slimepo.data.inspect import inspect_pairs

    try:
        text = inspect_pairs(
            config.dataset, config.model, n=args.num_pairs, split=config.dataset_split,
            columns=config.columns or None, chat_template=config.chat_template,
            max_length=config.max_length, max_prompt_length=config.max_prompt_length,
        )
    except ValueError as err:  # a chat template that is not one, or does not parse
        raise ConfigError(str(err)) from None
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
