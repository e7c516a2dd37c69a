"""AlpacaEval: its data, judge prompt, seeded order switch and win rate, against the fake judge server."""

import pytest

from slimepo.eval import alpacaeval
from slimepo.eval.benchmarks.alpaca_eval import answer_alpaca_eval
from slimepo.eval.judge import JudgeClient
from slimepo.generation.base import Decoding
from slimepo.testing import FixedJudge, tiny_model, tiny_tokenizer

SYSTEM = (
    "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based on "
    "the quality of their responses to a given instruction. This process will be used to create a leaderboard "
    "reflecting the most accurate and human-preferred answers."
)


def test_installed_instructions_are_alpaca_eval_with_gpt4_turbo_outputs():
    records = alpacaeval.load_instructions()

    assert len(records) == 805
    assert {r["generator"] for r in records} == {"gpt4_1106_preview"}
    assert [r["key"] for r in records[:3]] == ["0", "1", "2"]
    assert sum(r["dataset"] == "selfinstruct" for r in records) == 252
    assert records[0]["instruction"].startswith("What are the names of some famous actors that started their careers")


def test_judge_prompt_is_alpaca_evals_clf_prompt_with_each_output_under_its_identifier():
    system, user = alpacaeval.judge_messages(alpacaeval.load_judge_prompt(), "Say {x} hi.", "first", "second {output_1}")

    assert system == {"role": "system", "content": SYSTEM}
    assert user["role"] == "user"
    assert '## Instruction\n\n{\n    "instruction": """Say {x} hi.""",\n}' in user["content"]
    assert (
        '{\n        "model_identifier": "m",\n        "output": """first"""\n    },\n'
        '    {\n        "model_identifier": "M",\n        "output": """second {output_1}"""\n    }'
    ) in user["content"]
    assert user["content"].endswith("m or M.\n\n## Best Model Identifier")


def test_order_is_switched_as_alpaca_evals_seeded_choice_switches_it():
    # AlpacaEval: random.Random("is_switched_outputs" + instruction + "0").choices([False, True])[0]
    records = alpacaeval.load_instructions()

    assert [alpacaeval.is_switched(r["instruction"]) for r in records[:6]] == [True, True, True, False, False, False]
    assert sum(alpacaeval.is_switched(r["instruction"]) for r in records) == 406


@pytest.mark.parametrize(("reply", "preference"), [("m", 1), (" M\n", 2), ("m or M", None), ("Model m", None), ("", None)])
def test_preference_is_the_bare_identifier_of_the_better_output(reply, preference):
    assert alpacaeval.parse_preference(reply) == preference


def test_win_rate_is_alpaca_evals_mean_preference_minus_one_in_percent():
    records = [{"preference": 2}, {"preference": 2}, {"preference": 1}, {"preference": None}]

    summary = alpacaeval.summarize_preferences(records)

    assert summary["win_rate"] == pytest.approx(200 / 3)
    assert summary["standard_error"] == pytest.approx(100 / 3)  # sample std sqrt(1/3), over sqrt(3)
    assert (summary["n_wins"], summary["n_wins_base"], summary["n_total"], summary["unjudged"]) == (2, 1, 3, 1)
    assert summary["ci_lower"] <= summary["win_rate"] <= summary["ci_upper"]
    assert alpacaeval.summarize_preferences([{"preference": None}])["win_rate"] is None


def test_games_go_through_the_judge_api_with_the_switch_undone(judge_url):
    records = alpacaeval.load_instructions()[:4]  # switched, switched, switched, not switched
    answers = {"0": "mine FAKE:a0:pick=ours", "1": "mine FAKE:a1:pick=baseline", "2": "mine FAKE:a2:garbage",
               "3": "mine FAKE:a3:pick=ours"}

    games = alpacaeval.judge_pairs(records, answers, JudgeClient(judge_url, "judge"))

    assert [g["is_switched_outputs"] for g in games] == [True, True, True, False]
    assert [g["judgment"] for g in games] == ["m", "M", "I would rather not give a number.", "M"]
    assert [g["preference"] for g in games] == [2, 1, None, 2]
    assert alpacaeval.summarize_preferences(games)["win_rate"] == pytest.approx(200 / 3)


def test_answers_are_resumable_and_judged_against_the_baseline(tmp_path):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    records = alpacaeval.load_instructions()[3:5]  # neither switched: the baseline is output_1, "m"
    judge = FixedJudge("m")

    result = answer_alpaca_eval(model, tokenizer, tmp_path, records, judge, decoding=Decoding(3), batch_size=2)
    again = answer_alpaca_eval(model, tokenizer, tmp_path, records, decoding=Decoding(3), batch_size=2)

    assert (result["instructions"], result["win_rate"], result["n_total"]) == (2, 0.0, 2)
    assert result["length_controlled_win_rate"] is None
    assert records[0]["output"] in judge.requests[0][1]["content"].split('"model_identifier": "M"')[0]
    assert len((tmp_path / "judgments.jsonl").read_text().splitlines()) == 2
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 2 and "win_rate" not in again
