"""Prompt rows to answer: read with :func:`slimepo.data.load_rows` (any source, TRL's formats),
checked one by one; a row that cannot be a prompt is kept as a :class:`BadPrompt` with its
row number and reason, never dropped silently.

A prompt is the row's ``prompt``: text (one user turn) or a list of ``{role, content}``
messages (an optional system turn, then user/assistant turns ending with a user turn). Its
key is the row's ``key`` (IFEval's name), else ``id``, else ``row-N`` (its 1-based row).
The whole row stays with the prompt: scorers read their own columns from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slimepo.data import DataError, Row, demo_file, load_rows
from slimepo.generation import Message

#: Why a row is not a prompt.
REASONS = {
    "invalid_json": "the line is not valid UTF-8 JSON (or is cut off)",
    "invalid_csv": "the record is not valid UTF-8",
    "missing_prompt": "the row has no prompt",
    "wrong_type": "the row or its prompt is neither text nor a list of {role, content} messages",
    "empty_text": "the prompt or one of its messages is empty",
    "bad_roles": "the messages are not [system], user, assistant, ..., user",
    "duplicate_key": "another row has the same key",
    "unscorable": "the scorer cannot score answers to it",
}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt: ``key``; ``row`` (``file:row``); ``prompt`` as the row has it (text or messages);
    ``conversation`` (the messages the model answers); ``data`` (the whole row)."""

    key: str
    row: str
    prompt: str | list[Message]
    conversation: list[Message]
    data: Mapping[str, Any]

    @property
    def request(self) -> str:
        """The last user turn's text."""
        return self.conversation[-1]["content"]


@dataclass(frozen=True)
class BadPrompt:
    """A row left out: where, its key when it has one, the reason (of :data:`REASONS`) and detail."""

    row: str
    key: str | None
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "key": self.key, "reason": self.reason, "detail": self.detail or REASONS[self.reason]}


def source_path(source: str | os.PathLike[str], split: str) -> str:
    """``demo`` is the shipped demo set's ``split`` file; anything else is itself."""
    return demo_file(split) if str(source) == "demo" else str(source)


def read_prompts(
    source: str | os.PathLike[str], split: str = "train", columns: Mapping[str, str] | None = None,
    max_prompts: int | None = None,
) -> tuple[list[PromptRecord], list[BadPrompt]]:
    """The prompts of ``source`` (the first ``max_prompts`` rows), and the rows that are not prompts."""
    rows = load_rows(source_path(source, split), split=split, columns=columns)
    if max_prompts is not None:
        rows = rows[:max_prompts]
    records: list[PromptRecord] = []
    bad: list[BadPrompt] = []
    seen: set[str] = set()
    for row in rows:
        record = _record(row)
        if isinstance(record, BadPrompt):
            bad.append(record)
        elif record.key in seen:
            bad.append(BadPrompt(record.row, record.key, "duplicate_key"))
        else:
            seen.add(record.key)
            records.append(record)
    if not records and not bad:
        raise DataError(f"{source}: no rows")
    return records, bad


def _record(row: Row) -> PromptRecord | BadPrompt:
    where = str(row.origin)
    if row.problem is not None:
        return BadPrompt(where, None, row.problem)
    if not isinstance(row.data, Mapping):
        return BadPrompt(where, None, "wrong_type")
    data = row.data
    key = next((str(data[name]) for name in ("key", "id") if data.get(name) is not None), f"row-{row.origin.row}")
    prompt = data.get("prompt")
    if prompt is None:
        return BadPrompt(where, key, "missing_prompt")
    conversation = conversation_of(prompt)
    if isinstance(conversation, str):
        return BadPrompt(where, key, conversation)
    return PromptRecord(key, where, prompt, conversation, data)


def conversation_of(prompt: Any) -> list[Message] | str:
    """The messages of a prompt (text is one user turn), or the reason (of :data:`REASONS`) it is none."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}] if prompt.strip() else "empty_text"
    if not isinstance(prompt, list) or not prompt:
        return "wrong_type"
    messages = []
    for message in prompt:
        if not isinstance(message, Mapping) or not all(isinstance(message.get(k), str) for k in ("role", "content")):
            return "wrong_type"
        if not message["content"].strip():
            return "empty_text"
        messages.append({"role": message["role"], "content": message["content"]})
    roles = [m["role"] for m in messages]
    if roles[:1] == ["system"]:
        roles = roles[1:]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if not roles or roles != expected or roles[-1] != "user":
        return "bad_roles"
    return messages
