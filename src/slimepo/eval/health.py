"""Formatting health of generations: the symptoms of collapse a loss curve does not show.

A collapsed model stops emitting its end-of-turn token (it runs to the token budget),
answers with nothing, or loops on the same phrase. Each check is cheap and model-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def generation_health(
    text: str,
    token_ids: list[int] | None,
    eot_ids: set[int],
    max_new_tokens: int,
    ngram: int = 3,
    degenerate_threshold: float = 0.5,
) -> dict[str, Any]:
    """Health of one generation.

    Args:
        text: the decoded response (special tokens removed).
        token_ids: the generated token ids (without the prompt), possibly padded after
            the end of turn; ``None`` when unknown, which makes ``ended`` and
            ``length_tokens`` ``None``.
        eot_ids: ids that end a turn (EOS, ``<|im_end|>``, ``<|eot_id|>``, ...).
        max_new_tokens: the generation budget.
        ngram: n of the word n-grams counted by ``repetition``.
        degenerate_threshold: ``repetition`` above which a generation is degenerate.

    Returns ``{"ended", "empty", "repetition", "degenerate", "length_tokens"}``:

    - ended: an end-of-turn id occurs within the first ``max_new_tokens`` tokens;
    - empty: ``text`` is whitespace only;
    - repetition: ``1 − unique / total`` over the word n-grams of ``text`` (0 with
      fewer than ``ngram`` words), e.g. a phrase repeated forever tends to 1;
    - degenerate: ``repetition > degenerate_threshold``;
    - length_tokens: tokens up to and including the first end-of-turn id (all of
      them when none occurs).
    """
    ended = length_tokens = None
    if token_ids is not None:
        first_eot = next((i for i, t in enumerate(token_ids) if t in eot_ids), None)
        ended = first_eot is not None and first_eot < max_new_tokens
        length_tokens = len(token_ids) if first_eot is None else first_eot + 1
    repetition = ngram_repetition(text, ngram)
    return {
        "ended": ended,
        "empty": not text.strip(),
        "repetition": repetition,
        "degenerate": repetition > degenerate_threshold,
        "length_tokens": length_tokens,
    }


def ngram_repetition(text: str, n: int = 3) -> float:
    """``1 − unique / total`` over the whitespace-separated word n-grams of ``text``."""
    words = text.split()
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def summarize_health(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Rates and means over the dicts of :func:`generation_health`.

    Returns ``{"count", "ended_rate", "empty_rate", "degenerate_rate",
    "repetition_mean", "length_tokens_mean"}``; each statistic is taken over the
    records where its value is known (not ``None``) and is ``None`` when none is.
    """
    records = list(records)

    def mean_of(key: str) -> float | None:
        values = [float(r[key]) for r in records if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {
        "count": len(records),
        "ended_rate": mean_of("ended"),
        "empty_rate": mean_of("empty"),
        "degenerate_rate": mean_of("degenerate"),
        "repetition_mean": mean_of("repetition"),
        "length_tokens_mean": mean_of("length_tokens"),
    }
