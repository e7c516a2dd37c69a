"""slimepo.data.unpaired: TRL's unpaired rows validated with row numbers, tokenized as a pair's response
would be, and batched with the mismatched completions of KTO's KL batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler

from slimepo.data import DataError, Origin, Row, prepare_pairs, tokenize_pairs
from slimepo.data.formats import PreferencePair
from slimepo.data.unpaired import (
    KlExample,
    KlExamples,
    StepRotation,
    TokenizedExample,
    UnpairedCollator,
    UnpairedExample,
    example_tokens,
    new_report,
    normalize_unpaired_rows,
    prepare_examples,
    tokenize_examples,
)
from slimepo.testing import assistant, system, user

QUESTION = "What is two plus two?"


def rows_of(*records):
    return [Row(record, Origin("data.jsonl", i)) for i, record in enumerate(records, start=1)]


def test_standard_and_conversational_rows_become_examples_with_their_label():
    report = new_report()
    examples = normalize_unpaired_rows(rows_of(
        {"prompt": QUESTION, "completion": "Four.", "label": True, "extra": 1},
        {"prompt": [user(QUESTION)], "completion": [assistant("Five.")], "label": False},
        {"prompt": [system("Be brief."), user(QUESTION)], "completion": "Four.", "label": "TRUE"},  # a CSV's text
        {"prompt": QUESTION, "completion": [assistant("Four.")], "label": "false"},
        # a whole conversation as the completion: the turns it shares with the prompt are the prompt's
        {"prompt": [user(QUESTION)], "completion": [user(QUESTION), assistant("Four.")], "label": True},
    ), report)
    assert report.bad_rows == 0 and report.kept_rows == 5
    assert [e.desirable for e in examples] == [True, False, True, False, True]
    assert examples[0] == UnpairedExample(QUESTION, "Four.", True, Origin("data.jsonl", 1))
    assert examples[1].prompt == [user(QUESTION)] and examples[1].completion == [assistant("Five.")]
    assert examples[2].completion == [assistant("Four.")]
    assert examples[3].prompt == [user(QUESTION)]
    assert examples[4].prompt == [user(QUESTION)] and examples[4].completion == [assistant("Four.")]


@pytest.mark.parametrize(("record", "reason"), [
    ({"prompt": QUESTION, "completion": "Four."}, "missing_field"),
    ({"prompt": QUESTION, "completion": "Four.", "label": None}, "missing_field"),
    ({"completion": "Four.", "label": True}, "missing_field"),
    ({"prompt": QUESTION, "completion": "Four.", "label": 1}, "bad_label"),
    ({"prompt": QUESTION, "completion": "Four.", "label": "yes"}, "bad_label"),
    ({"prompt": QUESTION, "completion": "  ", "label": True}, "empty_text"),
    ({"prompt": QUESTION, "completion": 4, "label": True}, "wrong_type"),
    ({"prompt": [assistant(QUESTION)], "completion": "Four.", "label": True}, "bad_roles"),
    ({"prompt": [user(QUESTION)], "completion": [user("Four.")], "label": True}, "bad_roles"),
    (["not", "a", "mapping"], "wrong_type"),
])
def test_a_bad_row_is_counted_under_its_reason_with_its_row_number(record, reason):
    report = new_report()
    good = {"prompt": QUESTION, "completion": "Four.", "label": True}
    examples = normalize_unpaired_rows(rows_of(good, record, good), report)
    assert len(examples) == 2 and report.counts == {reason: 1}
    assert [o.row for o in report.examples[reason]] == [2]


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = '{"prompt": "What is two plus two?", "completion": "Four.", "label": true}'
BAD_LABEL = '{"prompt": "What is two plus two?", "completion": "Four.", "label": "maybe"}'


def test_too_many_bad_rows_stop_with_reasons_and_row_numbers(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "unpaired.jsonl", [GOOD, BAD_LABEL, "{not json", GOOD, BAD_LABEL])
    with pytest.raises(DataError) as err:
        prepare_examples(path, tokenizer, max_bad_fraction=0.5)
    message = str(err.value)
    assert "3 of 5 rows (60.0%)" in message and "max_bad_fraction=0.5" in message
    assert "bad_label: 2 rows (first: 2, 5) - label is not true or false" in message
    assert "invalid_json: 1 row (first: 3)" in message


def test_bad_rows_within_max_bad_fraction_are_skipped(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "unpaired.jsonl", [GOOD, BAD_LABEL, GOOD, GOOD])
    examples, report = prepare_examples(path, tokenizer, max_bad_fraction=0.25)
    assert len(examples) == 3 and report.counts == {"bad_label": 1}
    assert all(isinstance(e, TokenizedExample) and e.desirable for e in examples)


def test_a_csv_with_text_labels_is_read(tmp_path, tokenizer, write_rows):
    path = write_rows("unpaired.csv", [{"prompt": QUESTION, "completion": "Four.", "label": True},
                                       {"prompt": QUESTION, "completion": "Five.", "label": False}])
    examples, _ = prepare_examples(path, tokenizer)
    assert [e.desirable for e in examples] == [True, False]


def test_pairs_given_for_kto_and_unpaired_rows_given_to_a_pair_loss_are_named(tmp_path, tokenizer, write_rows):
    pairs = write_rows("pairs.jsonl", [{"prompt": QUESTION, "chosen": "Four.", "rejected": "Five."}] * 3)
    with pytest.raises(DataError, match=r"These rows are preference pairs \(chosen, rejected\): --loss kto needs "
                                        r"unpaired rows \(prompt, completion, label\)"):
        prepare_examples(pairs, tokenizer)
    unpaired = write_rows("unpaired.jsonl", [{"prompt": QUESTION, "completion": "Four.", "label": True}] * 3)
    with pytest.raises(DataError, match=r"These rows are unpaired examples \(prompt, completion, label\): train on "
                                        "them with --loss kto"):
        prepare_pairs(unpaired, tokenizer)


def test_an_example_gets_exactly_the_tokens_of_a_pair_response(tokenizer):
    prompt = [system("Be brief."), user(QUESTION)]
    (example,) = tokenize_examples([UnpairedExample(prompt, [assistant("Four.")], False, Origin("d", 1))], tokenizer,
                                   max_length=256, max_prompt_length=128)
    (pair,) = tokenize_pairs([PreferencePair(prompt, [assistant("Four.")], [assistant("Five.")], Origin("d", 1))],
                             tokenizer, max_length=256, max_prompt_length=128)
    assert example.prompt_ids == pair.prompt_ids and example.completion_ids == pair.chosen_ids
    assert example.desirable is False and example_tokens(example) == len(pair.prompt_ids) + 2 * len(pair.chosen_ids)


def test_truncation_keeps_the_prompt_end_and_the_completion_start(tokenizer):
    long = UnpairedExample("word " * 50, "answer " * 50, True, Origin("d", 1))
    (example,) = tokenize_examples([long], tokenizer, max_length=40, max_prompt_length=30)
    full = tokenize_examples([long], tokenizer, max_length=1000, max_prompt_length=500)[0]
    assert example.prompt_ids == full.prompt_ids[-30:] and example.completion_ids == full.completion_ids[:10]


def example(prompt, completion, desirable, row):
    return TokenizedExample(prompt, completion, desirable, Origin("d", row))


EXAMPLES = [example([1, 2], [10, 11, 12], True, 1), example([3], [20], False, 2), example([4, 5, 6], [30, 31], True, 3)]


@pytest.mark.parametrize("layout", ["separate", "shared", "packed"])
def test_each_prompt_is_batched_with_the_previous_examples_completion(layout):
    batch = UnpairedCollator(0, layout=layout)(EXAMPLES)
    flat = batch["input_ids"].reshape(-1)

    def tokens(side):
        return [flat[batch[f"{side}_target"][i][batch[f"{side}_mask"][i]]].tolist() for i in range(3)]

    assert tokens("chosen") == [[10, 11, 12], [20], [30, 31]]  # each example's own completion
    assert tokens("rejected") == [[30, 31], [10, 11, 12], [20]]  # rotated by one: y_{i-1}, y_2 for i = 0
    # The mismatched completion continues example i's prompt: its first token is predicted from the prompt's last.
    sources = [flat[batch["rejected_source"][i][0]].item() for i in range(3)]
    assert sources == [2, 3, 6]
    assert batch["desirable"].tolist() == [True, False, True] and batch["kl_mask"].tolist() == [True] * 3


def test_a_batch_of_one_has_no_mismatched_pair_and_long_mismatches_are_cut():
    alone = UnpairedCollator(0)([EXAMPLES[0]])
    assert alone["kl_mask"].tolist() == [False]
    cut = UnpairedCollator(0, max_length=4)(EXAMPLES)
    # example 2 (prompt of 3 tokens) gets example 1's completion [20]; example 0 (prompt 2) gets [30, 31];
    # example 1 (prompt 1) gets [10, 11, 12]: each cut to 4 − len(prompt) tokens.
    assert cut["rejected_mask"].sum(-1).tolist() == [2, 3, 1]
    assert torch.equal(cut["chosen_mask"], UnpairedCollator(0)(EXAMPLES)["chosen_mask"])


def step_pairs(examples: int, batch: int, processes: int, accumulation: int) -> list[list[tuple[int, int | None]]]:
    return list(StepRotation(BatchSampler(range(examples), batch, drop_last=False), processes, accumulation))


def test_a_steps_mismatched_pairs_do_not_depend_on_how_it_is_split():
    """7 examples in one optimizer step: each takes the completion of the one dealt before it in the
    step (the last's for the first), whether the step is 1 batch of 8, 4 + 3 accumulated, 4 | 3 on
    2 processes or (2 + 2) | (2 + 1)."""
    whole = [(0, 6), (1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5)]
    assert step_pairs(7, 8, 1, 1) == [whole]
    for batch, processes, accumulation in ((4, 1, 2), (4, 2, 1), (2, 2, 2)):
        split = step_pairs(7, batch, processes, accumulation)
        assert [pair for part in split for pair in part] == whole
    assert step_pairs(7, 2, 2, 2) == [whole[0:2], whole[2:4], whole[4:6], whole[6:]]


def test_each_step_rotates_its_own_examples_and_a_lone_example_has_no_pair():
    """9 examples at batch 2 on 2 processes: steps [0..3], [4..7], then 8 with an empty batch to end the round."""
    assert step_pairs(9, 2, 2, 1) == [
        [(0, 3), (1, 0)], [(2, 1), (3, 2)], [(4, 7), (5, 4)], [(6, 5), (7, 6)], [(8, None)], [],
    ]


def test_examples_dealt_with_their_step_partner_are_batched_with_its_completion():
    items = [KlExamples(EXAMPLES)[index] for index in [(0, 2), (1, None)]]
    assert items[0] == KlExample(EXAMPLES[0], EXAMPLES[2].completion_ids)
    batch = UnpairedCollator(0)(items)
    flat = batch["input_ids"].reshape(-1)
    rejected = [flat[batch["rejected_target"][i][batch["rejected_mask"][i]]].tolist() for i in range(2)]
    assert rejected == [[30, 31], [20]]  # example 2's completion; example 1's own, a placeholder
    assert batch["kl_mask"].tolist() == [True, False]
