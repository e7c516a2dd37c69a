"""slimepo.data.formats: TRL's preference formats normalize to one PreferencePair; every
bad row is counted under one reason with its row number, and too many stop the run."""

from __future__ import annotations

import json

import pytest

from slimepo.data import (
    DataError,
    Origin,
    PreferencePair,
    Row,
    ValidationReport,
    load_rows,
    normalize_rows,
    prepare_pairs,
)
from slimepo.data.formats import REASONS
from slimepo.testing import assistant, system, user

GOOD = {"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five."}





BAD_ROWS = {
    "missing_field": [
        ("no_rejected", {"prompt": "Hi", "chosen": "Hello"}),
        ("null_chosen", {"prompt": "Hi", "chosen": None, "rejected": "Go away"}),
        ("no_prompt_for_text", {"chosen": "Hello", "rejected": "Go away"}),
        (
            "message_without_content",
            {"prompt": [user("Hi")], "chosen": [{"role": "assistant"}], "rejected": "No"},
        ),
        (
            "implicit_without_shared_turns",
            {"chosen": [assistant("Hello")], "rejected": [assistant("No")]},
        ),
    ],
    "wrong_type": [
        ("number", {"prompt": "Hi", "chosen": 42, "rejected": "Go away"}),
        ("row_is_a_list", [1, 2, 3]),
        ("row_is_a_string", "prompt chosen rejected"),
        (
            "dict_instead_of_messages",
            {"prompt": "Hi", "chosen": assistant("Hello"), "rejected": "No"},
        ),
        (
            "content_parts_list",
            {
                "prompt": [user("Hi")],
                "chosen": [{"role": "assistant", "content": ["Hello"]}],
                "rejected": "No",
            },
        ),
        ("message_is_a_string", {"prompt": ["Hi"], "chosen": "Hello", "rejected": "No"}),
    ],
    "empty_text": [
        ("blank_prompt", {"prompt": " \n\t", "chosen": "Hello", "rejected": "Go away"}),
        ("empty_chosen", {"prompt": "Hi", "chosen": "", "rejected": "Go away"}),
        (
            "blank_message",
            {"prompt": [user("Hi")], "chosen": [assistant("  ")], "rejected": [assistant("No")]},
        ),
        ("empty_message_list", {"prompt": [], "chosen": "Hello", "rejected": "No"}),
    ],
    "identical_responses": [
        ("same_text", {"prompt": "Hi", "chosen": "Hello", "rejected": "Hello"}),
        ("same_up_to_whitespace", {"prompt": "Hi", "chosen": "Hello", "rejected": " Hello\n"}),
        (
            "same_conversation",
            {
                "chosen": [user("Hi"), assistant("Hello")],
                "rejected": [user("Hi"), assistant("Hello")],
            },
        ),
    ],
    "bad_roles": [
        (
            "unknown_role",
            {"prompt": [{"role": "robot", "content": "Hi"}], "chosen": "Hello", "rejected": "No"},
        ),
        (
            "prompt_ends_with_assistant",
            {"prompt": [user("Hi"), assistant("Hello")], "chosen": "Hi again", "rejected": "No"},
        ),
        (
            "two_user_turns_in_a_row",
            {"prompt": [user("Hi"), user("Hi?")], "chosen": "Hello", "rejected": "No"},
        ),
        (
            "system_not_first",
            {"prompt": [user("Hi"), system("Be nice.")], "chosen": "Hello", "rejected": "No"},
        ),
        (
            "response_from_user",
            {"prompt": [user("Hi")], "chosen": [user("Hello")], "rejected": [assistant("No")]},
        ),
        (
            "response_ends_with_user",
            {
                "prompt": [user("Hi")],
                "chosen": [assistant("Hello"), user("And?")],
                "rejected": [assistant("No")],
            },
        ),
        (
            "implicit_split_after_assistant",
            {
                "chosen": [user("Hi"), assistant("Hello")],
                "rejected": [user("Hi"), assistant("Hello"), user("More"), assistant("No")],
            },
        ),
        (
            "implicit_conversation_opens_with_assistant",
            {
                "chosen": [assistant("Hello"), user("Hi"), assistant("Good")],
                "rejected": [assistant("Go away"), user("Hi"), assistant("Bad")],
            },
        ),
        (
            "implicit_rejected_turns_swapped",
            {
                "chosen": [user("Hi"), assistant("Hello")],
                "rejected": [assistant("No"), user("Hi")],
            },
        ),
    ],
}
BAD_CASES = [
    pytest.param(reason, row, id=f"{reason}-{name}")
    for reason, cases in BAD_ROWS.items()
    for name, row in cases
]


@pytest.mark.parametrize(("reason", "bad_row"), BAD_CASES)
def test_bad_row_is_skipped_and_counted_under_its_reason_with_its_line(tmp_path, reason, bad_row):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps(GOOD), "", json.dumps(bad_row), json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n")
    report = ValidationReport()
    pairs = normalize_rows(load_rows(path), report)
    assert [pair.origin.row for pair in pairs] == [1, 4]
    assert dict(report.counts) == {reason: 1}
    assert report.examples[reason] == [Origin(str(path), 3)]
    assert f"{reason}: 1 row (first: 3)" in str(report)


def test_invalid_json_row_is_counted_with_its_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(f'{json.dumps(GOOD)}\n{{"prompt": "Hi", "chosen": \n{json.dumps(GOOD)}\n')
    report = ValidationReport()
    assert len(normalize_rows(load_rows(path), report)) == 2
    assert dict(report.counts) == {"invalid_json": 1}
    assert report.examples["invalid_json"] == [Origin(str(path), 2)]


def test_invalid_csv_row_is_counted_with_its_record_number(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"prompt,chosen,rejected\nHi,Hello,No\nHi,\xff\xfe,No\n")
    report = ValidationReport()
    assert len(normalize_rows(load_rows(path), report)) == 1
    assert report.examples["invalid_csv"] == [Origin(str(path), 2)]


def test_report_keeps_only_the_first_five_examples_per_reason():
    rows = [Row({"prompt": "Hi"}, Origin("f.jsonl", i)) for i in range(1, 9)]
    report = ValidationReport()
    normalize_rows(rows, report)
    assert report.counts["missing_field"] == 8
    assert [o.row for o in report.examples["missing_field"]] == [1, 2, 3, 4, 5]
    assert "missing_field: 8 rows (first: 1, 2, 3, 4, 5)" in str(report)


def test_report_over_several_sources_names_the_file_of_each_example_row():
    rows = [Row({"prompt": "Hi"}, Origin("a.jsonl", 2)), Row(GOOD, Origin("b.jsonl", 1))]
    rows.append(Row(None, Origin("b.jsonl", 7), problem="invalid_json"))
    report = ValidationReport()
    normalize_rows(rows, report)
    assert str(report).splitlines() == [
        "a.jsonl, b.jsonl: 3 rows, 1 kept, 2 skipped (66.7%)",
        f"  missing_field: 1 row (first: a.jsonl:2) - {REASONS['missing_field']}",
        f"  invalid_json: 1 row (first: b.jsonl:7) - {REASONS['invalid_json']}",
    ]


def test_explicit_conversational_implicit_and_ultrafeedback_rows_give_the_same_pair():
    prompt = [system("Be brief."), user("What is two plus two?")]
    rows = {
        "conversational": {
            "prompt": prompt,
            "chosen": [assistant("Four.")],
            "rejected": [assistant("Five.")],
        },
        "conversational_text_responses": {"prompt": prompt, "chosen": "Four.", "rejected": "Five."},
        "implicit": {
            "chosen": [*prompt, assistant("Four.")],
            "rejected": [*prompt, assistant("Five.")],
            "prompt_id": "abc",
            "score_chosen": 8.0,
            "score_rejected": 2.0,
            "messages": [*prompt, assistant("Four.")],
        },
        "prompt_repeated_in_responses": {
            "prompt": prompt,
            "chosen": [*prompt, assistant("Four.")],
            "rejected": [*prompt, assistant("Five.")],
        },
        "ultrafeedback": {
            "prompt": "What is two plus two?",
            "chosen": [*prompt, assistant("Four.")],
            "rejected": [*prompt, assistant("Five.")],
        },
    }
    pairs = normalize_rows(Row(data, Origin(name, 1)) for name, data in rows.items())
    expected = (prompt, [assistant("Four.")], [assistant("Five.")])
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [expected] * len(rows)


def test_multi_turn_implicit_rows_split_at_the_last_shared_user_turn():
    history = [
        system("You are terse."),
        user("Hi."),
        assistant("Hello."),
        user("What is two plus two?"),
    ]
    row = {"chosen": [*history, assistant("Four.")], "rejected": [*history, assistant("Five.")]}
    (pair,) = normalize_rows([Row(row, Origin("f", 1))])
    assert pair.prompt == history
    assert pair.chosen == [assistant("Four.")]
    assert pair.rejected == [assistant("Five.")]


def test_multi_turn_responses_are_kept_whole():
    row = {
        "prompt": [user("Hi.")],
        "chosen": [assistant("Hello."), user("Sum 2+2."), assistant("Four.")],
        "rejected": [assistant("Go away.")],
    }
    (pair,) = normalize_rows([Row(row, Origin("f", 1))])
    assert pair.chosen == row["chosen"]


def test_messages_keep_only_role_and_content():
    row = {
        "prompt": [{"role": "user", "content": "Hi.", "name": "bob", "tool_calls": None}],
        "chosen": "Hello.",
        "rejected": "No.",
    }
    (pair,) = normalize_rows([Row(row, Origin("f", 1))])
    assert pair.prompt == [user("Hi.")]


def test_plain_text_rows_stay_text():
    (pair,) = normalize_rows([Row(GOOD, Origin("f", 1))])
    assert pair == PreferencePair(GOOD["prompt"], GOOD["chosen"], GOOD["rejected"], Origin("f", 1))


def _write_with_bad_rows(path, total, bad):
    rows = [{"question": "Hi"} if i < bad else GOOD for i in range(total)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_too_many_bad_rows_stop_with_a_message_naming_file_reasons_and_rows(tmp_path, tokenizer):
    path = _write_with_bad_rows(tmp_path / "prefs.jsonl", total=10, bad=2)
    with pytest.raises(DataError) as caught:
        prepare_pairs(path, tokenizer, max_bad_fraction=0.1)
    message = str(caught.value)
    assert f"2 of 10 rows (20.0%) from {path} cannot be used" in message
    assert "max_bad_fraction=0.1" in message
    assert "missing_field: 2 rows (first: 1, 2)" in message
    assert "The first row has the columns question;" in message


def test_bad_rows_within_max_bad_fraction_are_skipped_and_reported(tmp_path, tokenizer):
    path = _write_with_bad_rows(tmp_path / "prefs.jsonl", total=10, bad=2)
    pairs, report = prepare_pairs(path, tokenizer, max_bad_fraction=0.2)
    assert len(pairs) == 8
    assert (report.total_rows, report.kept_rows, report.bad_rows) == (10, 8, 2)
    assert str(report).startswith(f"{path}: 10 rows, 8 kept, 2 skipped (20.0%)")


def test_no_usable_pair_is_a_data_error_even_when_bad_rows_are_allowed(tmp_path, tokenizer):
    path = _write_with_bad_rows(tmp_path / "prefs.jsonl", total=3, bad=3)
    with pytest.raises(DataError, match="no usable preference pairs"):
        prepare_pairs(path, tokenizer, max_bad_fraction=1.0)


def test_max_bad_fraction_outside_zero_one_is_a_value_error():
    with pytest.raises(ValueError, match="max_bad_fraction"):
        ValidationReport().check(1.5)
