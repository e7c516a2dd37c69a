"""slimepo.config: every YAML value and flag has its option's declared type, and every
option is checked before anything loads, with a message naming the option."""

from __future__ import annotations

import math

import pytest

from slimepo.cli import build_parser
from slimepo.cli_options import resolve_config
from slimepo.config import ConfigError, TrainConfig, config_from_mapping


def train_config(*argv: str) -> TrainConfig:
    args = build_parser().parse_args(["train", *argv])
    return resolve_config(TrainConfig, args, args.config)


def from_yaml(tmp_path, text: str) -> TrainConfig:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return train_config("--config", str(path))


@pytest.mark.parametrize(("line", "message"), [
    ('use_lora: "false"', "use_lora: expected true or false, got 'false' (str); write false without quotes"),
    ("use_lora: 1", "use_lora: expected true or false, got 1 (int)"),
    ('max_steps: "2"', "max_steps: expected an integer, got '2' (str); write 2 without quotes"),
    ("max_steps: 2.0", "max_steps: expected an integer, got 2.0 (float)"),
    ("seed: abc", "seed: expected an integer, got 'abc' (str)"),
    ("lora_r: 8.5", "lora_r: expected an integer, got 8.5 (float)"),
    ("max_train_pairs: true", "max_train_pairs: expected an integer or null, got True (bool)"),
    ("learning_rate: abc", "learning_rate: expected a number, got 'abc' (str)"),
    ("num_epochs: false", "num_epochs: expected a number, got False (bool)"),
    ("dataset: 5", "dataset: expected a string, got 5 (int)"),
    ("model: [1, 2]", "model: expected a string, got [1, 2] (list)"),
    ("eval_dataset: 3", "eval_dataset: expected a string or null, got 3 (int)"),
    ("loss_params: 5", "loss_params: expected a mapping of strings to values, got 5 (int)"),
    ("columns: {prompt: 1}", "columns: expected a mapping of strings to strings, got {'prompt': 1} (dict)"),
    ("modules_to_save: lm_head", "modules_to_save: expected a list of strings, got 'lm_head' (str)"),
    ("modules_to_save: [lm_head, 3]", "modules_to_save: expected a list of strings, got ['lm_head', 3] (list)"),
])
def test_a_yaml_value_of_the_wrong_type_is_refused_naming_the_file_and_the_option(tmp_path, line, message):
    with pytest.raises(ConfigError) as caught:
        from_yaml(tmp_path, line + "\n")
    assert str(caught.value) == f"config file {tmp_path / 'train.yaml'}: {message}"


def test_a_float_option_takes_a_number_yaml_read_as_text(tmp_path):
    config = from_yaml(tmp_path, "learning_rate: 1e-4\nwarmup_ratio: 0\nnum_epochs: 2\n")

    assert config.learning_rate == 0.0001 and isinstance(config.learning_rate, float)
    assert (config.warmup_ratio, config.num_epochs) == (0, 2)


def test_null_is_taken_where_the_option_allows_it_and_typed_values_pass(tmp_path):
    config = from_yaml(tmp_path, "max_train_pairs: null\nsave_total_limit: null\nuse_lora: false\n"
                                 "columns: {prompt: question}\nmodules_to_save: [lm_head]\nloss_params: {anchor_weight: 0.2}\n")

    assert (config.max_train_pairs, config.save_total_limit, config.use_lora) == (None, None, False)
    assert (config.columns, config.modules_to_save, config.loss_params) == (
        {"prompt": "question"}, ["lm_head"], {"anchor_weight": 0.2})


def test_flags_pass_the_same_type_check():
    config = train_config("--learning-rate", "1e-4", "--max-steps", "3", "--no-use-lora", "--modules-to-save", "lm_head",
                          "--columns", "prompt=question")
    assert (config.learning_rate, config.max_steps, config.use_lora, config.modules_to_save) == (1e-4, 3, False, ["lm_head"])

    with pytest.raises(ConfigError, match=r"^command line: columns: expected a mapping of strings to strings, got \{'prompt': 1\} \(dict\)$"):
        train_config("--columns", "prompt=1")


def test_a_mapping_built_in_python_is_checked_and_names_its_source():
    with pytest.raises(ConfigError, match=r"^recipe\.yaml: dataset: expected a string, got 5 \(int\)$"):
        config_from_mapping({"dataset": 5}, source="recipe.yaml")


@pytest.mark.parametrize(("line", "message"), [
    ("num_epochs: .inf", "num_epochs: must be a finite number, got inf"),
    ("num_epochs: .nan", "num_epochs: must be a finite number, got nan"),
    ("max_grad_norm: .nan", "max_grad_norm: must be a finite number, got nan"),
    ("unlearning_alarm: .inf", "unlearning_alarm: must be a finite number, got inf"),
    ('weight_decay: "inf"', "weight_decay: must be a finite number, got inf"),
])
def test_a_non_finite_float_option_is_refused(tmp_path, line, message):
    with pytest.raises(ConfigError) as caught:
        from_yaml(tmp_path, line + "\n")
    assert str(caught.value) == message


def test_an_output_dir_that_is_a_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("not a folder")

    with pytest.raises(ConfigError) as caught:
        TrainConfig(output_dir=str(path)).validate()
    assert str(caught.value) == f"output_dir: {str(path)!r} is a file, not a folder"


@pytest.mark.parametrize("value", ["data/prefs.txt", "./x.tsv", "prefs/pairs.tsv.gz", "runs/sft"])
def test_a_missing_local_path_is_refused_not_taken_for_a_hub_id(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # a folder here: runs/sft is a path under it, not Hub id 'runs/sft'

    with pytest.raises(ConfigError) as caught:
        TrainConfig(dataset=value).validate()
    assert str(caught.value) == f"dataset: path {value!r} does not exist"


@pytest.mark.parametrize("value", ["HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
                                   "microsoft/phi-1.5", "meta-llama/Llama-3.2-3B", "trl-lib/ultrafeedback_binarized"])
def test_hub_ids_still_pass_validation(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    TrainConfig(model=value, dataset=value).validate()


def test_inf_is_refused_even_when_set_in_python():
    with pytest.raises(ConfigError, match="^num_epochs: must be a finite number, got inf$"):
        TrainConfig(num_epochs=math.inf).validate()
