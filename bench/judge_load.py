"""What judging one model costs on each judged benchmark, before the model's own answers.

    python bench/judge_load.py

Runs slimepo's own judging (``slimepo.eval.judge.judge_answers``, ``arena_hard.judge_pairs``,
``alpacaeval.judge_pairs``) over every installed prompt with empty answers, against a judge
that replies at once and keeps each request. Prints, per benchmark, the judge requests and
the text they carry without our answers: the questions, judge prompts, references and
baseline answers, in characters and in tokens of the embedded default model's tokenizer
(a stand-in: each judge's own tokenizer counts differently). Our answers come on top, once
per request that shows them (MT-Bench's turn-2 requests show both turns' answers). No
model is loaded and nothing is timed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from slimepo.eval import alpacaeval, arena_hard, mtbench
from slimepo.eval.judge import judge_answers
from slimepo.model import load_tokenizer
from slimepo.testing import FixedJudge


def mt_bench(judge: FixedJudge) -> int:
    questions = mtbench.load_questions()
    answers = [{"question_id": q["question_id"], "choices": [{"index": 0, "turns": ["", ""]}]} for q in questions]
    judge_answers(questions, answers, judge)
    return len(questions)


def arena_hard_v2(judge: FixedJudge) -> int:
    questions = arena_hard.load_questions()
    arena_hard.judge_pairs(questions, {q["uid"]: "" for q in questions}, judge)
    return len(questions)


def alpaca_eval(judge: FixedJudge) -> int:
    records = alpacaeval.load_instructions()
    alpacaeval.judge_pairs(records, {r["key"]: "" for r in records}, judge)
    return len(records)


BENCHES: dict[str, tuple[Callable[[FixedJudge], int], str]] = {
    "mt-bench": (mt_bench, "Rating: [[5]]"),
    "arena-hard": (arena_hard_v2, "[[A=B]]"),
    "alpaca-eval": (alpaca_eval, "m"),
}


def main() -> None:
    tokenizer = load_tokenizer("default")
    print("| `--bench` | prompts | judge requests | judge input without our answers: characters | tokens (SmolLM2 tokenizer) | tokens per request, median |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (judge_all, reply) in BENCHES.items():
        judge = FixedJudge(reply)
        prompts = judge_all(judge)
        texts = ["\n".join(m["content"] for m in messages) for messages in judge.requests]
        tokens = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        print(f"| `{name}` | {prompts} | {len(texts)} | {sum(map(len, texts)):,} | {sum(tokens):,} | "
              f"{statistics.median(tokens):,.0f} |")


if __name__ == "__main__":
    main()
