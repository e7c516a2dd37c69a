"""Arena-Hard: judge prompts, verdicts, both game orders and the score, against the fake judge server."""

import pytest

from slimepo.eval import arena_hard
from slimepo.eval.benchmarks.arena_hard import answer_arena_hard
from slimepo.eval.judge import JudgeClient
from slimepo.generation.base import Decoding
from slimepo.testing import FixedJudge, tiny_model, tiny_tokenizer

HARD = {"uid": "h1", "category": "hard_prompt", "prompt": "Prove it."}
CREATIVE = {"uid": "c1", "category": "creative_writing", "prompt": "Write a poem."}
BASELINES = {"hard_prompt": {"h1": "baseline proof", "h2": "baseline two"}, "creative_writing": {"c1": "baseline poem"}}


def test_installed_questions_and_baselines_are_arena_hard_v2():
    questions, baselines = arena_hard.load_questions(), arena_hard.load_baselines()

    assert len(questions) == 750
    assert sum(q["category"] == "creative_writing" for q in questions) == 250
    assert all(q["uid"] in baselines[q["category"]] for q in questions)


@pytest.mark.parametrize(("judgment", "verdict"), [
    ("A is better [[A>B]]. On reflection: [[B>>A]]", "B>>A"),
    ("verdict: [a=b]", "A=B"),
    ("[[A>B]] beats the single-bracket [B>A]", "A>B"),
    ("no verdict at all [[7]]", None),
])
def test_verdict_is_the_last_double_bracket_label_else_the_last_single_one(judgment, verdict):
    assert arena_hard.parse_verdict(judgment) == verdict


def test_judge_messages_put_the_answers_in_their_slots_and_pick_the_prompt_by_category():
    system, user = arena_hard.judge_messages(HARD, "first", "second")

    assert "generating your own answer" in system["content"]
    assert "generating your own answer" not in arena_hard.judge_messages(CREATIVE, "a", "b")[0]["content"]
    assert user["content"] == (
        "<|User Prompt|>\nProve it.\n\n<|The Start of Assistant A's Answer|>\nfirst\n<|The End of Assistant A's Answer|>"
        "\n\n<|The Start of Assistant B's Answer|>\nsecond\n<|The End of Assistant B's Answer|>"
    )


def record(category, first, second):
    return {"uid": "x", "category": category, "games": [{"verdict": first}, {"verdict": second}]}


def test_score_counts_our_battles_from_both_orders_with_weight_three_for_significant():
    records = [
        record("hard_prompt", "B>>A", "A>>B"),  # ours much better in both orders: 6 battles won
        record("hard_prompt", "A>B", "B>A"),  # baseline slightly better in both: 2 lost
        record("creative_writing", "A=B", "A=B"),  # 2 ties
        record("creative_writing", None, "A>B"),  # no verdict in game 1: left out
    ]

    summary = arena_hard.summarize_verdicts(records)

    assert summary["score"] == pytest.approx((6 + 0 + 1) / 10)
    assert summary["battles"] == 10 and (summary["judged"], summary["unjudged"]) == (3, 1)
    assert summary["per_category"]["hard_prompt"]["score"] == pytest.approx(6 / 8)
    assert summary["per_category"]["creative_writing"]["score"] == 0.5
    assert summary["ci_lower"] <= summary["score"] <= summary["ci_upper"]
    assert arena_hard.summarize_verdicts([])["score"] is None


def test_pairs_are_judged_in_both_orders_through_the_judge_api(judge_url):
    questions = [HARD, {**HARD, "uid": "h2"}, CREATIVE]
    answers = {"h1": "mine FAKE:q1:ours=much", "h2": "mine FAKE:q2:ours=worse", "c1": "mine FAKE:q3:garbage"}

    records = arena_hard.judge_pairs(questions, answers, JudgeClient(judge_url, "judge"), baselines=BASELINES)

    assert [[g["verdict"] for g in r["games"]] for r in records] == [["B>>A", "A>>B"], ["A>B", "B>A"], [None, None]]
    summary = arena_hard.summarize_verdicts(records)
    assert summary["score"] == pytest.approx(6 / 8) and summary["unjudged"] == 1


def test_answers_are_resumable_and_judged_against_the_baseline(tmp_path):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    questions = arena_hard.load_questions()[:2]
    judge = FixedJudge("Hard to tell. My final verdict is tie: [[A=B]]")

    result = answer_arena_hard(model, tokenizer, tmp_path, questions, judge, decoding=Decoding(3), batch_size=2)

    assert (result["questions"], result["score"], result["battles"]) == (2, 0.5, 4)
    assert len(judge.requests) == 4 and (tmp_path / "judgments.jsonl").is_file()
    baseline = arena_hard.load_baselines()[questions[0]["category"]][questions[0]["uid"]]
    assert baseline in judge.requests[0][1]["content"].split("<|The End of Assistant A's Answer|>")[0]
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 2
