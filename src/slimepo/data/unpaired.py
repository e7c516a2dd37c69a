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
the mismatched completions that KTO's reference point is estimated on; in training
:class:`StepRotation` chooses them over each optimizer step's examples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slimepo.data.batching import WholeRounds
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
    (another example's of the step; about as long when batches are bucketed by length, but for the
    first of each batch, which takes the previous batch's last completion: :class:`StepRotation`)."""
    return len(example.prompt_ids) + 2 * len(example.completion_ids)


def previous_in_order(count: int) -> list[int | None]:
    """Where each of ``count`` examples of a KL batch, in order, takes its mismatched completion:
    from the example before it (the last, for the first), the completions rotated by one as TRL
    makes its KL batch. ``[None]`` for a lone example: no other completion, no mismatched pair."""
    return [None] if count == 1 else [(k - 1) % count for k in range(count)]


@dataclass(frozen=True)
class KlExample:
    """An example and the completion its KL batch gives its prompt (None: no mismatched pair)."""

    example: TokenizedExample
    mismatched_ids: list[int] | None


class StepRotation(WholeRounds):
    """:class:`WholeRounds` for KTO: each example index comes with the index of the example whose
    completion its prompt is paired with, over a whole optimizer step.

    A step is ``accumulation`` rounds, ``accumulation × processes`` consecutive batches (fewer at
    the end of an epoch, as the Trainer groups them). Its examples, in the order the batches are
    dealt, are its KL batch: :func:`previous_in_order` over all of them. That order is the
    sampler's, the same however the step is split into processes and micro-batches, so the
    mismatched pairs, and KTO's reference point on them, are the step's: 1 process at batch 8,
    1 at batch 4 accumulating 2, and 2 at batch 4 make the same pairs. With one batch on one
    process, they are the batch's own rotation (:class:`UnpairedCollator`).

    Yields lists of ``(index, mismatched index or None)``, read by :class:`KlExamples`.
    """

    def __init__(self, batch_sampler, processes: int, accumulation: int):
        super().__init__(batch_sampler, processes)
        self.accumulation = accumulation

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        step: list[list[int]] = []
        for batch in super().__iter__():
            step.append(batch)
            if len(step) == self.processes * self.accumulation:
                yield from self._paired(step)
                step = []
        yield from self._paired(step)

    @staticmethod
    def _paired(step: list[list[int]]) -> Iterator[list[tuple[int, int | None]]]:
        order = [index for batch in step for index in batch]
        partners = iter(previous_in_order(len(order)))
        for batch in step:
            yield [(index, None if (k := next(partners)) is None else order[k]) for index in batch]


@dataclass(frozen=True)
class KlExamples:
    """``examples`` read by the ``(index, mismatched index or None)`` that :class:`StepRotation` deals."""

    examples: Sequence[TokenizedExample]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: tuple[int, int | None]) -> KlExample:
        own, partner = index
        return KlExample(self.examples[own], None if partner is None else self.examples[partner].completion_ids)


@dataclass
class UnpairedCollator(PairCollator):
    """Batches of :class:`TokenizedExample`, each with a mismatched completion for the KL batch.

    Given plain examples, the batch is its own KL batch: example ``i`` of a batch of B gets the
    completion of example ``i − 1`` (of ``B − 1`` for ``i = 0``), :func:`previous_in_order`, so
    the mismatched completions are the batch's own completions, each under another prompt (held-out
    batches). Given :class:`KlExample` items, each takes the completion it carries (training: its
    optimizer step's rotation, :class:`StepRotation`). That mismatched completion is cut to
    ``max_length − len(prompt_i)`` tokens when ``max_length`` is set.

    The batch is :class:`PairCollator`'s (any layout) for the pairs ``(x_i, y_i, y'_i)``: its
    ``chosen_*`` keys describe each example's own completion ``y_i``, its ``rejected_*`` keys
    the mismatched one ``y'_i``, so one forward scores both. Added: ``desirable`` ``[B]``
    bool, and ``kl_mask`` ``[B]`` bool, False where an example has no mismatched pair (a batch, or
    step, of one example: its own completion fills the slot, scored for nothing).
    """

    max_length: int | None = None

    def __call__(self, examples: Sequence[TokenizedExample | KlExample]) -> dict[str, Tensor]:
        if examples and not isinstance(examples[0], KlExample):
            examples = [KlExample(e, None if k is None else examples[k].completion_ids)
                        for e, k in zip(examples, previous_in_order(len(examples)))]
        rows = []
        for item in examples:
            example, mismatched = item.example, item.mismatched_ids
            if mismatched is None:  # a placeholder, left out by kl_mask
                mismatched = example.completion_ids
            if self.max_length is not None:
                mismatched = mismatched[: max(1, self.max_length - len(example.prompt_ids))]
            rows.append(TokenizedPair(example.prompt_ids, example.completion_ids, mismatched, example.origin))
        batch = super().__call__(rows)
        batch["desirable"] = torch.tensor([item.example.desirable for item in examples], dtype=torch.bool)
        batch["kl_mask"] = torch.tensor([item.mismatched_ids is not None for item in examples], dtype=torch.bool)
        return batch
