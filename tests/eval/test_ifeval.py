"""IFEval: the official checkers and definitions, on hand-checked responses and against if-verifiable itself."""

import argparse
import json

import pytest
from if_verifiable import IFEvalSample, evaluate_output_for_sample

import slimepo.eval.answers
from slimepo.cli_eval import register, run
from slimepo.eval import ifeval
from slimepo.eval.benchmarks.ifeval import answer_ifeval
from slimepo.generation.base import Decoding
from slimepo.ifeval_checkers import seeded_random
from slimepo.testing import tiny_model, tiny_tokenizer

END = "Is there anything else I can help with?"

# Hand-checked with the official definitions (no language detection involved):
HAND_CHECKED = [
    # strict: the comma of the first line breaks no_comma; loose drops that line.
    ({"key": 1, "prompt": "p1", "instruction_id_list": ["punctuation:no_comma", "startend:end_checker"],
      "kwargs": [{}, {"end_phrase": END}]},
     f"Sure, here you go:\nCats purr. {END}", [False, True], [True, True]),
    # two "* " bullet lines and a <<title>>.
    ({"key": 2, "prompt": "p2", "instruction_id_list": ["detectable_format:number_bullet_lists",
                                                        "detectable_format:title"],
      "kwargs": [{"num_bullets": 2}, {}]},
     "<<Two facts>>\n* one\n* two", [True, True], [True, True]),
    # Punkt sees 2 sentences ("Dr." is an abbreviation), splitting on "." would see 3; 7 words.
    ({"key": 3, "prompt": "p3", "instruction_id_list": ["length_constraints:number_sentences",
                                                        "length_constraints:number_words"],
      "kwargs": [{"relation": "less than", "num_sentences": 3}, {"relation": "at least", "num_words": 5}]},
     "Dr. Smith went home. He was tired.", [True, True], [True, True]),
    # a blank response follows nothing, strict or loose.
    ({"key": 4, "prompt": "p4", "instruction_id_list": ["startend:quotation", "keywords:existence"],
      "kwargs": [{}, {"keywords": ["purr"]}]},
     "   ", [False, False], [False, False]),
    # loose removes the markdown asterisks around the quotation.
    ({"key": 5, "prompt": "p5", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
     '*"Cats purr."*', [False], [True]),
]


@pytest.mark.parametrize(("record", "response", "strict", "loose"), HAND_CHECKED, ids=lambda v: str(v)[:20])
def test_each_instruction_is_checked_strict_and_loose_as_hand_checked(record, response, strict, loose):
    assert ifeval.check_response(record, response) == {"strict": strict, "loose": loose}


def test_prompt_and_instruction_level_accuracies_follow_the_official_definitions():
    records = [case[0] for case in HAND_CHECKED]

    result = ifeval.score(records, [case[1] for case in HAND_CHECKED])

    assert (result["prompts"], result["instructions"]) == (5, 9)
    assert result["prompt_level_strict"] == pytest.approx(2 / 5)  # prompts 2 and 3 follow everything
    assert result["instruction_level_strict"] == pytest.approx(5 / 9)
    assert result["prompt_level_loose"] == pytest.approx(4 / 5)  # all but the blank one
    assert result["instruction_level_loose"] == pytest.approx(7 / 9)
    assert result["per_instruction"]["startend:quotation"] == {"count": 2, "strict": 0.0, "loose": 0.5}
    assert result["per_instruction"]["punctuation:no_comma"] == {"count": 1, "strict": 0.0, "loose": 1.0}
    assert result["per_prompt"] == {str(record["key"]): {"strict": strict, "loose": loose}
                                    for record, _, strict, loose in HAND_CHECKED}


RESPONSES = [
    "hello world, this is a plain answer.",
    "SURE! HERE IT IS.\n\n* first point\n* second point\n\nP.S. That is all.",
    '"' + "word " * 400 + '"',
    '```json\n{"answer": "yes"}\n```',
    "<<A Title>>\nSection 1\nDr. Smith went home. He was tired!\n***\nSECTION 2\nAnother paragraph? Yes.",
]


def test_scores_match_the_checker_library_on_every_ninth_installed_prompt():
    records = ifeval.load_prompts()
    assert len(records) == 541
    sample = records[::9]
    for response in RESPONSES:
        ours = ifeval.score(sample, [response] * len(sample))
        followed = {"strict": 0, "loose": 0}
        everything = {"strict": 0, "loose": 0}
        for record in sample:
            with seeded_random():  # the same draws as ours, for the two random checkers
                results, scores = evaluate_output_for_sample("ifeval", IFEvalSample(**record), response)
            assert [r.strict_pass for r in results] == ifeval.check_response(record, response)["strict"], record["key"]
            assert [r.loose_pass for r in results] == ifeval.check_response(record, response)["loose"], record["key"]
            followed["strict"] += sum(r.strict_pass for r in results)
            followed["loose"] += sum(r.loose_pass for r in results)
            everything["strict"] += scores.binary_strict
            everything["loose"] += scores.binary_loose
        for mode in ("strict", "loose"):
            assert ours[f"instruction_level_{mode}"] == pytest.approx(followed[mode] / ours["instructions"])
            assert ours[f"prompt_level_{mode}"] == pytest.approx(everything[mode] / len(sample))


def test_a_blank_response_counts_every_instruction_as_not_followed():
    record = ifeval.load_prompts()[0]

    result = ifeval.score([record], [""])

    assert result["instructions"] == len(record["instruction_id_list"]) == 3
    assert result["instruction_level_loose"] == result["prompt_level_loose"] == 0.0


def test_answers_are_written_in_the_official_form_and_a_rerun_answers_only_what_is_missing(tmp_path, monkeypatch):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    records = ifeval.load_prompts()[:3]
    calls = []
    real_generate = slimepo.eval.answers.generate
    monkeypatch.setattr(slimepo.eval.answers, "generate",
                        lambda m, t, prompts, **kw: calls.append(len(prompts)) or real_generate(m, t, prompts, **kw))

    first = answer_ifeval(model, tokenizer, tmp_path, records, decoding=Decoding(4), batch_size=2)

    lines = [json.loads(line) for line in (tmp_path / "input_response_data.jsonl").read_text().splitlines()]
    assert [set(line) for line in lines] == [{"prompt", "response"}] * 3
    assert [line["prompt"] for line in lines] == [r["prompt"] for r in records]
    assert first == {**ifeval.score(records, [line["response"] for line in lines]),
                     "generation": first["generation"], "responses": str(tmp_path / "input_response_data.jsonl")}
    assert first["generation"]["count"] == 3 and first["generation"]["length_tokens_mean"] <= 4
    assert sorted(calls) == [1, 2]

    answers = (tmp_path / "answers.jsonl").read_text().splitlines()
    kept = [a for a in answers if json.loads(a)["key"] != str(records[1]["key"])]
    (tmp_path / "answers.jsonl").write_text("\n".join(kept) + '\n{"key": 99, "torn')
    calls.clear()
    again = answer_ifeval(model, tokenizer, tmp_path, records, decoding=Decoding(4), batch_size=2)

    assert calls == [1] and again == first  # greedy: the missing answer comes back the same


@pytest.mark.parametrize(("bench", "name", "prompts_file"), [("ifeval", "IFEval", "input_data.jsonl"),
                                                             ("ifbench", "IFBench (partial)", "IFBench_test.jsonl")])
def test_eval_command_answers_the_first_benchmark_prompts(tmp_path, capsys, bench, name, prompts_file):
    tokenizer = tiny_tokenizer()
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--model", str(model_dir), "--max-pairs", "1", "--no-generate",
                              "--bench", bench, "--max-prompts", "2", "--bench-max-new-tokens", "3",
                              "--out", str(tmp_path / "out")])

    assert run(args) == 0

    result = json.loads((tmp_path / "out" / "eval.json").read_text())[bench]
    assert result["prompts"] == 2 and result["provenance"]["questions_file"].endswith(prompts_file)
    assert len((tmp_path / "out" / bench / "input_response_data.jsonl").read_text().splitlines()) == 2
    assert f"{name} prompt-level accuracy, strict" in capsys.readouterr().out
