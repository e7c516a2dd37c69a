"""Engines behind one interface: decoding settings, the hf engine over slimepo's generate, the
openai engine against a local server, and what the vllm engine says where vLLM is not installed
(its answers against the hf engine's: tests/generation/test_vllm_engine.py, in the venv of ``make vllm-env``)."""

import pytest

from slimepo.generation import ENGINES, Decoding, EngineUnavailable, make_engine, vllm_installed
from slimepo.generation.base import sample_seed
from slimepo.generation.batched import chat_prompt_ids, generate
from slimepo.generation.openai_api import EngineError, OpenAIEngine

CONVERSATIONS = [[{"role": "user", "content": "What is the capital of France?"}],
                 [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "Explain why the sky is blue."}]]


def test_decoding_declares_its_defaults_once_and_records_every_setting():
    assert Decoding().to_dict() == {"max_new_tokens": 128, "sampling": False, "temperature": 1.0, "top_p": 1.0,
                                    "seed": 0}
    with pytest.raises(ValueError, match="temperature > 0"):
        Decoding(sampling=True, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Decoding(max_new_tokens=0)


def test_greedy_decoding_refuses_more_than_one_answer_per_prompt(tiny_engine):
    with pytest.raises(ValueError, match="greedy decoding gives one answer"):
        tiny_engine.generate(CONVERSATIONS, Decoding(max_new_tokens=4), n=2)


def test_hf_engine_sample_i_is_slimepos_generate_under_its_derived_seed(tiny_engine):
    decoding = Decoding(max_new_tokens=6, sampling=True, seed=3)
    samples = tiny_engine.generate(CONVERSATIONS, decoding, n=3)
    assert [len(s) for s in samples] == [3, 3]
    prompts = [chat_prompt_ids(tiny_engine.tokenizer, c) for c in CONVERSATIONS]
    from slimepo.fingerprint import token_ids_sha256

    digest = token_ids_sha256([t for p in prompts for t in [-1, *p]])
    for i in range(3):
        expected = generate(tiny_engine.model, tiny_engine.tokenizer, prompts, max_new_tokens=6, sampling=True,
                            seed=sample_seed(3 + i, digest), batch_size=4)
        assert [s[i].token_ids for s in samples] == [g.token_ids for g in expected]
        assert [s[i].text for s in samples] == [g.text for g in expected]
    for sample in samples[0] + samples[1]:
        assert sample.length == len(sample.token_ids) <= 6
        assert sample.ended == (sample.token_ids[-1] == tiny_engine.tokenizer.eos_token_id)
    assert len({tuple(s.token_ids) for s in samples[0]}) > 1, "different seeds, different samples"
    assert tiny_engine.generate(CONVERSATIONS, decoding, n=3) == samples, "reproducible"


def test_hf_engine_identity_is_the_weights_and_the_prompt_its_token_ids(tiny_engine):
    identity = tiny_engine.identity()
    assert identity["engine"] == "hf" and len(identity["weights_sha256"]) == 64
    assert tiny_engine.prompt_digest(CONVERSATIONS[0]) != tiny_engine.prompt_digest(CONVERSATIONS[1])


def test_openai_engine_requests_each_sample_with_its_own_seed(chat_server, monkeypatch):
    url, server = chat_server
    monkeypatch.setenv("TEST_ENGINE_KEY", "sk-test")
    engine = OpenAIEngine(url + "/v1", "served-model", "TEST_ENGINE_KEY")
    decoding = Decoding(max_new_tokens=20, sampling=True, temperature=0.7, seed=5)
    samples = engine.generate(CONVERSATIONS, decoding, n=2)
    assert len(samples) == 2 and all(len(s) == 2 for s in samples)
    bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 4
    assert {b["model"] for b in bodies} == {"served-model"} and {b["n"] for b in bodies} == {1}
    assert {b["max_tokens"] for b in bodies} == {20} and {b["temperature"] for b in bodies} == {0.7}
    for conversation, answers in zip(CONVERSATIONS, samples):
        seeds = [sample_seed(5 + i, engine.prompt_digest(conversation)) for i in range(2)]
        assert [a.text for a in answers] == [f"{conversation[-1]['content']} | seed={s} temperature=0.7" for s in seeds]
        assert all(a.ended and a.token_ids is None and a.length == len(a.text.split()) for a in answers)
    assert {r["authorization"] for r in server.requests} == {"Bearer sk-test"}
    assert engine.identity() == {"engine": "openai", "url": url + "/v1/chat/completions", "model": "served-model"}


def test_openai_engine_sends_greedy_as_temperature_zero_and_reads_a_cut_answer(chat_server):
    url, server = chat_server
    [[sample]] = OpenAIEngine(url + "/cut/v1", "m").generate(CONVERSATIONS[:1], Decoding(max_new_tokens=3), n=1)
    assert server.requests[0]["body"]["temperature"] == 0.0 and not sample.ended


def test_openai_engine_retries_a_server_error(chat_server):
    url, server = chat_server
    [[sample]] = OpenAIEngine(url + "/flaky/v1", "m", backoff=0).generate(CONVERSATIONS[:1], Decoding(), n=1)
    assert len(server.requests) == 2 and "seed=" in sample.text


def test_openai_engine_never_follows_a_redirect(chat_server):
    url, server = chat_server
    with pytest.raises(EngineError, match="refusing to follow a redirect"):
        OpenAIEngine(url + "/moved/v1", "m", backoff=0).generate(CONVERSATIONS[:1], Decoding(), n=1)
    assert len(server.requests) == 1


@pytest.mark.parametrize("url", ["http://user:secret@localhost:8000/v1", "ftp://localhost/v1", "localhost:8000"])
def test_openai_engine_refuses_the_urls_the_judge_refuses(url):
    with pytest.raises(ValueError, match="^engine_url: must") as refused:
        OpenAIEngine(url, "m")
    assert "secret" not in str(refused.value) and "judge" not in str(refused.value)


@pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here: tests/generation/test_vllm_engine.py runs it")
def test_vllm_engine_without_vllm_says_how_to_install_it(tmp_path):
    assert "vllm" in ENGINES
    with pytest.raises(EngineUnavailable, match="make vllm-env") as error:
        make_engine("vllm", model=tmp_path)
    assert "--engine openai --engine-url" in str(error.value) and "No module named 'vllm'" in str(error.value)
