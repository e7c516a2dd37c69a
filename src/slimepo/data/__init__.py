"""From any preference dataset to validated, tokenized pairs.

    rows   = load_rows(source, split, columns)          # sources.py: Hub id, folder, file
    pairs  = normalize_rows(rows, report)               # formats.py: TRL formats, validation
    tokens = tokenize_pairs(pairs, tokenizer, ...)      # tokenize.py: chat template, truncation

``prepare_pairs`` runs all three and stops with a ``DataError`` when too many rows are bad.
This package knows tokenizers and datasets, never models.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

from slimepo.data.formats import PreferencePair, ValidationReport, normalize_rows, weighted_pairs
from slimepo.data.sources import DataError, Origin, Row, load_rows
from slimepo.data.tokenize import TokenizedPair, check_lengths, tokenize_pairs

logger = logging.getLogger(__name__)


def demo_file(split: str) -> str:
    """Path of the shipped demo preference set: ``train`` (403 pairs) or ``test`` (104)."""
    return str(resources.files("slimepo.data") / "demo" / f"{split}.jsonl")


def prepare_pairs(
    source: str | os.PathLike[str],
    tokenizer: Any,
    *,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    chat_template: str | os.PathLike[str] = "auto",
    max_bad_fraction: float = 0.05,
    weight_column: str | None = None,
) -> tuple[list[TokenizedPair], ValidationReport]:
    """Load, validate and tokenize a preference dataset.

    ``weight_column``: the column (as the source names it) holding each pair's weight
    w_i >= 0, stored as ``TokenizedPair.weight``; a row whose weight is missing or bad is
    a bad row. Raises ``DataError`` if more than ``max_bad_fraction`` of the rows are
    skipped (the message lists reasons and example rows), if no pair is left, or if every
    pair left weighs 0.
    """
    check_lengths(max_length, max_prompt_length)
    report = ValidationReport()
    convert = weighted_pairs(weight_column) if weight_column is not None else None
    pairs = normalize_rows(load_rows(source, split=split, columns=columns), report, convert=convert)
    report.check(max_bad_fraction)
    tokenized = tokenize_pairs(
        pairs,
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        chat_template=chat_template,
        report=report,
    )
    report.check(max_bad_fraction)
    if not tokenized:
        raise DataError(f"no usable preference pairs in {source}\n{report}")
    if weight_column is not None and not any(pair.weight > 0 for pair in tokenized):
        raise DataError(f"every pair of {source} has weight 0 in column {weight_column!r}: nothing to train on")
    logger.info("%s", report)
    return tokenized, report


__all__ = [
    "DataError",
    "Origin",
    "PreferencePair",
    "Row",
    "TokenizedPair",
    "ValidationReport",
    "demo_file",
    "load_rows",
    "normalize_rows",
    "prepare_pairs",
    "tokenize_pairs",
]
