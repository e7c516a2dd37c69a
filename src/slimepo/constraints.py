"""Verifiable instruction-following constraints: what to ask for, and how to check it.

A :class:`Constraint` is a family name plus its parameters, e.g.
``Constraint("bullet_count", {"n": 3})``. :func:`instruction` renders it as the sentence
appended to a prompt, and :func:`check` decides whether a response obeys it, with a short
reason when it does not.

Where IFEval has an instruction type for a family, the official IFEval checker decides,
in strict mode (:mod:`slimepo.ifeval_checkers`):

==================  ==========================================================
family              IFEval instruction (kwargs)
==================  ==========================================================
lowercase           change_case:english_lowercase (also: the text is English)
uppercase           change_case:english_capital (also: the text is English)
bullet_count n      detectable_format:number_bullet_lists (num_bullets=n)
avoid_word w        keywords:forbidden_words (forbidden_words=[w]; whole word)
end_phrase p        startend:end_checker (end_phrase=p; any case)
no_commas           punctuation:no_comma (ASCII commas)
==================  ==========================================================

IFEval lacks the other seven, so they keep our own checkers below:

- ``json_key``: IFEval's json_format checks that the reply is JSON, not that it holds a key;
- ``numbered_list``: IFEval has no numbered-list type;
- ``start_word``: IFEval only checks the first word of the i-th of exactly N paragraphs;
- ``paragraph_count``: IFEval's paragraphs are separated by ``***``, ours by a blank line,
  as our instruction says;
- ``include_word``: IFEval's keywords:existence matches a substring ("plan" in "plank"),
  ours asks for the word;
- ``max_words``, ``min_words``: IFEval's length_constraints:number_words counts runs of
  ``\\w`` ("don't" and "push-ups" are two words each), ours count them as one word, as the
  shipped demo answers were written and checked.

Checkers never raise, whatever the text, and an empty or whitespace-only response fails
every family. Our checkers are pure functions of the response text; our words
(:func:`count_words`) are runs of letters or digits, possibly joined by an apostrophe or
hyphen ("don't", "well-known"); IFEval's are runs of ``\\w`` characters.

The study in ``docs/results.md`` was scored with our own checkers for every family,
before the IFEval checkers replaced them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slimepo.ifeval_checkers import follows

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_NUMBERED_LINE = re.compile(r"[ \t]*(\d+)\. ")
_JSON_FENCE = re.compile(r"```(?:json)?(.*)```", re.DOTALL | re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class CheckResult:
    """Whether a response obeys a constraint; ``detail`` says why not ("ok" when it does)."""

    passed: bool
    detail: str


_OK = CheckResult(True, "ok")


def _fail(detail: str) -> CheckResult:
    return CheckResult(False, detail)


def count_words(text: str) -> int:
    """Number of words in ``text``: runs of letters or digits, joined by ' or -."""
    return len(_WORD.findall(text))

def _whole_word(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])", re.IGNORECASE)



def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --- checkers: one per family; ``check`` has already rejected blank responses ---------


def _ifeval(instruction_id: str, kwargs: Callable[..., dict[str, Any]]) -> Callable[..., CheckResult]:
    """A checker deferring to the official IFEval ``instruction_id``, given ``kwargs(**params)``."""

    def checker(response: str, **params: Any) -> CheckResult:
        given = kwargs(**params)
        if follows(instruction_id, given, response):
            return _OK
        return _fail(f"fails IFEval {instruction_id}" + (f" {given}" if given else ""))

    return checker


def _json_key(response: str, key: str) -> CheckResult:
    """The response is one JSON object, bare or in a ```json fence, with top-level ``key``."""
    text = response.strip()
    if text.startswith("```"):
        fenced = _JSON_FENCE.fullmatch(text)
        if fenced is None:
            return _fail("unterminated ``` code fence")
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return _fail("not valid JSON")
    if not isinstance(value, dict):
        return _fail(f"JSON is a {type(value).__name__}, not an object")
    if key not in value:
        return _fail(f"JSON object has no key {key!r}")
    return _OK





def _numbered_list(response: str, n: int) -> CheckResult:
    """Exactly ``n`` lines start with "1. ", "2. ", ... numbered 1 to ``n`` in order."""
    numbers = [m.group(1) for line in response.splitlines() if (m := _NUMBERED_LINE.match(line))]
    if len(numbers) != n:
        return _fail(f"{_plural(len(numbers), 'numbered item')}, expected {n}")
    if numbers != [str(i) for i in range(1, n + 1)]:
        return _fail(f"items are not numbered 1 to {n} in order")
    return _OK






def _max_words(response: str, n: int) -> CheckResult:
    """At least one and at most ``n`` words."""
    words = count_words(response)
    if words == 0:
        return _fail("no words")
    if words > n:
        return _fail(f"{words} words, at most {n} allowed")
    return _OK


def _min_words(response: str, n: int) -> CheckResult:
    """At least ``n`` words."""
    words = count_words(response)
    if words < n:
        return _fail(f"{_plural(words, 'word')}, at least {n} required")
    return _OK


def _include_word(response: str, word: str) -> CheckResult:
    """``word`` appears as a whole word, ignoring case."""
    if _whole_word(word).search(response) is None:
        return _fail(f"missing the word {word!r}")
    return _OK



def _start_word(response: str, word: str) -> CheckResult:
    """The first word is ``word``, ignoring case and any leading punctuation or markup."""
    first = _WORD.search(response)
    if first is None:
        return _fail("no words")
    if first.group(0).casefold() != word.casefold():
        return _fail(f"starts with {first.group(0)!r}, not {word!r}")
    return _OK


def _paragraph_count(response: str, n: int) -> CheckResult:
    """Exactly ``n`` non-empty paragraphs, separated by blank lines."""
    found = sum(1 for part in _PARAGRAPH_BREAK.split(response) if part.strip())
    if found != n:
        return _fail(f"{_plural(found, 'paragraph')}, expected {n}")
    return _OK



# --- parameter validators: return what is wrong with a value, or None ------------------


def _positive_int(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"must be a positive integer, got {value!r}"
    return None


def _single_word(value: object) -> str | None:
    if not isinstance(value, str) or _WORD.fullmatch(value) is None:
        return f"must be a single word of letters or digits, got {value!r}"
    return None


def _text(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        return f"must be a non-empty string without surrounding whitespace, got {value!r}"
    return None


@dataclass(frozen=True)
class _Family:
    checker: Callable[..., CheckResult]
    params: Mapping[str, Callable[[object], str | None]]
    # str.format template over the params, plus {s}: "" when n == 1, else "s".
    instruction: str


_REGISTRY: dict[str, _Family] = {
    "json_key": _Family(_json_key, {"key": _text}, 'Reply with only a JSON object that has the key "{key}".'),
    "lowercase": _Family(_ifeval("change_case:english_lowercase", dict), {}, "Answer in all lowercase letters."),
    "uppercase": _Family(_ifeval("change_case:english_capital", dict), {}, "Answer in all capital letters."),
    "bullet_count": _Family(
        _ifeval("detectable_format:number_bullet_lists", lambda n: {"num_bullets": n}),
        {"n": _positive_int},
        'Use exactly {n} bullet point{s}, each on its own line starting with "- ".',
    ),
    "numbered_list": _Family(
        _numbered_list,
        {"n": _positive_int},
        'Give a numbered list of exactly {n} item{s}, with lines starting "1. ", "2. " and so on.',
    ),
    "max_words": _Family(_max_words, {"n": _positive_int}, "Answer in at most {n} words."),
    "min_words": _Family(_min_words, {"n": _positive_int}, "Answer in at least {n} words."),
    "include_word": _Family(_include_word, {"word": _single_word}, 'Include the word "{word}" in your answer.'),
    "avoid_word": _Family(
        _ifeval("keywords:forbidden_words", lambda word: {"forbidden_words": [word]}),
        {"word": _single_word},
        'Do not use the word "{word}".',
    ),
    "end_phrase": _Family(
        _ifeval("startend:end_checker", lambda phrase: {"end_phrase": phrase}),
        {"phrase": _text},
        'End your answer with the exact phrase "{phrase}"',
    ),
    "start_word": _Family(_start_word, {"word": _single_word}, 'Start your answer with the word "{word}".'),
    "paragraph_count": _Family(
        _paragraph_count,
        {"n": _positive_int},
        "Write exactly {n} paragraph{s}, separated by a blank line.",
    ),
    "no_commas": _Family(_ifeval("punctuation:no_comma", dict), {}, "Do not use any commas in your answer."),
}

FAMILIES: tuple[str, ...] = tuple(_REGISTRY)


@dataclass(frozen=True)
class Constraint:
    """One verifiable constraint: a family from :data:`FAMILIES` and its parameters.

    Validated on construction; an invalid family or parameter raises ``ValueError`` naming
    it. ``params`` is copied, so later changes to the caller's dict do not leak in.
    """

    family: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = _REGISTRY.get(self.family) if isinstance(self.family, str) else None
        if spec is None:
            raise ValueError(
                f"unknown constraint family {self.family!r}; valid families: " + ", ".join(FAMILIES)
            )
        if not isinstance(self.params, Mapping):
            raise ValueError(f"{self.family}: params must be a dict, got {self.params!r}")
        expected, given = set(spec.params), set(self.params)
        if given != expected:
            raise ValueError(
                f"{self.family}: expected params {sorted(expected)}, got {sorted(map(str, given))}"
            )
        for name, validate in spec.params.items():
            problem = validate(self.params[name])
            if problem is not None:
                raise ValueError(f"{self.family}: param {name!r} {problem}")
        object.__setattr__(self, "params", dict(self.params))

    def to_dict(self) -> dict[str, Any]:
        """``{"family": ..., "params": {...}}``, the form stored in dataset rows."""
        return {"family": self.family, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraint:
        """Inverse of :meth:`to_dict`; ``params`` may be omitted for families without any."""
        if not isinstance(data, Mapping) or "family" not in data:
            raise ValueError(f"a constraint needs a 'family' key, got {data!r}")
        extra = set(data) - {"family", "params"}
        if extra:
            raise ValueError(f"unexpected constraint keys {sorted(map(str, extra))}")
        return cls(data["family"], data.get("params", {}))


def check(constraint: Constraint, response: str) -> CheckResult:
    """Whether ``response`` obeys ``constraint``. Blank responses fail every family."""
    if not response.strip():
        return _fail("empty response")
    return _REGISTRY[constraint.family].checker(response, **constraint.params)


def instruction(constraint: Constraint) -> str:
    """The sentence appended to a prompt to ask for ``constraint``."""
    template = _REGISTRY[constraint.family].instruction
    return template.format(s="" if constraint.params.get("n") == 1 else "s", **constraint.params)
