"""slimepo.testing.tiny_tokenizer: offline, deterministic, ChatML, independent copies."""

from __future__ import annotations

from slimepo.testing import TINY_VOCAB_SIZE, tiny_tokenizer


def test_tiny_tokenizer_has_the_chatml_special_tokens():
    tokenizer = tiny_tokenizer()
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") != tokenizer.unk_token_id
    assert len(tokenizer) == TINY_VOCAB_SIZE
    assert tokenizer.bos_token is None


def test_tiny_tokenizer_renders_chatml_with_a_generation_prompt():
    tokenizer = tiny_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tiny_tokenizer_round_trips_text_and_special_tokens_as_single_ids():
    tokenizer = tiny_tokenizer()
    text = "<|im_start|>user\nThe café costs 3.14 € 🙂<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.eos_token_id in ids


def test_tiny_tokenizer_is_deterministic_and_each_call_is_an_independent_object():
    first, second = tiny_tokenizer(), tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    first.padding_side = "left"
    assert second.padding_side == "right"
    assert first is not second
