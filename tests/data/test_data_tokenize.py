"""slimepo.data.tokenize: prompt ids are what the model sees at inference, every row
format gives the same ids, truncation keeps the right ends, template problems are
counted and warned about once."""

from __future__ import annotations

import warnings

import pytest
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from slimepo.data import (
    DataError,
    Origin,
    PreferencePair,
    Row,
    ValidationReport,
    normalize_rows,
    tokenize_pairs,
)
from slimepo.data.tokenize import end_of_turn_id, ends_with
from slimepo.testing import (
    CHATML_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    _tiny_tokenizer_json,
    assistant,
    system,
    user,
)

QUESTION = "What is two plus two?"





def pair(prompt, chosen="Four.", rejected="Five.", row=1):
    return PreferencePair(prompt, chosen, rejected, Origin("test", row))


def tokenize(pairs, tokenizer, report=None, **kwargs):
    kwargs = {"max_length": 256, "max_prompt_length": 128, **kwargs}
    return tokenize_pairs(pairs, tokenizer, report=report, **kwargs)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chatml_pair_tokenizes_to_exactly_the_rendered_prompt_and_response(tokenizer):
    (tokens,) = tokenize([pair(QUESTION)], tokenizer)
    prompt_text = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert tokens.prompt_ids == ids(tokenizer, prompt_text)
    # The "\n" after <|im_end|> separates turns; it is never generated, so not trained.
    assert tokens.chosen_ids == ids(tokenizer, "Four.<|im_end|>")
    assert tokens.rejected_ids == ids(tokenizer, "Five.<|im_end|>")


def test_explicit_conversational_implicit_and_ultrafeedback_rows_give_the_same_ids(tokenizer):
    convo_chosen, convo_rejected = (
        [user(QUESTION), assistant("Four.")],
        [user(QUESTION), assistant("Five.")],
    )
    rows = [
        {"prompt": QUESTION, "chosen": "Four.", "rejected": "Five."},
        {
            "prompt": [user(QUESTION)],
            "chosen": [assistant("Four.")],
            "rejected": [assistant("Five.")],
        },
        {"prompt": [user(QUESTION)], "chosen": "Four.", "rejected": "Five."},
        {"chosen": convo_chosen, "rejected": convo_rejected, "prompt_id": "x", "score_chosen": 9.0},
        {
            "prompt": QUESTION,
            "chosen": convo_chosen,
            "rejected": convo_rejected,
            "messages": convo_chosen,
        },
    ]
    pairs = normalize_rows(Row(row, Origin("test", i)) for i, row in enumerate(rows, start=1))
    tokenized = tokenize(pairs, tokenizer)
    assert len(tokenized) == len(rows)
    expected = (tokenized[0].prompt_ids, tokenized[0].chosen_ids, tokenized[0].rejected_ids)
    for tokens in tokenized:
        assert (tokens.prompt_ids, tokens.chosen_ids, tokens.rejected_ids) == expected


def test_multi_turn_prompt_with_system_turn_renders_every_turn_in_order(tokenizer):
    history = [system("Be brief."), user("Hi."), assistant("Hello."), user(QUESTION)]
    explicit = pair(history, [assistant("Four.")], [assistant("Five.")])
    (implicit,) = normalize_rows(
        [
            Row(
                {
                    "chosen": [*history, assistant("Four.")],
                    "rejected": [*history, assistant("Five.")],
                },
                Origin("t", 1),
            )
        ]
    )
    tokenized = tokenize([explicit, implicit], tokenizer)
    expected_prompt = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenized[0].prompt_ids == ids(tokenizer, expected_prompt)
    explicit_ids, implicit_ids = ((t.prompt_ids, t.chosen_ids, t.rejected_ids) for t in tokenized)
    assert explicit_ids == implicit_ids


@pytest.mark.parametrize(
    "prompt",
    [
        QUESTION,
        [user(QUESTION)],
        [system("Be brief."), user("Hi."), assistant("Hello."), user(QUESTION)],
    ],
)
def test_prompt_ids_are_a_prefix_of_the_full_tokenization(tokenizer, prompt):
    report = ValidationReport()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tokens,) = tokenize(
            [pair(prompt, " Four, with a leading space.", "\nFive.")], tokenizer, report
        )
    messages = [user(prompt)] if isinstance(prompt, str) else prompt
    for response, response_ids in (
        (" Four, with a leading space.", tokens.chosen_ids),
        ("\nFive.", tokens.rejected_ids),
    ):
        full = tokenizer.apply_chat_template([*messages, assistant(response)], tokenize=False)
        assert full.endswith("<|im_end|>\n")
        assert ids(tokenizer, full.removesuffix("\n")) == tokens.prompt_ids + response_ids
    assert report.template_mismatches == 0


# Trims contents and ends the generation prompt with a space: "assistant: " alone
# tokenizes to [..., ":", " "], but "assistant: the ..." to [..., ":", " the", ...].
TRIMMING_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
# The generation prompt adds a newline that the rendered conversation lacks.
NOT_A_PREFIX_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\\n<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (TRIMMING_TEMPLATE, "a token spans the boundary"),
        (NOT_A_PREFIX_TEMPLATE, "does not start with"),
    ],
    ids=["token_split_at_boundary", "prompt_text_not_a_prefix"],
)
def test_template_breaking_the_prefix_is_counted_per_pair_and_warned_about_once(
    tokenizer, template, problem
):
    report = ValidationReport()
    pairs = [
        pair(QUESTION, "the answer is four.", "five.", row=1),
        pair("Say hello.", "the sea says hello.", "No.", row=2),
        pair("Hi.", "the cat sat on the mat.", "Bye.", row=3),
    ]
    with pytest.warns(UserWarning) as caught:
        tokenized = tokenize(pairs, tokenizer, report, chat_template=template)
    assert len(caught) == 1
    assert problem in str(caught[0].message)
    assert "mismatch in 3 pairs (first at test:1" in str(caught[0].message)
    assert report.template_mismatches == 3
    assert "chat template mismatches: 3 pairs" in str(report)
    # Still trained on the separate tokenization: prompt ids are the prompt rendered alone.
    prompt_text = tokenizer.apply_chat_template(
        [user(QUESTION)], chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert tokenized[0].prompt_ids == ids(tokenizer, prompt_text)


def test_template_override_from_a_file_equals_the_inline_template(tokenizer, tmp_path):
    path = tmp_path / "template.jinja"
    path.write_text(TRIMMING_TEMPLATE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_file = tokenize([pair(QUESTION)], tokenizer, chat_template=str(path))
        inline = tokenize([pair(QUESTION)], tokenizer, chat_template=TRIMMING_TEMPLATE)
    assert from_file == inline
    assert from_file != tokenize([pair(QUESTION)], tokenizer)


def test_chat_template_that_is_neither_template_nor_file_is_a_value_error(tokenizer):
    with pytest.raises(ValueError, match="chatml_typo"):
        tokenize([pair(QUESTION)], tokenizer, chat_template="chatml_typo")


def test_unparseable_template_is_a_value_error(tokenizer):
    with pytest.raises(ValueError, match="does not parse"):
        tokenize([pair(QUESTION)], tokenizer, chat_template="{% for m in messages %}")


def test_template_that_refuses_a_conversation_counts_template_error(tokenizer):
    no_system = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}" + CHATML_TEMPLATE
    )
    report = ValidationReport()
    pairs = [pair([system("Be brief."), user(QUESTION)], row=1), pair(QUESTION, row=2)]
    tokenized = tokenize(pairs, tokenizer, report, chat_template=no_system)
    assert [t.origin.row for t in tokenized] == [2]
    assert report.examples["template_error"] == [Origin("test", 1)]


def test_prompt_is_truncated_from_the_left_and_responses_from_the_right(tokenizer):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 20
    long_chosen = "Rivers flow to the sea. " * 20
    (full,) = tokenize(
        [pair(long_prompt, long_chosen, "No.")], tokenizer, max_length=4096, max_prompt_length=2048
    )
    (cut,) = tokenize(
        [pair(long_prompt, long_chosen, "No.")], tokenizer, max_length=40, max_prompt_length=16
    )
    assert cut.prompt_ids == full.prompt_ids[-16:]
    assert cut.chosen_ids == full.chosen_ids[: 40 - 16]
    assert cut.rejected_ids == full.rejected_ids  # short enough to be whole
    assert tokenizer.decode(cut.prompt_ids).endswith("<|im_start|>assistant\n")


def test_short_prompt_leaves_the_rest_of_max_length_to_the_responses(tokenizer):
    (tokens,) = tokenize(
        [pair("Hi.", "Rivers flow to the sea. " * 20, "No.")],
        tokenizer,
        max_length=30,
        max_prompt_length=20,
    )
    assert len(tokens.prompt_ids) < 20
    assert len(tokens.prompt_ids) + len(tokens.chosen_ids) == 30


def test_response_without_tokens_is_dropped_as_empty_after_truncation(tokenizer):
    user_turns_only = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    report = ValidationReport()
    tokenized = tokenize([pair(QUESTION)], tokenizer, report, chat_template=user_turns_only)
    assert tokenized == []
    assert report.empty_after_truncation == 1
    assert report.examples["empty_after_truncation"] == [Origin("test", 1)]


@pytest.mark.parametrize(("max_length", "max_prompt_length"), [(512, 512), (512, 600), (512, 0)])
def test_max_prompt_length_must_be_positive_and_below_max_length(
    tokenizer, max_length, max_prompt_length
):
    with pytest.raises(
        ValueError, match=f"max_prompt_length={max_prompt_length}, max_length={max_length}"
    ):
        tokenize(
            [pair(QUESTION)], tokenizer, max_length=max_length, max_prompt_length=max_prompt_length
        )


def test_plain_text_mode_appends_eos_to_responses_only(tokenizer):
    (tokens,) = tokenize([pair(QUESTION)], tokenizer, chat_template="none")
    assert tokens.prompt_ids == ids(tokenizer, QUESTION)
    assert tokens.chosen_ids == [*ids(tokenizer, "Four."), tokenizer.eos_token_id]
    assert tokens.rejected_ids == [*ids(tokenizer, "Five."), tokenizer.eos_token_id]


def test_auto_without_a_tokenizer_template_is_plain_text(tokenizer):
    plain = tokenize([pair(QUESTION)], tokenizer, chat_template="none")
    tokenizer.chat_template = None
    assert tokenize([pair(QUESTION)], tokenizer, chat_template="auto") == plain


def test_plain_text_mode_starts_the_prompt_with_bos_when_the_tokenizer_adds_one():
    backend = Tokenizer.from_str(_tiny_tokenizer_json())
    backend.post_processor = processors.TemplateProcessing(
        single=f"{ENDOFTEXT} $A", special_tokens=[(ENDOFTEXT, 0)]
    )
    with_bos = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=ENDOFTEXT, eos_token=IM_END
    )
    (tokens,) = tokenize([pair(QUESTION)], with_bos)
    assert tokens.prompt_ids == [with_bos.bos_token_id, *ids(with_bos, QUESTION)]
    assert tokens.prompt_ids == with_bos(QUESTION)["input_ids"]


def test_conversation_without_a_chat_template_is_a_data_error_naming_the_row(tokenizer):
    with pytest.raises(DataError, match="test:7 is a conversation"):
        tokenize([pair([user(QUESTION)], row=7)], tokenizer, chat_template="none")


def test_the_end_of_turn_id_is_the_token_a_whole_response_ends_with_under_each_template(tokenizer):
    assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids(IM_END)
    assert end_of_turn_id(tokenizer, "none") == tokenizer.eos_token_id
    gemma_like = CHATML_TEMPLATE.replace("<|im_end|>", "<|endoftext|>")
    assert end_of_turn_id(tokenizer, gemma_like) == tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    (whole,) = tokenize([pair(QUESTION)], tokenizer)
    assert whole.chosen_ids[-1] == whole.rejected_ids[-1] == end_of_turn_id(tokenizer)


def test_a_response_whose_end_truncation_cut_off_does_not_end_with_the_end_of_turn(tokenizer):
    rows = [pair(QUESTION, "Rivers flow to the sea. " * 20, "No.", row=1), pair(QUESTION, "Four.", "Five.", row=2)]
    tokenized = tokenize(rows, tokenizer, max_length=60, max_prompt_length=30)
    assert len(tokenized[0].chosen_ids) + len(tokenized[0].prompt_ids) == 60  # the long answer was cut

    assert ends_with(tokenized, end_of_turn_id(tokenizer)) == ([False, True], [True, True])
