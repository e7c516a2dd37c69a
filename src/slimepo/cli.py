"""``slimepo`` command line. It parses options and calls the library, nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import sys
import types
import typing
from collections.abc import Collection
from typing import Any

import yaml

from slimepo.config import ConfigError, TrainConfig, config_from_mapping, field_names, load_yaml


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_mapping(text: str) -> dict[str, Any]:
    """``key=value,key=value`` (values read as YAML scalars) or a YAML mapping."""
    text = text.strip()
    if text.startswith("{"):
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a mapping, got {text!r}")
        return value
    result: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        result[key.strip()] = yaml.safe_load(value)
    return result


def _parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; ``list[str]`` -> list; ``dict[...]`` -> dict."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Any": Any})  # noqa: S307 - our own dataclass annotations
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return origin or annotation


def add_config_options(parser: argparse.ArgumentParser, names: Collection[str] | None = None) -> None:
    """One flag per :class:`TrainConfig` field (or per field of ``names``), grouped, with its help and default."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        if names is not None and f.name not in names:
            continue
        group_name = f.metadata["group"]
        group = groups.setdefault(group_name, parser.add_argument_group(f"{group_name} options"))
        kind = _base_type(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default!r})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(type=_parse_mapping, metavar="K=V,...")
        elif kind is list:
            kwargs.update(type=_parse_list, metavar="A,B,...")
        else:
            kwargs.update(type=kind, metavar=f.name.upper())
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        group.add_argument(_flag(f.name), **kwargs)


class _Parser(argparse.ArgumentParser):
    """Unknown flags name the closest valid one."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flag = next((u for u in unknown if u.startswith("--")), unknown[0])
            valid = [_flag(n) for n in field_names()] + ["--config"]
            close = difflib.get_close_matches(flag.split("=")[0], valid, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.error(f"unknown option {flag}{hint}")
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
    add_config_options(train)

    inspect = sub.add_parser(
        "inspect-data", help="show the first pairs as training tokenizes them", allow_abbrev=False,
        description="Print the first pairs of --dataset as training sees them: prompt tokens, the trained "
        "response tokens of chosen and rejected, special tokens as written, and what truncation cut.",
    )
    inspect.add_argument("-n", "--num-pairs", type=int, default=3, help="pairs to show (default: 3)")
    inspect.add_argument("--config", help="YAML file of training options (only the data options are used)")
    add_config_options(inspect, INSPECT_OPTIONS)

    from slimepo import cli_eval

    cli_eval.register(sub)
    report = sub.add_parser("report", help="Markdown report with plots comparing run folders")
    report.add_argument("run_dirs", nargs="+", help="run folders (each with metrics.jsonl)")
    report.add_argument("--out", required=True, help="folder for report.md and the PNG plots")
    return parser


def resolve_train_config(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_yaml(args.config))
        source = f"config file {args.config}"
        config_from_mapping(values, source=source)  # names the file on an unknown key
    overrides = {k: v for k, v in vars(args).items() if k in field_names()}
    values.update(overrides)
    config = config_from_mapping(values)
    config.validate()
    return config


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
            from slimepo import cli_eval

            return cli_eval.run(args)
        if args.command == "report":
            from pathlib import Path

            from slimepo.report import write_report

            path = write_report([Path(d) for d in args.run_dirs], Path(args.out))
            print(f"report written to {path}")
            return 0
    except ConfigError as err:
        print(f"slimepo: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # one clear line for errors we raise on purpose
        from slimepo.data import DataError
        from slimepo.train.faults import NonFiniteTrainingError
        from slimepo.train.run import OutputExistsError

        if isinstance(err, (DataError, OutputExistsError, FileNotFoundError, NonFiniteTrainingError)):
            print(f"slimepo: error: {err}", file=sys.stderr)
            return 2
        raise
    return 0


def _train(args: argparse.Namespace) -> int:
    config = resolve_train_config(args)
    from slimepo.train import train
    from slimepo.train.card import summary_table

    result = train(config)
    if result.after:
        print("\n" + summary_table(result.before, result.after))
    print(f"\n{result.global_step} optimizer steps. Outputs in {result.output_dir}/:")
    kind = "LoRA adapter (PEFT)" if config.use_lora else "model weights"
    print(f"  {kind}, tokenizer, config.yaml, metrics.jsonl, eval.json, README.md")
    return 0


def _inspect_data(args: argparse.Namespace) -> int:
    if args.num_pairs < 1:
        raise ConfigError(f"num_pairs: must be >= 1, got {args.num_pairs}")
    config = resolve_train_config(args)
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
