"""From scored answers to preference pairs, one prompt at a time.

An answer can stand in a pair when it has a score and text (TRL's readers, and slimepo's,
refuse an empty response). A candidate pair ``(chosen, rejected)`` has the gap
``g = score(chosen) - score(rejected)`` and is kept iff ``g > 0`` and ``g >= min_gap``
(to within 1e-9, so that a gap of 1/3 between IFEval shares meets ``--min-gap 0.3333333333``)
and the two texts differ.

- ``best-worst``: one candidate per prompt, its best and its worst answer (the first
  sampled among equals);
- ``all``: every pair of answers, the higher-scored one chosen; a pair of texts already
  paired is not repeated.

An answer the token budget cut (it did not end with the end-of-turn token) is closed with
that token in training like any other, so a cut chosen answer teaches the model to end
where the budget stopped it. ``cut_answers``:

- ``keep`` (TRL's online trainers alike): cut answers pair as any other;
- ``reject``: a cut answer is never chosen. ``best-worst`` pairs the best answer that ended
  with the worst of all; ``all`` drops the candidates whose chosen answer was cut
  (``cut_chosen``); a prompt none of whose usable answers ended gives no pair
  (``none_ended``);
- ``drop``: cut answers stand in no pair (counted in ``answers_left_out["cut"]``).

Nothing is dropped silently: :class:`PairCounts` counts the answers left out (no score,
empty), the candidate pairs not kept (``tie``, ``below_gap``, ``identical_text``,
``duplicate``, ``cut_chosen``) and the prompts that gave no pair, by reason
(``too_few_answers``: fewer than two usable; ``none_ended``; ``all_tied``: every usable
answer scored the same; ``below_gap``; ``identical_text``), with their keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Slack of the gap test: scores are floats.
GAP_TOLERANCE = 1e-9
#: What a pair may hold of the answers the token budget cut (module docstring).
CUT_ANSWERS = ("keep", "reject", "drop")


@dataclass(frozen=True)
class Answer:
    """One sampled answer: its index among the prompt's samples, text, score (None: unscored) and
    whether it ended with the end-of-turn token (False: the token budget cut it)."""

    index: int
    text: str
    score: float | None
    ended: bool = True


@dataclass
class PairCounts:
    answers_left_out: Counter[str] = field(default_factory=Counter)
    candidates_dropped: Counter[str] = field(default_factory=Counter)
    prompts_without_pair: dict[str, list[str]] = field(default_factory=dict)
    prompts_with_pairs: int = 0
    pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs, "prompts_with_pairs": self.prompts_with_pairs,
            "prompts_without_pair": {reason: len(keys) for reason, keys in sorted(self.prompts_without_pair.items())},
            "prompts_without_pair_keys": dict(sorted(self.prompts_without_pair.items())),
            "candidate_pairs_dropped": dict(sorted(self.candidates_dropped.items())),
            "answers_left_out": dict(sorted(self.answers_left_out.items())),
        }


def select_pairs(key: str, answers: Sequence[Answer], pairing: str, min_gap: float,
                 counts: PairCounts, cut_answers: str = "keep") -> list[tuple[Answer, Answer]]:
    """The ``(chosen, rejected)`` pairs of one prompt's answers; ``counts`` records what was left out."""
    if cut_answers not in CUT_ANSWERS:
        raise ValueError(f"cut_answers must be one of {', '.join(CUT_ANSWERS)}, got {cut_answers!r}")
    usable = []
    for answer in answers:
        if answer.score is None:
            counts.answers_left_out["unscored"] += 1
        elif not answer.text.strip():
            counts.answers_left_out["empty"] += 1
        elif cut_answers == "drop" and not answer.ended:
            counts.answers_left_out["cut"] += 1
        else:
            usable.append(answer)
    if len(usable) < 2:
        return _without_pair(key, "too_few_answers", counts)
    choosable = [a for a in usable if a.ended] if cut_answers == "reject" else usable
    if not choosable:
        return _without_pair(key, "none_ended", counts)
    if pairing == "best-worst":
        best = max(choosable, key=lambda a: (a.score, -a.index))
        worst = min(usable, key=lambda a: (a.score, a.index))
        candidates = [(best, worst)]
    elif pairing == "all":
        candidates = [(a, b) if a.score >= b.score else (b, a) for i, a in enumerate(usable) for b in usable[i + 1 :]]
    else:
        raise ValueError(f"pairing must be best-worst or all, got {pairing!r}")
    pairs: list[tuple[Answer, Answer]] = []
    seen: set[tuple[str, str]] = set()
    for chosen, rejected in candidates:
        reason = _dropped(chosen, rejected, min_gap)
        if reason is None and cut_answers == "reject" and not chosen.ended:
            reason = "cut_chosen"
        if reason is None and (chosen.text.strip(), rejected.text.strip()) in seen:
            reason = "duplicate"
        if reason is not None:
            counts.candidates_dropped[reason] += 1
            continue
        seen.add((chosen.text.strip(), rejected.text.strip()))
        pairs.append((chosen, rejected))
    if not pairs:
        scores = [a.score for a in usable]
        spread = max(scores) - min(scores)
        reason = "all_tied" if spread == 0 else "below_gap" if spread + GAP_TOLERANCE < min_gap else "identical_text"
        return _without_pair(key, reason, counts)
    counts.prompts_with_pairs += 1
    counts.pairs += len(pairs)
    return pairs


def _dropped(chosen: Answer, rejected: Answer, min_gap: float) -> str | None:
    gap = chosen.score - rejected.score
    if gap <= 0:
        return "tie"
    if gap + GAP_TOLERANCE < min_gap:
        return "below_gap"
    if chosen.text.strip() == rejected.text.strip():
        return "identical_text"
    return None


def _without_pair(key: str, reason: str, counts: PairCounts) -> list[tuple[Answer, Answer]]:
    counts.prompts_without_pair.setdefault(reason, []).append(key)
    return []
