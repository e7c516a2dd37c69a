"""Constraint checkers, their instructions, and the shipped demo data built on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimepo.constraints import (
    FAMILIES,
    CheckResult,
    Constraint,
    check,
    count_words,
    instruction,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "slimepo" / "data" / "demo"
SHIPPED = ("train.jsonl", "test.jsonl", "README.md")

# one valid constraint per family, for tests that sweep all of them
EXAMPLES = {
    "json_key": Constraint("json_key", {"key": "tips"}),
    "lowercase": Constraint("lowercase"),
    "uppercase": Constraint("uppercase"),
    "bullet_count": Constraint("bullet_count", {"n": 2}),
    "numbered_list": Constraint("numbered_list", {"n": 2}),
    "max_words": Constraint("max_words", {"n": 5}),
    "min_words": Constraint("min_words", {"n": 3}),
    "include_word": Constraint("include_word", {"word": "patience"}),
    "avoid_word": Constraint("avoid_word", {"word": "very"}),
    "end_phrase": Constraint("end_phrase", {"phrase": "Good luck!"}),
    "start_word": Constraint("start_word", {"word": "Sure"}),
    "paragraph_count": Constraint("paragraph_count", {"n": 2}),
    "no_commas": Constraint("no_commas"),
}

# (family, params, response, passes): each family has passing and failing cases
CASES = [
    ("json_key", {"key": "tips"}, '{"tips": ["rest"]}', True),
    ("json_key", {"key": "tips"}, '```json\n{"tips": [], "n": 1}\n```', True),
    ("json_key", {"key": "tips"}, '```\n{"tips": 1}\n```', True),
    ("json_key", {"key": "tips"}, '{"advice": ["rest"]}', False),
    ("json_key", {"key": "tips"}, '{"outer": {"tips": 1}}', False),
    ("json_key", {"key": "tips"}, '["tips"]', False),
    ("json_key", {"key": "tips"}, 'Here you go: {"tips": 1}', False),
    ("json_key", {"key": "tips"}, '{"tips": [1, 2', False),
    ("json_key", {"key": "tips"}, '```json\n{"tips": 1}\n', False),
    # lowercase and uppercase are IFEval's: the letters' case, and the text must be English
    ("lowercase", {}, "rest well, drink plenty of water and try to sleep eight hours every night.", True),
    ("lowercase", {}, "le café est très bon et je le bois chaque matin.", False),
    ("lowercase", {}, "rest well and drink Water.", False),
    ("lowercase", {}, "123 456!", False),
    ("uppercase", {}, "REST WELL AND DRINK WATER.", True),
    ("uppercase", {}, "ÉCOLE 42", False),
    ("uppercase", {}, "REST WELL AND DRINK WATEr.", False),
    ("uppercase", {}, "STRAßE", False),
    ("bullet_count", {"n": 2}, "Tips:\n- rest\n* drink water", True),
    ("bullet_count", {"n": 2}, "Tips:\n  - rest\n  - drink water\nDone.", True),
    ("bullet_count", {"n": 2}, "- rest\n- drink water\n- sleep", False),
    ("bullet_count", {"n": 2}, "-rest\n*drink water*", True),  # IFEval: "-" or "*x" starts a bullet
    ("numbered_list", {"n": 3}, "Steps:\n1. rest\n2. eat\n3. sleep", True),
    ("numbered_list", {"n": 3}, "1. rest\n2. eat", False),
    ("numbered_list", {"n": 3}, "1. rest\n3. eat\n2. sleep", False),
    ("numbered_list", {"n": 3}, "- rest\n- eat\n- sleep", False),
    ("max_words", {"n": 5}, "Rest well and don't worry.", True),
    ("max_words", {"n": 5}, "Rest well and do not worry today.", False),
    ("max_words", {"n": 5}, "... !!! ---", False),
    ("min_words", {"n": 3}, "one two three", True),
    ("min_words", {"n": 3}, "one, two", False),
    ("include_word", {"word": "patience"}, "A little PATIENCE helps.", True),
    ("include_word", {"word": "patience"}, "Be patient.", False),
    ("include_word", {"word": "plan"}, "Make a planner.", False),
    ("include_word", {"word": "naïve"}, "Don't be Naïve about it.", True),
    ("avoid_word", {"word": "very"}, "Every day is a good day.", True),
    ("avoid_word", {"word": "very"}, "This is Very good.", False),
    ("end_phrase", {"phrase": "Good luck!"}, "Rest well. Good luck!  \n", True),
    ("end_phrase", {"phrase": "Good luck!"}, "Rest well. Good luck.", False),
    ("end_phrase", {"phrase": "Good luck!"}, "Good luck! Rest well.", False),
    ("start_word", {"word": "Sure"}, "**Sure!** Here you go.", True),
    ("start_word", {"word": "Sure"}, "sure thing", True),
    ("start_word", {"word": "Sure"}, "Surely not.", False),
    ("start_word", {"word": "Sure"}, "Okay. Sure.", False),
    ("paragraph_count", {"n": 2}, "First part.\n\nSecond part.", True),
    ("paragraph_count", {"n": 2}, "\n\nFirst part.\n \t\nSecond part.\n\n\n", True),
    ("paragraph_count", {"n": 2}, "First part.\nStill first.", False),
    ("paragraph_count", {"n": 2}, "One.\n\nTwo.\n\nThree.", False),
    ("no_commas", {}, "Rest well. Drink water.", True),
    ("no_commas", {}, "Rest well, drink water.", False),
    ("no_commas", {}, "休息，喝水", True),  # IFEval counts ASCII commas only
]


@pytest.mark.parametrize(("family", "params", "response", "passes"), CASES)
def test_checker_decides_hand_written_response(family, params, response, passes):
    result = check(Constraint(family, params), response)
    assert result.passed is passes, result.detail
    assert result.detail == "ok" if passes else result.detail


def test_every_family_has_passing_and_failing_cases():
    assert {(c[0], c[3]) for c in CASES} == {(f, p) for f in FAMILIES for p in (True, False)}
    assert set(EXAMPLES) == set(FAMILIES)
    assert len(FAMILIES) >= 10


# (family, params, IFEval instruction, its kwargs): the families that IFEval's checkers decide
IFEVAL_FAMILIES = [
    ("lowercase", {}, "change_case:english_lowercase", {}),
    ("uppercase", {}, "change_case:english_capital", {}),
    ("bullet_count", {"n": 2}, "detectable_format:number_bullet_lists", {"num_bullets": 2}),
    ("avoid_word", {"word": "very"}, "keywords:forbidden_words", {"forbidden_words": ["very"]}),
    ("end_phrase", {"phrase": "Good luck!"}, "startend:end_checker", {"end_phrase": "Good luck!"}),
    ("no_commas", {}, "punctuation:no_comma", {}),
]


@pytest.mark.parametrize(("family", "params", "instruction_id", "kwargs"), IFEVAL_FAMILIES)
def test_ifeval_families_decide_as_the_official_checker_on_every_test_response(family, params, instruction_id, kwargs):
    import langdetect
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    langdetect.DetectorFactory.seed = 0
    responses = [case[2] for case in CASES] + WEIRD_TEXTS[-1:]
    for response in responses:
        official = INSTRUCTION_DICT[instruction_id](instruction_id)
        official.build_description(**kwargs)
        expected = bool(response.strip()) and official.check_following(response)
        assert check(Constraint(family, params), response).passed is expected, response


def test_only_the_families_ifeval_lacks_keep_our_checkers():
    assert {f for f, *_ in IFEVAL_FAMILIES} == set(FAMILIES) - {
        "json_key", "numbered_list", "start_word", "paragraph_count", "include_word", "max_words", "min_words",
    }


@pytest.mark.parametrize("response", ["", " ", "\n\t  \n"])
@pytest.mark.parametrize("family", FAMILIES)
def test_blank_response_fails_every_family(family, response):
    assert check(EXAMPLES[family], response) == CheckResult(False, "empty response")


def test_failure_details_say_what_is_wrong():
    assert check(EXAMPLES["bullet_count"], "- a\n- b\n- c").detail == (
        "fails IFEval detectable_format:number_bullet_lists {'num_bullets': 2}"
    )
    assert check(EXAMPLES["json_key"], "```json\n{}").detail == "unterminated ``` code fence"
    assert check(EXAMPLES["json_key"], '{"a": 1}').detail == "JSON object has no key 'tips'"
    assert check(EXAMPLES["lowercase"], "Hi There").detail == "fails IFEval change_case:english_lowercase"
    assert check(EXAMPLES["no_commas"], "a, b").detail == "fails IFEval punctuation:no_comma"
    assert check(EXAMPLES["numbered_list"], "1. a").detail == "1 numbered item, expected 2"


def test_count_words_joins_apostrophes_and_hyphens_and_skips_punctuation():
    assert count_words("Don't over-think it - really!") == 4
    assert count_words("- 1. __ ... ---") == 1
    assert count_words("naïve café 東京") == 3


WEIRD_TEXTS = [
    "word " * 20_000,
    "-" * 50_000,
    "[" * 100_000,
    "```" * 5_000,
    "```json\n" + "{" * 50_000,
    "1" * 5_000 + ". item",
    "\n" * 10_000 + " " * 10_000,
    "\x00\u200b\u202e\ufeff🙂 ǅ İ ß",
]


@pytest.mark.parametrize("text", WEIRD_TEXTS, ids=range(len(WEIRD_TEXTS)))
@pytest.mark.parametrize("family", FAMILIES)
def test_checkers_survive_weird_and_repetitive_text(family, text):
    assert isinstance(check(EXAMPLES[family], text).passed, bool)


def test_repetitive_text_is_judged_not_just_survived():
    text = "rest " * 10_000
    assert check(EXAMPLES["lowercase"], "rest well and sleep early. " * 2_000).passed
    assert not check(EXAMPLES["max_words"], text).passed
    assert check(EXAMPLES["min_words"], text).passed
    assert not check(EXAMPLES["json_key"], "[" * 100_000).passed


@settings(max_examples=200, deadline=None)
@given(text=st.text(), family=st.sampled_from(FAMILIES))
def test_checkers_never_raise_on_any_string(text, family):
    result = check(EXAMPLES[family], text)
    assert isinstance(result.passed, bool)
    assert isinstance(result.detail, str)


@pytest.mark.parametrize("family", FAMILIES)
def test_instruction_is_one_sentence_naming_its_params(family):
    constraint = EXAMPLES[family]
    text = instruction(constraint)
    assert text[0].isupper()
    assert text.rstrip('"').endswith((".", "!"))
    for value in constraint.params.values():
        assert str(value) in text


def test_instruction_uses_singular_for_one():
    assert instruction(Constraint("bullet_count", {"n": 1})).startswith(
        "Use exactly 1 bullet point,"
    )
    assert "3 paragraphs" in instruction(Constraint("paragraph_count", {"n": 3}))


@pytest.mark.parametrize("family", FAMILIES)
def test_to_dict_round_trips(family):
    constraint = EXAMPLES[family]
    data = json.loads(json.dumps(constraint.to_dict()))
    assert Constraint.from_dict(data) == constraint


def test_constraint_keeps_its_own_copy_of_params():
    params = {"n": 2}
    constraint = Constraint("bullet_count", params)
    params["n"] = 9
    constraint.to_dict()["params"]["n"] = 7
    assert constraint.params == {"n": 2}


def test_from_dict_allows_omitted_params_for_parameterless_family():
    assert Constraint.from_dict({"family": "lowercase"}) == Constraint("lowercase", {})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"family": "shout"}, "unknown constraint family 'shout'; valid families: json_key"),
        ({"family": None}, "unknown constraint family None"),
        ({"params": {}}, "needs a 'family' key"),
        ("lowercase", "needs a 'family' key"),
        ({"family": "lowercase", "params": {}, "extra": 1}, "unexpected constraint keys"),
        ({"family": "lowercase", "params": [1]}, "lowercase: params must be a dict"),
        ({"family": "bullet_count", "params": {}}, "bullet_count: expected params ['n']"),
        ({"family": "bullet_count", "params": {"n": 2, "m": 1}}, "got ['m', 'n']"),
        ({"family": "bullet_count", "params": {"n": 0}}, "bullet_count: param 'n' must be a"),
        ({"family": "max_words", "params": {"n": "5"}}, "max_words: param 'n' must be a"),
        ({"family": "max_words", "params": {"n": True}}, "max_words: param 'n' must be a"),
        ({"family": "include_word", "params": {"word": "two words"}}, "param 'word' must be"),
        ({"family": "start_word", "params": {"word": ""}}, "start_word: param 'word'"),
        ({"family": "end_phrase", "params": {"phrase": " Bye."}}, "end_phrase: param 'phrase'"),
        ({"family": "json_key", "params": {"key": 3}}, "json_key: param 'key'"),
    ],
)
def test_from_dict_rejects_invalid_constraint_naming_the_problem(data, message):
    with pytest.raises(ValueError) as error:
        Constraint.from_dict(data)
    assert message in str(error.value)


def test_unknown_family_error_lists_every_valid_family():
    with pytest.raises(ValueError) as error:
        Constraint("shout")
    assert all(family in str(error.value) for family in FAMILIES)


# --- the shipped demo data and its generator ------------------------------------------


def _rows(name: str) -> list[dict]:
    with (DEMO / name).open(encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def make_demo_data(load_script):
    return load_script("make_demo_data")


@pytest.mark.parametrize("split", ["train", "test"])
def test_shipped_chosen_passes_and_rejected_fails(split):
    rows = _rows(f"{split}.jsonl")
    for row in rows:
        assert set(row) == {"id", "prompt", "chosen", "rejected", "family", "constraint"}
        constraint = Constraint.from_dict(row["constraint"])
        assert constraint.family == row["family"]
        assert check(constraint, row["chosen"]).passed, row["id"]
        assert not check(constraint, row["rejected"]).passed, row["id"]
        assert row["chosen"] != row["rejected"]
        assert row["prompt"].endswith(instruction(constraint))
        assert count_words(row["prompt"]) <= 45
        assert 15 <= count_words(row["chosen"]) <= 60
        assert 15 <= count_words(row["rejected"]) <= 60
    assert {row["family"] for row in rows} == set(FAMILIES)
    assert len({row["id"] for row in rows}) == len(rows)


def test_shipped_splits_share_no_prompt_and_have_expected_sizes():
    train, test = _rows("train.jsonl"), _rows("test.jsonl")
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in test}
    assert 350 <= len(train) <= 450
    assert 80 <= len(test) <= 120


def test_generator_is_deterministic_and_matches_shipped_files(make_demo_data, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    make_demo_data.main(["--out", str(first)])
    make_demo_data.main(["--out", str(second), "--seed", "0"])
    for name in SHIPPED:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
        assert (first / name).read_bytes() == (DEMO / name).read_bytes(), name


def test_generator_seed_changes_the_data(make_demo_data):
    assert make_demo_data.build_dataset(1) != make_demo_data.build_dataset(0)


def test_generator_validation_catches_a_bad_row(make_demo_data):
    splits = {"train": _rows("train.jsonl"), "test": _rows("test.jsonl")}
    splits["test"][0]["rejected"] = splits["test"][0]["chosen"]
    with pytest.raises(AssertionError, match="test-0000: chosen and rejected are identical"):
        make_demo_data.validate(splits)
