"""``slimepo pairs`` end to end: composed prompts -> sampled, scored answers -> pairs that
training reads; resuming after an interruption; refusing another model's samples; every bad
prompt and scorer failure counted."""

import json

import pytest

from slimepo.cli import main
from slimepo.config import ConfigError, TrainConfig
from slimepo.data import load_rows, normalize_rows
from slimepo.data.formats import ValidationReport
from slimepo.eval.answers import AnswersMismatchError
from slimepo.generation import vllm_installed
from slimepo.pairs.compose import make_prompts
from slimepo.pairs.config import MakePromptsConfig, PairsConfig
from slimepo.pairs.run import make_pairs
from slimepo.pairs.scorers.base import Score
from slimepo.train import train

from .conftest import ScriptedEngine, write_jsonl

#: Instruction types whose checks a tiny random model passes now and then, so its answers differ in score.
VARYING_TYPES = ["keywords:letter_frequency", "punctuation:no_comma", "change_case:english_lowercase"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_composed_prompts_to_pairs_to_two_training_steps_on_a_tiny_model(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    make_prompts(MakePromptsConfig(out=str(prompts), instruction_types=VARYING_TYPES, max_instructions=2))
    result = make_pairs(PairsConfig(prompts=str(prompts), max_prompts=8, model=str(tiny_model_dir), k=4,
                                    max_new_tokens=16, scorer="ifeval", batch_size=4, out=str(tmp_path / "pairs")))
    counts = result.counts
    assert counts["prompts"] == 8 and counts["samples"] == 32 and counts["scorer_failures"] == 0
    assert counts["pairs"] >= 2
    assert counts["pairs"] + sum(counts["prompts_without_pair"].values()) == 8
    pairs = read_jsonl(tmp_path / "pairs" / "pairs.jsonl")
    assert len(pairs) == counts["pairs"]
    assert all(p["chosen_score"] > p["rejected_score"] and isinstance(p["chosen"], str) for p in pairs)
    samples = read_jsonl(tmp_path / "pairs" / "samples.jsonl")
    assert len(samples) == 32 and {s["scored_by"]["scorer"] for s in samples} == {"ifeval"}
    assert {s["made_by"]["weights_sha256"] for s in samples} == {result.provenance["engine"]["weights_sha256"]}
    provenance = json.loads((tmp_path / "pairs" / "provenance.json").read_text())
    assert provenance["decoding"] == {"max_new_tokens": 16, "sampling": True, "temperature": 1.0, "top_p": 1.0,
                                      "seed": 0}
    assert provenance["prompts"]["sha256"] and provenance["timing"]["seconds_per_prompt_sampled"] > 0

    run = train(TrainConfig(model=str(tiny_model_dir), dataset=str(tmp_path / "pairs" / "pairs.jsonl"),
                            eval_dataset=str(tmp_path / "pairs" / "pairs.jsonl"), eval_split="train",
                            output_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, save_steps=0,
                            logging_steps=1, monitor_steps=0, lora_r=4, lora_alpha=8))
    assert run.global_step == 2


def numbered_prompts(tmp_path, n=6):
    return write_jsonl(tmp_path / "prompts.jsonl",
                       [{"id": f"p{i}", "prompt": f"Tell me about the river ({i}).",
                         "constraint": {"family": "no_commas", "params": {}}} for i in range(n)])


def alternating(conversation, i):
    """Even answers obey no_commas, odd ones do not."""
    return "Rivers flow to the sea." if i % 2 == 0 else f"Rivers flow, {conversation[-1]['content']}"


def test_an_interrupted_run_resumes_without_losing_or_resampling_any_prompt(tmp_path):
    config = PairsConfig(prompts=str(numbered_prompts(tmp_path)), k=4, batch_size=2, out=str(tmp_path / "out"))
    first = ScriptedEngine(alternating, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        make_pairs(config, engine=first)
    samples_file = tmp_path / "out" / "samples.jsonl"
    kept = read_jsonl(samples_file)
    assert sorted({s["key"] for s in kept}) == ["p0", "p1"] and len(kept) == 8
    # a kill in the middle of the next batch: one answer of p2 written, and a torn line
    p2_digest = json.dumps([{"role": "user", "content": "Tell me about the river (2)."}])
    partial = {**kept[0], "key": "p2", "made_by": {**kept[0]["made_by"], "prompt_ids_sha256": p2_digest}}
    with samples_file.open("a") as f:
        f.write(json.dumps(partial) + "\n" + '{"key": "p3", "sam')

    second = ScriptedEngine(alternating)
    result = make_pairs(config, engine=second)
    sampled_twice = [p for p in first.calls[0] if any(p in call for call in second.calls)]
    assert sampled_twice == [] and sorted(p for call in second.calls for p in call) == [
        f"Tell me about the river ({i})." for i in range(2, 6)]
    final = read_jsonl(samples_file)
    assert sorted((s["key"], s["sample"]) for s in final) == [(f"p{i}", j) for i in range(6) for j in range(4)]
    assert [s for s in final if s["key"] in ("p0", "p1")] == kept
    assert result.counts["prompts_sampled_this_run"] == 4 and result.counts["pairs"] == 6

    third = ScriptedEngine(alternating)
    make_pairs(config, engine=third)
    assert third.calls == [] and read_jsonl(samples_file) == final


def test_pairs_say_whether_each_answer_ended_and_reject_pairs_only_answers_that_ended_as_chosen(tmp_path):
    # p_i's answers: 0 and 2 obey no_commas, 1 and 3 do not; answer 0 was cut by the budget.
    config = PairsConfig(prompts=str(numbered_prompts(tmp_path, 3)), k=4, out=str(tmp_path / "out"))
    make_pairs(config, engine=ScriptedEngine(alternating, ended=lambda c, i: i != 0))
    kept = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [(p["chosen_sample"], p["chosen_ended"], p["rejected_sample"], p["rejected_ended"]) for p in kept] == [
        (0, False, 1, True)] * 3

    config.cut_answers = "reject"
    engine = ScriptedEngine(alternating)
    result = make_pairs(config, engine=engine)
    assert engine.calls == []  # the same samples, paired again
    rejected = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [(p["chosen_sample"], p["chosen_ended"], p["rejected_sample"]) for p in rejected] == [(2, True, 1)] * 3
    assert result.provenance["pairing"] == {"mode": "best-worst", "min_gap": 0.0, "cut_answers": "reject"}
    samples = read_jsonl(tmp_path / "out" / "samples.jsonl")
    assert [s["ended"] for s in samples if s["key"] == "p0"] == [False, True, True, True]


def test_samples_made_by_another_decoding_or_model_are_refused(tmp_path):
    config = PairsConfig(prompts=str(numbered_prompts(tmp_path, 2)), k=2, out=str(tmp_path / "out"))
    make_pairs(config, engine=ScriptedEngine(alternating))
    config.seed = 1
    with pytest.raises(AnswersMismatchError, match="decoding"):
        make_pairs(config, engine=ScriptedEngine(alternating))
    config.seed = 0

    class OtherModel(ScriptedEngine):
        def identity(self):
            return {"engine": "scripted", "weights_sha256": "0" * 64}

    with pytest.raises(AnswersMismatchError, match="weights_sha256"):
        make_pairs(config, engine=OtherModel(alternating))


def test_samples_are_scored_again_by_another_scorer_without_sampling_again(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"key": 7, "prompt": "Describe the sea.", "constraint": {"family": "no_commas", "params": {}},
         "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}])
    config = PairsConfig(prompts=str(prompts), k=2, out=str(tmp_path / "out"))
    make_pairs(config, engine=ScriptedEngine(lambda c, i: ["the sea, so blue", "The sea is blue"][i]))
    assert [p["chosen"] for p in read_jsonl(tmp_path / "out" / "pairs.jsonl")] == ["The sea is blue"]
    config.scorer = "ifeval"
    engine = ScriptedEngine(alternating)
    result = make_pairs(config, engine=engine)
    assert engine.calls == [] and result.counts["samples_rescored_this_run"] == 2
    assert [p["chosen"] for p in read_jsonl(tmp_path / "out" / "pairs.jsonl")] == ["the sea, so blue"]


def test_bad_prompts_and_scorer_failures_are_counted_with_their_rows(tmp_path):
    good = {"family": "no_commas", "params": {}}
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "Name a fruit.", "constraint": good},
        {"id": "b", "constraint": good},
        '{"id": "c", "prompt": "cut off',
        {"id": "a", "prompt": "Name a tree.", "constraint": good},
        {"id": "d", "prompt": [{"role": "assistant", "content": "Hi"}], "constraint": good},
        {"id": "e", "prompt": "Name a bird."},
        {"id": "f", "prompt": "Name a fish.", "constraint": good},
    ])

    class FailsOnFish:
        name = "fails-on-fish"

        def settings(self):
            return {"scorer": self.name}

        def problem(self, record):
            return None if "constraint" in record.data else "no constraint"

        def score(self, items):
            return [Score(None, None, "RuntimeError: no fish") if "fish" in r.request and "," not in a
                    else Score(float("," not in a)) for r, a in items]

    result = make_pairs(PairsConfig(prompts=str(prompts), k=2, out=str(tmp_path / "out")),
                        engine=ScriptedEngine(alternating), scorer=FailsOnFish())
    counts = result.counts
    assert counts["prompt_rows"] == 7 and counts["prompts"] == 2 and counts["bad_prompts"] == 5
    assert counts["bad_prompts_by_reason"] == {"missing_prompt": 1, "invalid_json": 1, "duplicate_key": 1,
                                               "bad_roles": 1, "unscorable": 1}
    bad = {b["row"].rsplit(":", 1)[1]: (b["key"], b["reason"]) for b in result.provenance["bad_prompts"]}
    assert bad == {"2": ("b", "missing_prompt"), "3": (None, "invalid_json"), "4": ("a", "duplicate_key"),
                   "5": ("d", "bad_roles"), "6": ("e", "unscorable")}
    assert counts["scorer_failures"] == 1 and counts["scored_samples"] == 3
    [failure] = result.provenance["scorer_failures"]
    assert failure["key"] == "f" and failure["sample"] == 0 and failure["row"].endswith(":7")
    assert counts["prompts_without_pair"] == {"too_few_answers": 1} and counts["pairs"] == 1


def test_conversational_prompts_give_conversational_pairs_that_the_data_loader_accepts(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Topic {i}?"}],
         "constraint": {"family": "no_commas", "params": {}}} for i in range(3)])
    make_pairs(PairsConfig(prompts=str(prompts), k=2, pairing="all", out=str(tmp_path / "out")),
               engine=ScriptedEngine(alternating))
    report = ValidationReport()
    pairs = normalize_rows(load_rows(tmp_path / "out" / "pairs.jsonl"), report)
    assert len(pairs) == 3 and report.total_rows == 3 and not report.counts
    assert pairs[0].prompt[0] == {"role": "system", "content": "Be brief."}
    assert pairs[0].chosen == [{"role": "assistant", "content": "Rivers flow to the sea."}]
    assert [row["key"] for row in read_jsonl(tmp_path / "out" / "pairs.jsonl")] == ["row-1", "row-2", "row-3"]


@pytest.mark.parametrize(("options", "message"), [
    ({"k": 2, "sample": False}, "greedy decoding gives one answer"),
    ({"engine": "openai"}, "engine_url"),
    ({"engine": "openai", "engine_url": "http://u:p@host/v1"}, "engine_url: must not hold a user name or password.*--engine-key-env"),
    ({"engine": "openai", "engine_url": "file:///etc/passwd"}, "engine_url: must be an http:// or https:// URL"),
    ({"scorer": "judge", "judge_model": "m", "judge_url": "http://k@host/v1"}, "judge_url: .*--judge-key-env"),
    ({"engine_url": "http://host/v1"}, "only the openai engine"),
    ({"scorer": "judge", "judge_url": "http://host/v1"}, "judge_model"),
    ({"scorer": "reward-model"}, "reward_model"),
    ({"min_gap": -1.0}, "min_gap"),
    ({"temperature": 0.0}, "decoding: sampling needs temperature > 0"),
])
def test_invalid_options_are_refused_before_anything_loads(options, message):
    with pytest.raises(ConfigError, match=message):
        PairsConfig(**options).validate()


def test_the_vllm_engine_is_accepted_where_vllm_is_installed(monkeypatch):
    monkeypatch.setattr("slimepo.generation.base.vllm_installed", lambda: True)
    PairsConfig(engine="vllm", adapter="runs/adapter", dtype="float32").validate()
    with pytest.raises(ConfigError, match="only the openai engine"):
        PairsConfig(engine="vllm", engine_url="http://host/v1").validate()


def test_the_vllm_engine_without_vllm_is_refused_before_anything_loads_with_how_to_install_it(monkeypatch):
    monkeypatch.setattr("slimepo.generation.base.vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"engine: the vllm engine needs vLLM.*make vllm-env.*--engine openai"):
        PairsConfig(engine="vllm").validate()


def test_the_cli_runs_make_prompts_then_pairs(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    assert main(["make-prompts", "--out", str(prompts), "--instruction-types", ",".join(VARYING_TYPES)]) == 0
    assert main(["pairs", "--prompts", str(prompts), "--max-prompts", "2", "--model", str(tiny_model_dir), "--k", "2",
                 "--max-new-tokens", "4", "--scorer", "ifeval", "--ifeval-mode", "loose", "--out",
                 str(tmp_path / "out")]) == 0
    output = capsys.readouterr().out
    assert "124 prompts from 124 requests written to" in output and "of 2 prompts" in output
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["scorer"] == {"scorer": "ifeval", "mode": "loose", "benchmark": "ifeval"}
    if not vllm_installed():
        assert main(["pairs", "--engine", "vllm"]) == 2
        assert "make vllm-env" in capsys.readouterr().err


def test_a_renamed_prompt_column_is_read_and_a_set_without_usable_prompts_stops(tmp_path):
    from slimepo.data import DataError

    prompts = write_jsonl(tmp_path / "q.jsonl", [{"question": "Name a river.", "constraint": {"family": "no_commas",
                                                                                              "params": {}}}])
    result = make_pairs(PairsConfig(prompts=str(prompts), columns={"prompt": "question"}, k=2,
                                    out=str(tmp_path / "out")), engine=ScriptedEngine(alternating))
    assert result.counts["pairs"] == 1
    with pytest.raises(DataError, match="no usable prompt .*missing_prompt: 1"):
        make_pairs(PairsConfig(prompts=str(prompts), k=2, out=str(tmp_path / "out2")), engine=ScriptedEngine(alternating))
    with pytest.raises(ConfigError, match="columns"):
        PairsConfig(columns={"chosen": "good"}).validate()
