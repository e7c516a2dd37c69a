"""Unpaired examples (TRL's unpaired preference format) for KTO: rows, tokens, batches.

A row is ``{"prompt", "completion", "label"}`` (extra columns are ignored): ``label`` true
for a desirable completion, false for an undesirable one (JSON booleans; the strings
``"true"``/``"false"``, any case, as a CSV holds them). Prompt and completion are plain
text, or conversational as in the pair formats (:mod:`slimepo.data.formats`): ``prompt``
a message list ending with a user turn, ``completion`` the assistant turn(s) as messages
or a string; a completion that repeats the prompt's turns first has them removed. A row
that fits none of this is skipped and counted in the :class:`ValidationReport` under its
reason, row-numbered, and ``max_bad_fraction`` applies as for pairs.

    rows     = load_rows(source, split, columns)            # sources.py
    examples = normalize_unpaired_rows(rows, report)        # validation
    tokens   = tokenize_examples(examples, tokenizer, ...)  # as a pair's response is tokenized

:func:`prepare_examples` runs all three. :class:`UnpairedCollator` makes the batches, with
the mismatched completions that KTO's reference point is estimated on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slimepo.data.collate import PairCollator
from slimepo.data.formats import (
    Messages,
    PreferencePair,
    ValidationReport,
    _as_messages,
    _BadRow,
    _check_not_empty,
    _check_roles,
    _required,
    _starts_with,
    _text_or_messages,
    normalize_rows,
)
from slimepo.data.sources import DataError, Origin, Row, load_rows
from slimepo.data.tokenize import TokenizedPair, check_lengths, tokenize_pairs

logger = logging.getLogger(__name__)

UNPAIRED_FIELDS = ("prompt", "completion", "label")


@dataclass(frozen=True)
class UnpairedExample:
    """One validated example: plain-text ``prompt`` and ``completion``, or a message list
    ending with a user turn and the assistant turn(s) that answer it."""

    prompt: Messages | str
    completion: Messages | str
    desirable: bool
    origin: Origin


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example; ``prompt_ids + completion_ids`` is its sequence."""

    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool
    origin: Origin


def new_report() -> ValidationReport:
    """A report for unpaired rows (its hints name their columns)."""
    return ValidationReport(fields=UNPAIRED_FIELDS)


def normalize_unpaired_rows(rows: Iterable[Row], report: ValidationReport | None = None) -> list[UnpairedExample]:
    """Validate ``rows``; return the good ones as examples and count the rest in ``report``."""
    return normalize_rows(rows, new_report() if report is None else report, convert=_to_example)


def _to_example(data: Any, origin: Origin) -> UnpairedExample:
    if not isinstance(data, dict):
        raise _BadRow("wrong_type")
    prompt = _text_or_messages(_required(data, "prompt"))
    completion = _text_or_messages(_required(data, "completion"))
    desirable = _label(_required(data, "label"))
    if isinstance(prompt, str) and isinstance(completion, str):
        _check_not_empty([prompt, completion])
        return UnpairedExample(prompt, completion, desirable, origin)
    prompt_msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    completion_msgs = _as_messages(completion)
    if _starts_with(completion_msgs, prompt_msgs):  # a whole conversation: its first turns are the prompt
        completion_msgs = completion_msgs[len(prompt_msgs) :]
    _check_not_empty([m["content"] for m in prompt_msgs + completion_msgs])
    _check_roles(prompt_msgs, completion_msgs, completion_msgs)
    return UnpairedExample(prompt_msgs, completion_msgs, desirable, origin)


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _BadRow("bad_label")


def tokenize_examples(
    examples: Sequence[UnpairedExample],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int,
    chat_template: str | os.PathLike[str] = "auto",
    report: ValidationReport | None = None,
) -> list[TokenizedExample]:
    """Tokenize and truncate ``examples`` exactly as a pair's prompt and response would be
    (:func:`slimepo.data.tokenize.tokenize_pairs`: chat template, end-of-turn token,
    truncation); examples that cannot be used are counted in ``report``."""
    labels = {example.origin: example.desirable for example in examples}
    if len(labels) != len(examples):
        raise ValueError("every example needs its own origin (file and row)")
    # Each completion stands on both sides of a pair, so it gets a response's exact tokens.
    pairs = [PreferencePair(e.prompt, e.completion, e.completion, e.origin) for e in examples]
    tokenized = tokenize_pairs(pairs, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                               chat_template=chat_template, report=report)
    return [TokenizedExample(p.prompt_ids, p.chosen_ids, labels[p.origin], p.origin) for p in tokenized]


def prepare_examples(
    source: str | os.PathLike[str],
    tokenizer: Any,
    *,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    chat_template: str | os.PathLike[str] = "auto",
    max_bad_fraction: float = 0.05,
) -> tuple[list[TokenizedExample], ValidationReport]:
    """Load, validate and tokenize an unpaired dataset (the unpaired twin of ``prepare_pairs``).

    Raises ``DataError`` if more than ``max_bad_fraction`` of the rows are skipped (a dataset
    of preference pairs is named as such) or if no example is left.
    """
    check_lengths(max_length, max_prompt_length)
    report = new_report()
    examples = normalize_unpaired_rows(load_rows(source, split=split, columns=columns), report)
    report.check(max_bad_fraction)
    tokenized = tokenize_examples(examples, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                                  chat_template=chat_template, report=report)
    report.check(max_bad_fraction)
    if not tokenized:
        raise DataError(f"no usable unpaired examples in {source}\n{report}")
    counts = sum(e.desirable for e in tokenized), sum(not e.desirable for e in tokenized)
    logger.info("%s\n  %d desirable, %d undesirable", report, *counts)
    return tokenized, report


def example_tokens(example: TokenizedExample) -> int:
    """Tokens an example costs in a shared row: prompt, completion and a mismatched completion
    (another example's; about as long when batches are bucketed by length)."""
    return len(example.prompt_ids) + 2 * len(example.completion_ids)


@dataclass
class UnpairedCollator(PairCollator):
    """Batches of :class:`TokenizedExample`, each with a mismatched completion for the KL batch.

    Example ``i`` of a batch of B gets the completion of example ``i − 1`` (of ``B − 1`` for
    ``i = 0``): the completions rotated by one within the batch, as TRL makes its KL batch,
    so the mismatched completions are the batch's own completions, each under another prompt.
    That mismatched completion is cut to ``max_length − len(prompt_i)`` tokens when
    ``max_length`` is set.

    The batch is :class:`PairCollator`'s (any layout) for the pairs ``(x_i, y_i, y'_i)``: its
    ``chosen_*`` keys describe each example's own completion ``y_i``, its ``rejected_*`` keys
    the mismatched one ``y'_i``, so one forward scores both. Added: ``desirable`` ``[B]``
    bool, and ``kl_mask`` ``[B]`` bool, all False for a batch of one example (its only
    completion is its own: no mismatched pair).
    """

    max_length: int | None = None

    def __call__(self, examples: Sequence[TokenizedExample]) -> dict[str, Tensor]:
        rows = []
        for i, example in enumerate(examples):
            mismatched = examples[i - 1].completion_ids
            if self.max_length is not None:
                mismatched = mismatched[: max(1, self.max_length - len(example.prompt_ids))]
            rows.append(TokenizedPair(example.prompt_ids, example.completion_ids, mismatched, example.origin))
        batch = super().__call__(rows)
        batch["desirable"] = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
        batch["kl_mask"] = torch.full((len(examples),), len(examples) > 1, dtype=torch.bool)
        return batch
