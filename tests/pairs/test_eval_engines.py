"""``slimepo eval --engine``: a benchmark answered by another generation engine (here an
OpenAI-compatible server) is scored, recorded and resumed like one answered in process; held-out
scoring stays with the model in this process; the options are checked by name."""

import json

import pytest

from slimepo.compare import run_eval_config
from slimepo.config import ConfigError, EvalConfig, TrainConfig
from slimepo.eval.answers import AnswersMismatchError
from slimepo.eval.run import evaluate
from slimepo.testing import FixedJudge

from .conftest import write_jsonl

#: Two IFEval prompts; the fake server answers "<prompt> | seed=S temperature=0.0".
PROMPTS = [
    {"key": 1, "prompt": "write in lowercase about rivers.", "instruction_id_list": ["change_case:english_lowercase"],
     "kwargs": [{}]},
    {"key": 2, "prompt": "WRITE IN CAPITALS ABOUT RIVERS.", "instruction_id_list": ["change_case:english_capital"],
     "kwargs": [{}]},
]
HELD_OUT = [{"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five."}]


def eval_config(tiny_model_dir, tmp_path, url, **overrides):
    values = dict(model=str(tiny_model_dir), dataset=str(write_jsonl(tmp_path / "held_out.jsonl", HELD_OUT)),
                  split="train", generate=False, bench="ifeval",
                  questions=str(write_jsonl(tmp_path / "ifeval.jsonl", PROMPTS)), bench_max_new_tokens=16,
                  engine="openai", engine_url=f"{url}/v1", engine_model="served")
    values.update(overrides)
    return EvalConfig(**values)


def test_ifeval_answered_by_an_openai_server_is_scored_recorded_and_resumed(tiny_model_dir, chat_server, tmp_path):
    url, server = chat_server
    config = eval_config(tiny_model_dir, tmp_path, url)
    result = evaluate(config, out_dir=tmp_path / "out")

    requests = [r["body"] for r in server.requests]
    assert sorted(r["messages"][-1]["content"] for r in requests) == sorted(p["prompt"] for p in PROMPTS)
    assert {(r["model"], r["temperature"], r["max_tokens"]) for r in requests} == {("served", 0.0, 16)}
    answers = [json.loads(line) for line in (tmp_path / "out" / "ifeval" / "answers.jsonl").read_text().splitlines()]
    by_key = {a["key"]: a for a in answers}
    seeds = {r["messages"][-1]["content"]: r["seed"] for r in requests}
    for prompt in PROMPTS:
        text = f"{prompt['prompt']} | seed={seeds[prompt['prompt']]} temperature=0.0"
        answer = by_key[str(prompt["key"])]
        assert answer["response"] == text
        assert answer["health"] == {"ended": True, "empty": False, "repetition": 0.0, "degenerate": False,
                                    "length_tokens": len(text.split())}  # the server's completion_tokens
        assert answer["made_by"]["engine"] == "openai" and answer["made_by"]["model"] == "served"
    # lowercase: the first answer is all lowercase; capitals: "seed=" is not, so the second fails
    assert result["ifeval"]["prompt_level_strict"] == 0.5
    assert result["ifeval"]["provenance"]["engine"] == {"engine": "openai", "url": f"{url}/v1/chat/completions",
                                                        "model": "served"}
    assert result["pairs"] == 1  # held-out pairs: scored by the model in this process

    evaluate(config, out_dir=tmp_path / "out")
    assert len(server.requests) == 2  # resumed: every answer kept, no request sent
    with pytest.raises(AnswersMismatchError, match="model 'served' \\(file\\) vs 'other' \\(now\\)"):
        evaluate(eval_config(tiny_model_dir, tmp_path, url, engine_model="other"), out_dir=tmp_path / "out")


def test_mt_bench_answered_by_an_openai_server_sends_both_turns(tiny_model_dir, chat_server, tmp_path):
    url, server = chat_server
    questions = write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Shorter."]}])
    judge = FixedJudge("Fine answer. Rating: [[7]]")
    result = evaluate(eval_config(tiny_model_dir, tmp_path, url, bench="mt-bench", questions=str(questions)),
                      out_dir=tmp_path / "out", judge=judge)
    turns = [r["body"]["messages"] for r in server.requests]
    assert [[m["content"] for m in t if m["role"] == "user"] for t in turns] == [["Write a poem."],
                                                                                ["Write a poem.", "Shorter."]]
    first = turns[1][1]["content"]  # the first answer, sent back as the assistant's turn
    assert first.startswith("Write a poem. | seed=")
    assert result["mt_bench"]["overall"] == 7.0 and len(judge.requests) == 2


@pytest.mark.parametrize(("overrides", "message"), [
    ({"bench": None}, r"engine: openai answers the prompts of --bench"),
    ({"engine_url": None}, r"engine_url: the openai engine needs it"),
    ({"adapter": "some/adapter"}, r"adapter: the openai engine answers with what the server serves"),
    ({"engine": "hf"}, r"engine_url, engine_model: only the openai engine uses them"),
    ({"engine_url": "ftp://host/v1"}, r"engine_url"),
])
def test_engine_options_are_refused_by_name_before_anything_loads(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        eval_config("unused", tmp_path, "http://127.0.0.1:9", **overrides).validate()


def test_vllm_without_vllm_is_refused_with_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr("slimepo.generation.base.vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"engine: the vllm engine needs vLLM.*make vllm-env"):
        EvalConfig(bench="ifeval", engine="vllm").validate()


def test_compare_refuses_an_openai_engine_which_cannot_serve_the_runs_it_trains(tmp_path):
    with pytest.raises(ConfigError, match="engine: compare evaluates the runs it trains"):
        run_eval_config(TrainConfig(output_dir=str(tmp_path / "run")),
                        EvalConfig(bench="ifeval", engine="openai", engine_url="http://127.0.0.1:9/v1"))
