"""Command-line flags from the option dataclasses (:class:`~slimepo.config.TrainConfig`,
:class:`~slimepo.config.EvalConfig`): one flag per field, with its help and default.

Both command modules (``slimepo.cli``, ``slimepo.cli_eval``) build their parsers here, so
neither imports the other's internals.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection
from typing import Any

import yaml

from slimepo.config import config_from_mapping, field_names, load_yaml

Config = typing.TypeVar("Config")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_mapping(text: str) -> dict[str, Any]:
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


def parse_list(text: str) -> list[str]:
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


def add_config_options(
    parser: argparse.ArgumentParser, cls: type, groups: Collection[str] | None = None,
    names: Collection[str] | None = None,
) -> None:
    """One flag per field of the dataclass ``cls`` (only those of ``groups`` / ``names``, when given), grouped."""
    argument_groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        group_name = f.metadata["group"]
        if (groups is not None and group_name not in groups) or (names is not None and f.name not in names):
            continue
        group = argument_groups.setdefault(group_name, parser.add_argument_group(f"{group_name} options"))
        kind = _base_type(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default!r})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(type=parse_mapping, metavar="K=V,...")
        elif kind is list:
            kwargs.update(type=parse_list, metavar="A,B,...")
        else:
            kwargs.update(type=kind, metavar=f.name.upper())
            if "choices" in f.metadata:
                kwargs["choices"] = [c for c in f.metadata["choices"] if c is not None]
        group.add_argument(flag(f.name), **kwargs)


def resolve_config(cls: type[Config], args: argparse.Namespace, config_file: str | None = None) -> Config:
    """``cls`` from the YAML ``config_file`` (if any), then the flags given in ``args``; validated."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_yaml(config_file))
        # Names the file on an unknown key or a value of the wrong type; the file's values then pass again below.
        config_from_mapping(values, source=f"config file {config_file}", cls=cls)
    values.update({k: v for k, v in vars(args).items() if k in field_names(cls)})
    config = config_from_mapping(values, source="command line", cls=cls)
    config.validate()
    return config
