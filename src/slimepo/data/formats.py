"""Turn raw rows of any of TRL's preference formats into validated ``PreferencePair``s.

Accepted row shapes (extra columns are ignored):

- explicit prompt, plain text: ``{"prompt": str, "chosen": str, "rejected": str}``;
- conversational: ``prompt`` a list of ``{"role", "content"}`` messages (optional
  system turn, then user/assistant turns ending with a user turn), ``chosen`` and
  ``rejected`` the assistant turn(s), as messages or plain strings;
- implicit prompt: no ``prompt``; ``chosen`` and ``rejected`` are whole conversations
  that share the prompt turns (as in HuggingFaceH4/ultrafeedback_binarized). They are
  split at their longest common message prefix;
- UltraFeedback style: ``prompt`` a string, ``chosen``/``rejected`` whole conversations
  that repeat the prompt as their first turn(s); the shared turns become the prompt.

A row that fits none of these is skipped and counted in a ``ValidationReport`` under
one reason (see ``REASONS``), so bad data gives a report, never a traceback.

With a weight column (:func:`weighted_pairs`, ``--weight-column``) each row also gives its
pair's weight ``w_i >= 0``: a finite JSON number, or its text (as in a CSV).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from slimepo.data.sources import DataError, Origin, Row

Messages = list[dict[str, str]]

REASONS: dict[str, str] = {
    "invalid_json": "the line is not valid UTF-8 JSON (or is cut off)",
    "invalid_csv": "the record is not valid UTF-8",
    "missing_field": (
        "prompt, chosen, rejected (unpaired rows: prompt, completion, label) or a message's "
        "role/content is absent or null"
    ),
    "bad_label": "label is not true or false (unpaired rows)",
    "wrong_type": "a value is neither text nor a list of {role, content} messages",
    "empty_text": "a prompt, response or message is empty or whitespace only",
    "identical_responses": "chosen and rejected are the same",
    "bad_roles": (
        "roles are unknown or out of order, the prompt does not end with a user turn, "
        "or a response does not start and end with an assistant turn"
    ),
    "template_error": "the chat template refused the conversation",
    "empty_after_truncation": "a response has no tokens left after truncation",
    "missing_weight": "the weight column (--weight-column) is absent, null or empty",
    "bad_weight": "the weight is not a finite number >= 0 (a JSON number, or its text in a CSV)",
}


@dataclass(frozen=True)
class PreferencePair:
    """One validated preference example.

    Either all three fields are plain text, or ``prompt`` is a message list (ending with
    a user turn) and ``chosen``/``rejected`` are message lists (assistant turn first and
    last). Messages hold exactly the keys ``role`` and ``content``. ``weight``: the pair's
    w_i >= 0 in every batch mean of the loss (1 unless read from a weight column).
    """

    prompt: Messages | str
    chosen: Messages | str
    rejected: Messages | str
    origin: Origin
    weight: float = 1.0


@dataclass
class ValidationReport:
    """What happened to every row: how many were read, skipped and why, and where.

    ``counts`` maps a reason of ``REASONS`` to its number of skipped rows; ``examples``
    holds the origins of its first ``MAX_EXAMPLES`` rows.
    """

    MAX_EXAMPLES: ClassVar[int] = 5

    total_rows: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Origin]] = field(default_factory=dict)
    template_mismatches: int = 0
    sources: list[str] = field(default_factory=list)
    columns_seen: list[str] = field(default_factory=list)
    #: The fields every row must have: a pair's, or an unpaired example's (prompt, completion, label).
    fields: tuple[str, ...] = ("prompt", "chosen", "rejected")

    def add_row(self, origin: Origin) -> None:
        self.total_rows += 1
        if origin.file not in self.sources:
            self.sources.append(origin.file)

    def add_bad(self, reason: str, origin: Origin) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(origin)

    @property
    def empty_after_truncation(self) -> int:
        return self.counts["empty_after_truncation"]

    @property
    def bad_rows(self) -> int:
        return sum(self.counts.values())

    @property
    def kept_rows(self) -> int:
        return self.total_rows - self.bad_rows

    @property
    def bad_fraction(self) -> float:
        return self.bad_rows / self.total_rows if self.total_rows else 0.0

    def check(self, max_bad_fraction: float) -> None:
        """Raise ``DataError`` if more than ``max_bad_fraction`` of the rows were skipped."""
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if self.bad_fraction <= max_bad_fraction:
            return
        lines = [
            f"{self.bad_rows} of {self.total_rows} rows ({self.bad_fraction:.1%}) from "
            f"{self._source_names()} cannot be used, more than "
            f"max_bad_fraction={max_bad_fraction:g} allows:",
            *self._reason_lines(),
        ]
        if self.counts["missing_field"] and self.columns_seen:
            lines.append(self._columns_hint())
        if self.counts["missing_weight"] and self.columns_seen:
            lines.append(f"The first row has the columns {', '.join(self.columns_seen)}; --weight-column names the "
                         "one holding each pair's weight, as the data names it (columns does not rename it).")
        lines.append("Fix or remove these rows, or raise max_bad_fraction.")
        raise DataError("\n".join(lines))

    def __str__(self) -> str:
        lines = [
            f"{self._source_names()}: {self.total_rows} rows, {self.kept_rows} kept, "
            f"{self.bad_rows} skipped ({self.bad_fraction:.1%})",
            *self._reason_lines(),
        ]
        if self.template_mismatches:
            lines.append(
                f"  chat template mismatches: {self.template_mismatches} pairs "
                "(kept; prompt and responses tokenized separately)"
            )
        return "\n".join(lines)

    def _columns_hint(self) -> str:
        """What the first row's columns say: the other format (pairs vs unpaired), or names to map."""
        seen = set(self.columns_seen)
        pairs = {"chosen", "rejected"} <= seen and "completion" not in seen
        unpaired = {"completion", "label"} <= seen and not {"chosen", "rejected"} & seen
        if "completion" not in self.fields and unpaired:
            return ("These rows are unpaired examples (prompt, completion, label): train on them with --loss kto; "
                    "the other losses need preference pairs (prompt, chosen, rejected).")
        if "completion" in self.fields and pairs:
            return ("These rows are preference pairs (chosen, rejected): --loss kto needs unpaired rows (prompt, "
                    "completion, label); train on pairs with a pairwise loss (slime, dpo, ...).")
        if "completion" in self.fields:
            return (f"The first row has the columns {', '.join(self.columns_seen)}; unpaired rows need the "
                    "columns prompt, completion and label.")
        return (
            f"The first row has the columns {', '.join(self.columns_seen)}; if yours are "
            'named differently, pass columns={"prompt": ..., "chosen": ..., '
            '"rejected": ...}.'
        )

    def _source_names(self) -> str:
        return ", ".join(self.sources) or "no source"

    def _reason_lines(self) -> list[str]:
        # One source is named in the header, so its rows need only their numbers.
        show = (lambda o: str(o.row)) if len(self.sources) == 1 else str
        return [
            f"  {reason}: {count} {'row' if count == 1 else 'rows'} (first: "
            f"{', '.join(map(show, self.examples[reason]))}) - {REASONS.get(reason, reason)}"
            for reason, count in self.counts.most_common()
            if count
        ]


class _BadRow(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalize_rows(
    rows: Iterable[Row], report: ValidationReport | None = None, convert: Callable[[Any, Origin], Any] | None = None
) -> list[PreferencePair]:
    """Validate ``rows``; return the good ones as pairs and count the rest in ``report``.

    ``convert(data, origin)``: what a row becomes (default: a :class:`PreferencePair`); it
    raises ``_BadRow(reason)`` for a row that cannot be used.
    """
    report = ValidationReport() if report is None else report
    convert = convert or _to_pair
    pairs = []
    for row in rows:
        report.add_row(row.origin)
        if not report.columns_seen and isinstance(row.data, dict):
            report.columns_seen = [str(key) for key in row.data]
        if row.problem is not None:
            report.add_bad(row.problem, row.origin)
            continue
        try:
            pairs.append(convert(row.data, row.origin))
        except _BadRow as bad:
            report.add_bad(bad.reason, row.origin)
    return pairs


def weighted_pairs(column: str) -> Callable[[Any, Origin], PreferencePair]:
    """A ``convert`` for :func:`normalize_rows`: the row's pair, its ``weight`` read from ``column``.

    A valid pair whose weight is absent, null or empty counts as ``missing_weight``; one whose
    weight is not a finite number >= 0 (a bool, a negative number, NaN, text that is no
    number) as ``bad_weight``. A weight of 0 is kept: the pair weighs nothing in the loss.
    """

    def convert(data: Any, origin: Origin) -> PreferencePair:
        return dataclasses.replace(_to_pair(data, origin), weight=_weight(data.get(column)))

    return convert


def _weight(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _BadRow("missing_weight")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _BadRow("bad_weight") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _BadRow("bad_weight")
    try:
        weight = float(value)
    except OverflowError:  # an integer too large for a float
        raise _BadRow("bad_weight") from None
    if not math.isfinite(weight) or weight < 0:
        raise _BadRow("bad_weight")
    return weight


def _to_pair(data: Any, origin: Origin) -> PreferencePair:
    if not isinstance(data, dict):
        raise _BadRow("wrong_type")
    chosen = _text_or_messages(_required(data, "chosen"))
    rejected = _text_or_messages(_required(data, "rejected"))
    prompt = data.get("prompt")
    if prompt is not None:
        prompt = _text_or_messages(prompt)

    if isinstance(chosen, str) and isinstance(rejected, str) and not isinstance(prompt, list):
        if prompt is None:
            raise _BadRow("missing_field")
        _check_not_empty([prompt, chosen, rejected])
        if chosen.strip() == rejected.strip():
            raise _BadRow("identical_responses")
        return PreferencePair(prompt, chosen, rejected, origin)

    chosen_msgs, rejected_msgs = _as_messages(chosen), _as_messages(rejected)
    if isinstance(prompt, list):
        prompt_msgs = prompt
        if _starts_with(chosen_msgs, prompt_msgs) and _starts_with(rejected_msgs, prompt_msgs):
            chosen_msgs, rejected_msgs = chosen_msgs[len(prompt) :], rejected_msgs[len(prompt) :]
    else:
        shared = _common_prefix_length(chosen_msgs, rejected_msgs)
        if shared:
            prompt_msgs = chosen_msgs[:shared]
            chosen_msgs, rejected_msgs = chosen_msgs[shared:], rejected_msgs[shared:]
        elif prompt is None:
            # Whole conversations that open with the assistant have their roles out of order;
            # lone assistant turns are responses whose prompt column is missing.
            if any(_opens_with_assistant(m) for m in (chosen_msgs, rejected_msgs)):
                raise _BadRow("bad_roles")
            raise _BadRow("missing_field")
        else:
            prompt_msgs = [{"role": "user", "content": prompt}]

    _check_not_empty([m["content"] for m in prompt_msgs + chosen_msgs + rejected_msgs])
    if _fingerprint(chosen_msgs) == _fingerprint(rejected_msgs):
        raise _BadRow("identical_responses")
    _check_roles(prompt_msgs, chosen_msgs, rejected_msgs)
    return PreferencePair(prompt_msgs, chosen_msgs, rejected_msgs, origin)


def _required(data: dict[str, Any], key: str) -> Any:
    value = data.get(key)
    if value is None:
        raise _BadRow("missing_field")
    return value


def _text_or_messages(value: Any) -> Messages | str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _BadRow("wrong_type")
    if not value:
        raise _BadRow("empty_text")
    messages = []
    for message in value:
        if not isinstance(message, dict):
            raise _BadRow("wrong_type")
        role, content = message.get("role"), message.get("content")
        if role is None or content is None:
            raise _BadRow("missing_field")
        if not isinstance(role, str) or not isinstance(content, str):
            raise _BadRow("wrong_type")
        messages.append({"role": role, "content": content})
    return messages


def _as_messages(response: Messages | str) -> Messages:
    return [{"role": "assistant", "content": response}] if isinstance(response, str) else response


def _check_not_empty(texts: list[str]) -> None:
    if any(not text.strip() for text in texts):
        raise _BadRow("empty_text")


def _starts_with(messages: Messages, prefix: Messages) -> bool:
    return len(messages) > len(prefix) and messages[: len(prefix)] == prefix


def _common_prefix_length(a: Messages, b: Messages) -> int:
    length = 0
    for first, second in zip(a, b):
        if first != second:
            break
        length += 1
    return length


def _opens_with_assistant(messages: Messages) -> bool:
    """A conversation (it has a turn of another role) whose first turn is the assistant's."""
    roles = [m["role"] for m in messages]
    return roles[0] == "assistant" and any(role != "assistant" for role in roles)


def _fingerprint(messages: Messages) -> list[tuple[str, str]]:
    return [(m["role"], m["content"].strip()) for m in messages]


def _check_roles(prompt: Messages, chosen: Messages, rejected: Messages) -> None:
    """Prompt: [system], user, assistant, ..., user. Response: assistant, user, ..., assistant."""
    prompt_roles = [m["role"] for m in prompt]
    if prompt_roles[:1] == ["system"]:
        prompt_roles = prompt_roles[1:]
    if not _alternates(prompt_roles, first="user", second="assistant"):
        raise _BadRow("bad_roles")
    for response in (chosen, rejected):
        if not _alternates([m["role"] for m in response], first="assistant", second="user"):
            raise _BadRow("bad_roles")


def _alternates(roles: list[str], *, first: str, second: str) -> bool:
    """True for first, second, first, ..., first (odd length, at least one)."""
    expected = [first if index % 2 == 0 else second for index in range(len(roles))]
    return len(roles) % 2 == 1 and roles == expected
