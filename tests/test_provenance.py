"""Nothing misattributed: answers, resumed runs, evaluation outputs and adapters keep saying what made them."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml

from slimepo.cli import main
from slimepo.config import EvalConfig, TrainConfig
from slimepo.eval import ifeval
from slimepo.eval.answers import AnswersMismatchError, answer_prompts
from slimepo.eval.benchmarks.ifeval import answer_ifeval
from slimepo.eval.run import evaluate
from slimepo.generation.base import Decoding
from slimepo.testing import tiny_model, tiny_tokenizer
from slimepo.train import train
from slimepo.train.run import OutputExistsError


def tiny_run_config(tiny_model_dir, toy_data, out, **overrides) -> TrainConfig:
    values = dict(
        model=str(tiny_model_dir), dataset=str(toy_data["train"]), eval_dataset=str(toy_data["test"]),
        eval_split="train", output_dir=str(out), max_steps=2, batch_size=4, logging_steps=1, save_steps=1,
        lora_r=4, lora_alpha=8, lora_dropout=0.0, monitor_steps=0, learning_rate=1e-2,
    )
    values.update(overrides)
    return TrainConfig(**values)


# --- 1. answers are resumed only from the model and settings that made them ---------------------

PROMPTS = {"a": "Say hello.", "b": "Name a colour.", "c": "Count to three."}


def other_weights(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    return model


def test_an_answers_file_of_another_model_is_refused_by_name(tmp_path):
    tokenizer = tiny_tokenizer()
    answer_prompts(tiny_model("llama").eval(), tokenizer, tmp_path / "answers.jsonl", PROMPTS, Decoding(4))

    with pytest.raises(AnswersMismatchError, match=r"answers.jsonl: 3 of 3 answers were made by another model or "
                                                   r"settings \(the answer to '[abc]': weights_sha256"):
        answer_prompts(other_weights(tiny_model("llama").eval()), tokenizer, tmp_path / "answers.jsonl", PROMPTS,
                       Decoding(4))


@pytest.mark.parametrize(("change", "named"), [
    ({"max_new_tokens": 2}, "decoding"),
    ({"sampling": True}, "decoding"),
    ({"seed": 1, "sampling": True}, "decoding"),
])
def test_answers_made_with_other_decoding_are_refused(tmp_path, change, named):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    first = {"max_new_tokens": 4, "sampling": True} if "seed" in change else {"max_new_tokens": 4}
    answer_prompts(model, tokenizer, tmp_path / "answers.jsonl", PROMPTS, Decoding(**first))

    with pytest.raises(AnswersMismatchError, match=named):
        answer_prompts(model, tokenizer, tmp_path / "answers.jsonl", PROMPTS, Decoding(**{**first, **change}))


def test_an_answer_to_another_prompt_text_under_the_same_key_is_refused(tmp_path):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    answer_prompts(model, tokenizer, tmp_path / "answers.jsonl", PROMPTS, Decoding(4))

    with pytest.raises(AnswersMismatchError, match="1 of 3 answers.*'b'.*the prompt as the model sees it"):
        answer_prompts(model, tokenizer, tmp_path / "answers.jsonl", {**PROMPTS, "b": "Name a fruit."},
                       Decoding(4))


def test_answers_that_record_no_maker_are_refused_not_trusted(tmp_path):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    old = {"key": "a", "prompt": PROMPTS["a"], "response": "hi", "health": {}}  # what slimepo wrote before
    (tmp_path / "answers.jsonl").write_text(json.dumps(old) + "\n")

    with pytest.raises(AnswersMismatchError, match="records no model or settings"):
        answer_prompts(model, tokenizer, tmp_path / "answers.jsonl", PROMPTS, Decoding(4))
    assert json.loads((tmp_path / "answers.jsonl").read_text()) == old  # nothing lost


def test_the_same_model_and_settings_resume_and_answer_only_what_is_missing(tmp_path, monkeypatch):
    import slimepo.eval.answers

    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    first = answer_prompts(model, tokenizer, tmp_path / "answers.jsonl", dict(list(PROMPTS.items())[:2]),
                           Decoding(4))
    asked = []
    real = slimepo.eval.answers.generate
    monkeypatch.setattr(slimepo.eval.answers, "generate",
                        lambda m, t, prompts, **kw: asked.append(len(prompts)) or real(m, t, prompts, **kw))

    # The same weights loaded again (another object) are the same model.
    again = answer_prompts(tiny_model("llama").eval(), tokenizer, tmp_path / "answers.jsonl", PROMPTS,
                           Decoding(4))

    assert asked == [1] and {k: again[k] for k in first} == first
    assert {a["made_by"]["decoding"]["max_new_tokens"] for a in again.values()} == {4}


def test_the_cli_rerun_of_another_run_into_the_same_folder_is_refused_not_scored(tmp_path, capsys):
    """The reproduction: run a's IFEval answers at 6 tokens, then run b at 3 tokens into the same --out."""
    tokenizer = tiny_tokenizer()
    for name, model in (("a", tiny_model("llama")), ("b", other_weights(tiny_model("llama")))):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    common = ["--no-generate", "--max-pairs", "1", "--bench", "ifeval", "--max-prompts", "2", "--out",
              str(tmp_path / "ev")]

    assert main(["eval", "--model", str(tmp_path / "a"), "--bench-max-new-tokens", "6", *common]) == 0
    scores_a = json.loads((tmp_path / "ev" / "eval.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "b"), "--bench-max-new-tokens", "3", *common]) == 2

    assert "made by another model or settings" in capsys.readouterr().err
    assert json.loads((tmp_path / "ev" / "eval.json").read_text()) == scores_a  # a's result still a's


def test_ifeval_provenance_names_the_weights_that_answered(tmp_path):
    tokenizer = tiny_tokenizer()
    for name, model in (("a", tiny_model("llama")), ("b", other_weights(tiny_model("llama")))):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    digests = [
        evaluate(EvalConfig(model=str(tmp_path / name), generate=False, max_pairs=1, bench="ifeval", max_prompts=1,
                            bench_max_new_tokens=2),
                 out_dir=tmp_path / f"ev-{name}")["ifeval"]["provenance"]["weights_sha256"]
        for name in ("a", "b")
    ]
    assert len(set(digests)) == 2 and all(len(d) == 64 for d in digests)


def test_answer_ifeval_still_resumes_after_a_torn_line(tmp_path):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama").eval()
    records = ifeval.load_prompts()[:2]
    first = answer_ifeval(model, tokenizer, tmp_path, records, decoding=Decoding(3), batch_size=2)
    with (tmp_path / "answers.jsonl").open("a") as f:
        f.write('{"key": 9, "torn')

    assert answer_ifeval(model, tokenizer, tmp_path, records, decoding=Decoding(3), batch_size=2) == first


# --- 2. --resume auto resumes only the run it was, and never replaces a finished one ----------------

@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_run_config(tiny_model_dir, toy_data, out))
    return out


@pytest.mark.parametrize(("change", "named"), [
    ({"loss": "simpo"}, "loss: 'slime' (saved) vs 'simpo' (now)"),
    ({"learning_rate": 1e-3}, "learning_rate: 0.01 (saved) vs 0.001 (now)"),
    ({"max_steps": 4}, "max_steps: 2 (saved) vs 4 (now)"),
])
def test_resume_with_options_that_change_the_numbers_is_refused_by_name(
    finished_run, tiny_model_dir, toy_data, tmp_path, change, named
):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    config = tiny_run_config(tiny_model_dir, toy_data, out, resume="auto", **change)

    with pytest.raises(OutputExistsError, match=f"trained with other options.*{named}".replace("(", r"\(")
                       .replace(")", r"\)")):
        train(config)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # config.yaml, card untouched
    assert yaml.safe_load((out / "config.yaml").read_text())["loss"] == "slime"


def test_resume_with_another_dataset_is_refused(finished_run, tiny_model_dir, toy_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    other = tmp_path / "other.jsonl"
    shutil.copy(toy_data["train"], other)
    with pytest.raises(OutputExistsError, match="dataset: "):
        train(tiny_run_config(tiny_model_dir, toy_data, out, resume="auto", dataset=str(other)))


def test_resume_may_change_how_often_it_logs_and_saves(finished_run, tiny_model_dir, toy_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    config = tiny_run_config(tiny_model_dir, toy_data, out, resume="auto", logging_steps=2, save_total_limit=1)

    assert train(config).global_step == 2


def test_resume_auto_never_restarts_a_finished_run_that_left_no_checkpoint(tiny_model_dir, toy_data, tmp_path):
    out = tmp_path / "run"
    config = tiny_run_config(tiny_model_dir, toy_data, out, save_steps=0)
    train(config)
    adapter = (out / "adapter_model.safetensors").read_bytes()

    config.resume = "auto"
    with pytest.raises(OutputExistsError, match="has finished and left no checkpoint.*--overwrite"):
        train(config)
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    config.overwrite = True
    assert train(config).global_step == 2


# --- 5. an evaluation never writes over what training wrote ------------------------------------

def test_eval_of_a_run_folder_writes_beside_trainings_eval_json(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    trainings = (run / "eval.json").read_text()

    assert main(["eval", "--model", str(run), "--max-pairs", "2", "--no-generate"]) == 0

    assert (run / "eval.json").read_text() == trainings
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    assert evaluation["settings"]["model"] == str(run) and evaluation["pairs"] == 2
    assert f"written to {run / 'eval'}/" in capsys.readouterr().out


def test_eval_into_a_training_run_folder_is_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    trainings = (run / "eval.json").read_text()

    assert main(["eval", "--model", str(run), "--max-pairs", "2", "--no-generate", "--out", str(run)]) == 2

    assert "holds a training run (metrics.jsonl)" in capsys.readouterr().err
    assert (run / "eval.json").read_text() == trainings


# --- 6. a run trained from a relative local path loads from anywhere ---------------------------

def test_a_run_trained_from_a_relative_base_path_evaluates_from_another_directory(
    tiny_model_dir, toy_data, tmp_path, monkeypatch
):
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, work / "models" / "tiny")
    monkeypatch.chdir(work)
    train(tiny_run_config("models/tiny", toy_data, "runs/a", save_steps=0))
    recorded = json.loads((work / "runs" / "a" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((work / "models" / "tiny").resolve())

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # An empty folder of the same relative name here must not be taken for the base.
    (elsewhere / "models" / "tiny").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = evaluate(EvalConfig(model=str(work / "runs" / "a"), generate=False, max_pairs=1), out_dir="ev")
    assert result["pairs"] == 1


def test_an_adapter_naming_a_missing_absolute_base_is_refused_by_name(tmp_path):
    from slimepo.model import load_model

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(tmp_path / "gone"), "peft_type": "LORA"}))
    with pytest.raises(FileNotFoundError, match="names the base .*gone.*does not exist here"):
        load_model(tmp_path / "adapter")




# --- 8. no warning a user cannot act on --------------------------------------------------------

def test_training_and_loading_an_adapter_say_nothing_of_peft_internals(tiny_model_dir, toy_data, tmp_path, recwarn):
    from slimepo.model import load_model

    train(tiny_run_config(tiny_model_dir, toy_data, tmp_path / "run", max_steps=1, save_steps=0))
    load_model(tmp_path / "run")

    assert not [w for w in recwarn if "is_gradient_checkpointing" in str(w.message)]


def test_rows_longer_than_the_tokenizer_maximum_are_truncated_without_a_warning(tmp_path, caplog):
    from slimepo.data import prepare_pairs

    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 16
    rows = [{"prompt": "tell me " * 40, "chosen": "yes " * 40, "rejected": "no " * 40}] * 2
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    with caplog.at_level("WARNING"):
        pairs, _ = prepare_pairs(str(path), tokenizer, max_length=32, max_prompt_length=16)

    assert len(pairs) == 2 and all(len(p.prompt_ids) <= 16 for p in pairs)
    assert "Token indices sequence length" not in caplog.text


# --- 8. files that readers trust are written whole or not at all -------------------------------

def test_a_write_that_fails_midway_leaves_the_old_file_and_no_debris(tmp_path):
    from slimepo.atomic_io import write_text

    target = tmp_path / "eval.json"
    target.write_text('{"accuracy": 0.5}')
    with pytest.raises(UnicodeEncodeError):
        write_text(target, '{"accuracy": 0.75, "note": "' + "x" * 100_000 + '\ud800"}')  # fails after 100 kB

    assert target.read_text() == '{"accuracy": 0.5}' and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_training_and_evaluation_write_their_records_atomically(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    import slimepo.atomic_io

    replaced = []
    real = slimepo.atomic_io.os.replace
    monkeypatch.setattr(slimepo.atomic_io.os, "replace", lambda a, b: replaced.append(os.path.basename(b)) or real(a, b))
    train(tiny_run_config(tiny_model_dir, toy_data, tmp_path / "run", max_steps=1, save_steps=0))
    evaluate(EvalConfig(model=str(tmp_path / "run"), generate=False, max_pairs=1, bench="ifeval", max_prompts=1,
                        bench_max_new_tokens=2), out_dir=tmp_path / "run" / "eval")

    assert {"config.yaml", "eval.json", "README.md", "adapter_config.json", "answers.jsonl"} <= set(replaced)


@pytest.mark.parametrize(("saved", "now", "refused"), [
    ((2, 1), (1, 2), False),  # the same 2 pairs per micro-step, over 2 processes
    ((1, 2), (2, 1), False),
    ((2, 1), (2, 2), True),   # 4 pairs now: another schedule of the data
    ((2, None), (2, 1), False),  # a run from before launch.json: taken as 1 process
    ((2, None), (2, 2), True),
])
def test_the_per_process_batch_may_follow_the_number_of_processes(tmp_path, saved, now, refused):
    from slimepo.train.run import check_resume

    (saved_batch, saved_processes), (batch, processes) = saved, now
    (tmp_path / "config.yaml").write_text(TrainConfig(batch_size=saved_batch, output_dir=str(tmp_path)).to_yaml())
    if saved_processes is not None:
        (tmp_path / "launch.json").write_text(json.dumps({"processes": saved_processes}))
    config = TrainConfig(batch_size=batch, output_dir=str(tmp_path), resume="auto")

    if refused:
        with pytest.raises(OutputExistsError, match=rf"pairs per micro-step \(batch_size × processes\): "
                                                    rf"{saved_batch} × {saved_processes or 1} \(saved\) vs "
                                                    rf"{batch} × {processes} \(now\)"):
            check_resume(config, tmp_path, processes)
    else:
        check_resume(config, tmp_path, processes)


def test_importing_slimepo_prints_nothing(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "import slimepo.train, slimepo.eval.run, slimepo.pairs.run"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr[-2000:]
