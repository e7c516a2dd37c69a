"""What an answer records of the decoding that made it: one ``Decoding``, the same JSON as ever."""

import json

from slimepo.config import EvalConfig
from slimepo.eval.answers import BENCH_DECODING, answer_prompts
from slimepo.generation.base import BENCH_MAX_NEW_TOKENS, MAX_NEW_TOKENS, Decoding
from slimepo.testing import tiny_model, tiny_tokenizer


def test_the_two_budgets_are_the_defaults_of_held_out_and_benchmark_answers():
    assert (MAX_NEW_TOKENS, BENCH_MAX_NEW_TOKENS) == (128, 1024)
    assert Decoding().max_new_tokens == MAX_NEW_TOKENS
    assert BENCH_DECODING.max_new_tokens == BENCH_MAX_NEW_TOKENS
    assert EvalConfig().decoding() == Decoding()
    assert EvalConfig().bench_decoding() == BENCH_DECODING


def test_made_by_records_every_decoding_setting_in_the_order_answers_files_always_held(tmp_path):
    decoding = Decoding(max_new_tokens=3, sampling=True, temperature=0.5, top_p=0.9, seed=2)
    answer_prompts(tiny_model("llama").eval(), tiny_tokenizer(), tmp_path / "answers.jsonl", {"a": "Hi."}, decoding)

    line = (tmp_path / "answers.jsonl").read_text().splitlines()[0]
    made_by = json.loads(line)["made_by"]
    assert json.dumps(made_by["decoding"]) == (
        '{"max_new_tokens": 3, "sampling": true, "temperature": 0.5, "top_p": 0.9, "seed": 2}'
    )
    assert list(made_by) == ["weights_sha256", "decoding", "prompt_ids_sha256"]
