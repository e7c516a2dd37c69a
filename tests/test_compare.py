import argparse
import dataclasses
import json

import pytest

import slimepo.compare
import slimepo.train
from slimepo.cli_eval import register, run
from slimepo.compare import compare, run_configs, run_eval_config
from slimepo.config import COMPARE_EVAL_GROUPS, ConfigError, EvalConfig, TrainConfig

TRAIN_ROWS = [
    {"prompt": f"What is {a} plus {b}?", "chosen": f"It is {a + b}.", "rejected": f"It is {a + b + 1}."}
    for a, b in [(1, 2), (2, 2), (3, 4), (5, 1), (2, 7), (4, 4)]
]
TEST_ROWS = [
    {"prompt": "Describe the sea.", "chosen": "the sea is wide.", "rejected": "The Sea.",
     "constraint": {"family": "lowercase"}},
    {"prompt": "Name a city.", "chosen": "Paris.", "rejected": "The capital of France is Paris.",
     "constraint": {"family": "max_words", "params": {"n": 3}}},
    {"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def study_config(tmp_path, tiny_model_dir):
    return TrainConfig(
        model=str(tiny_model_dir), dataset=write_jsonl(tmp_path / "train.jsonl", TRAIN_ROWS),
        eval_dataset=write_jsonl(tmp_path / "test.jsonl", TEST_ROWS), max_steps=2, batch_size=2,
        logging_steps=1, save_steps=0, max_length=128, max_prompt_length=64, dtype="float32",
        lora_r=4, lora_alpha=8,
    )


def eval_table_rows(report_text):
    evaluation = report_text.split("## Evaluation", 1)[1].split("Generations:", 1)[0]
    return [line for line in evaluation.splitlines() if line.startswith("| ") and not line.startswith(("| run", "| ---"))]


def test_compare_trains_and_evaluates_one_run_per_loss_then_reports_them(study_config, tmp_path, monkeypatch):
    out_root = tmp_path / "study"

    report = compare(["slime", "dpo"], study_config, out_root, EvalConfig(max_new_tokens=4))

    assert report == out_root / "report" / "report.md"
    for loss in ("slime", "dpo"):
        run_dir = out_root / loss
        assert (run_dir / "adapter_config.json").is_file()
        evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())  # beside training's own
        assert "settings" not in json.loads((run_dir / "eval.json").read_text())
        assert evaluation["pairs"] == len(TEST_ROWS)
        assert evaluation["settings"]["base"] == study_config.model
        assert set(evaluation["drift"]) == {"chosen_drift_mean", "unlearning_rate", "rejected_drift_mean"}
        assert evaluation["constraints_checked"] == 2
        assert len((run_dir / "eval" / "generations.jsonl").read_text().splitlines()) == len(TEST_ROWS)
        assert f"loss: {loss}" in (run_dir / "config.yaml").read_text()
    rows = eval_table_rows(report.read_text())
    assert [row.split(" | ")[0] for row in rows] == ["| slime", "| dpo"]
    assert all("—" not in row for row in rows)  # every column, drift included, has a value

    # resumed: finished runs are skipped, not trained again
    def refuse(config):
        raise AssertionError(f"{config.loss} trained again")

    monkeypatch.setattr(slimepo.train, "train", refuse)
    assert compare(["slime", "dpo"], study_config, out_root, EvalConfig(max_new_tokens=4)) == report


def test_every_loss_is_checked_before_any_training(study_config, tmp_path):
    with pytest.raises(ConfigError, match="unknown loss 'dpoo'"):
        compare(["slime", "dpoo"], study_config, tmp_path / "study")
    with pytest.raises(ConfigError, match="more than once"):
        run_configs(["dpo", "dpo"], study_config, tmp_path / "study")
    assert not (tmp_path / "study").exists()


def test_run_configs_differ_only_in_loss_and_output_dir(study_config, tmp_path):
    configs = run_configs(["slime", "simpo"], study_config, tmp_path / "study")
    assert [c.loss for c in configs] == ["slime", "simpo"]
    assert [c.output_dir for c in configs] == [str(tmp_path / "study" / "slime"), str(tmp_path / "study" / "simpo")]
    for config in configs:
        differing = {k for k, v in config.to_dict().items() if v != study_config.to_dict()[k]}
        assert differing <= {"loss", "output_dir"}


def test_compare_command_passes_shared_options_and_eval_options(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(slimepo.compare, "compare", lambda *a: calls.append(a) or tmp_path / "report.md")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "compare", "--losses", "slime,dpo,simpo", "--out-root", str(tmp_path / "study"),
        "--max-steps", "3", "--learning-rate", "5e-5", "--max-new-tokens", "16", "--no-generate",
    ])

    assert run(args) == 0

    [(losses, config, out_root, eval_config)] = calls
    assert losses == ["slime", "dpo", "simpo"]
    assert (config.max_steps, config.learning_rate) == (3, 5e-5)
    assert out_root == tmp_path / "study"
    assert eval_config.max_new_tokens == 16 and eval_config.generate is False


def test_a_run_is_evaluated_with_training_options_and_only_the_generation_and_benchmark_options_given(
    study_config, tmp_path
):
    config = run_configs(["dpo"], study_config, tmp_path / "study")[0]
    given = EvalConfig(max_new_tokens=16, sample=True, temperature=0.7, bench="ifeval", max_prompts=3,
                       seed=99, batch_size=99, max_pairs=1)  # the last three are not compare's to give

    evaluation = run_eval_config(config, given)

    assert (evaluation.model, evaluation.base) == (config.output_dir, study_config.model)
    assert (evaluation.dataset, evaluation.split) == (study_config.eval_dataset, study_config.eval_split)
    assert (evaluation.dtype, evaluation.seed, evaluation.batch_size) == ("float32", config.seed, config.batch_size)
    assert evaluation.max_pairs is None
    for field in dataclasses.fields(EvalConfig):
        if field.metadata["group"] in COMPARE_EVAL_GROUPS:
            assert getattr(evaluation, field.name) == getattr(given, field.name), field.name
    assert run_eval_config(config).decoding() == EvalConfig().decoding()


def test_unfinished_run_is_trained_again_and_only_its_own_training_eval_does_not_count(
    study_config, tmp_path, monkeypatch
):
    out_root = tmp_path / "study"
    unfinished = out_root / "slime"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("loss: slime\n")
    (unfinished / "eval.json").write_text(json.dumps({"before": {}, "after": {}}))  # training's, not evaluate's
    trained, evaluated = [], []
    monkeypatch.setattr(slimepo.train, "train", trained.append)
    monkeypatch.setattr(slimepo.compare, "evaluate_run", lambda config, kwargs: evaluated.append(config.loss))

    compare(["slime"], study_config, out_root)

    [config] = trained
    assert (config.loss, config.overwrite, config.resume) == ("slime", True, None)
    assert evaluated == ["slime"]


def test_dry_run_is_refused_because_a_study_keeps_its_runs(study_config, tmp_path):
    with pytest.raises(ConfigError, match="dry_run"):
        run_configs(["slime"], dataclasses.replace(study_config, dry_run=True), tmp_path / "study")
