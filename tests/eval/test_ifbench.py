"""IFBench (partial): the official checkers, offline, against hand-checked responses and if-verifiable itself."""

import json
import subprocess
import sys

import pytest

from slimepo.eval import ifeval
from slimepo.eval.benchmarks.ifeval import answer_ifeval
from slimepo.generation.base import Decoding
from slimepo.ifeval_checkers import IFBENCH_MISSING_DATA, build_checker, registry, seeded_random
from slimepo.testing import tiny_model, tiny_tokenizer

# Hand-checked against the checkers' definitions (IFBench's instructions.py):
HAND_CHECKED = [
    # word_count_range counts \w+ tokens: "it's" is two of them, so 5 words here; loose may drop a line.
    ({"key": "h1", "prompt": "p1", "instruction_id_list": ["count:word_count_range"],
      "kwargs": [{"min_words": 4, "max_words": 5}]},
     "It's a small cat.", [True], [True]),
    ({"key": "h2", "prompt": "p2", "instruction_id_list": ["count:word_count_range"],
      "kwargs": [{"min_words": 4, "max_words": 5}]},
     "Sure, here it is:\nA small grey cat.", [False], [True]),
    # no_whitespace: any space, tab or newline fails, in every loose variant too.
    ({"key": "h3", "prompt": "p3", "instruction_id_list": ["format:no_whitespace"], "kwargs": [{}]},
     "no_spaces_here", [True], [True]),
    ({"key": "h4", "prompt": "p4", "instruction_id_list": ["format:no_whitespace"], "kwargs": [{}]},
     "two words", [False], [False]),
    # options (text options): the answer is one option, punctuation and case aside.
    ({"key": "h5", "prompt": "p5", "instruction_id_list": ["format:options", "format:no_whitespace"],
      "kwargs": [{"options": "yes/no/maybe"}, {}]},
     "Maybe.", [True, True], [True, True]),
    ({"key": "h6", "prompt": "p6", "instruction_id_list": ["format:options"], "kwargs": [{"options": "yes/no/maybe"}]},
     "Probably yes", [False], [False]),
]


@pytest.mark.parametrize(("record", "response", "strict", "loose"), HAND_CHECKED, ids=lambda v: str(v)[:20])
def test_each_instruction_is_checked_strict_and_loose_as_hand_checked(record, response, strict, loose):
    assert ifeval.check_response(record, response, "ifbench") == {"strict": strict, "loose": loose}


def test_prompt_and_instruction_level_accuracies_of_the_hand_checked_responses():
    result = ifeval.score([c[0] for c in HAND_CHECKED], [c[1] for c in HAND_CHECKED], "ifbench")

    assert (result["prompts"], result["instructions"]) == (6, 7)
    assert result["prompt_level_strict"] == pytest.approx(3 / 6)  # h1, h3, h5
    assert result["instruction_level_strict"] == pytest.approx(4 / 7)
    assert result["prompt_level_loose"] == pytest.approx(4 / 6)  # and h2
    assert result["per_instruction"]["format:no_whitespace"] == {"count": 3, "strict": 2 / 3, "loose": 2 / 3}
    assert result["per_prompt"]["h2"] == {"strict": [False], "loose": [True]}


def test_the_two_types_without_data_are_refused_and_their_prompts_left_out():
    records = ifeval.load_prompts(benchmark="ifbench")
    kept, left_out = ifeval.scorable(records, "ifbench")

    assert (len(records), len(kept), len(left_out)) == (300, 282, 18)
    assert all(set(r["instruction_id_list"]) & set(IFBENCH_MISSING_DATA) for r in left_out)
    assert not any(set(r["instruction_id_list"]) & set(IFBENCH_MISSING_DATA) for r in kept)
    assert set(IFBENCH_MISSING_DATA) <= set(registry("ifbench"))  # real types, not typos
    for instruction_id in IFBENCH_MISSING_DATA:
        with pytest.raises(ValueError, match=instruction_id):
            build_checker(instruction_id, {}, benchmark="ifbench")
    with pytest.raises(ValueError, match="ifeval has no instruction type 'format:no_whitespace'"):
        build_checker("format:no_whitespace", {})
    assert ifeval.scorable(ifeval.load_prompts(), "ifeval")[1] == []


RESPONSES = [
    "hello world, this is a plain answer.",
    "Yes! Kaleidoscope nebula nebula whisper.\n\n* first point\n* second point\n\nP.S. That is all.",
    '"' + "word " * 80 + '"',
    "Dr. Smith went home. He was tired! Another sentence? Yes.\n!?!? one\n!?!? two",
]


def test_scores_match_the_checker_library_on_every_fourth_scorable_prompt():
    from if_verifiable import IFBenchSample, evaluate_output_for_sample

    registry("ifbench")  # imports IFBench's module without its downloads, before the library would
    kept, _ = ifeval.scorable(ifeval.load_prompts(benchmark="ifbench"), "ifbench")
    sample = kept[::4]
    for response in RESPONSES:
        ours = ifeval.score(sample, [response] * len(sample), "ifbench")
        followed = everything = 0
        for record in sample:
            with seeded_random():
                results, scores = evaluate_output_for_sample("ifbench", IFBenchSample(**record), response)
            assert [r.strict_pass for r in results] == ifeval.check_response(record, response, "ifbench")["strict"]
            assert [r.loose_pass for r in results] == ifeval.check_response(record, response, "ifbench")["loose"]
            followed += sum(r.strict_pass for r in results)
            everything += scores.binary_strict
        assert ours["instruction_level_strict"] == pytest.approx(followed / ours["instructions"])
        assert ours["prompt_level_strict"] == pytest.approx(everything / len(sample))


def test_importing_the_ifbench_checkers_downloads_nothing():
    code = (
        "import nltk\n"
        "calls = []\n"
        "nltk.download = lambda *a, **k: calls.append(a) or False\n"
        "recorder = nltk.download\n"
        "from slimepo.ifeval_checkers import build_checker\n"
        "checker = build_checker('format:no_whitespace', {}, benchmark='ifbench')\n"
        "assert checker.check_following('x') and nltk.download is recorder, 'nltk.download not restored'\n"
        "print(len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


def test_answers_skip_the_left_out_prompts_and_the_report_says_so(tmp_path):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    records = ifeval.load_prompts(benchmark="ifbench")
    left = next(r for r in records if set(r["instruction_id_list"]) & set(IFBENCH_MISSING_DATA))
    chosen = [left, *ifeval.scorable(records, "ifbench")[0][:2]]

    result = answer_ifeval(model, tokenizer, tmp_path, chosen, decoding=Decoding(3), batch_size=2, benchmark="ifbench")

    assert result["prompts"] == 2 and result["official"] is False
    assert result["left_out"]["prompts"] == 1 and result["left_out"]["keys"] == [str(left["key"])]
    answered = [json.loads(line)["key"] for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert sorted(answered) == sorted(str(r["key"]) for r in chosen[1:])
