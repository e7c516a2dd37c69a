"""slimepo eval / compare options come from EvalConfig (flags, YAML, validation), as train's from TrainConfig."""

import ast
from pathlib import Path

import pytest

import slimepo.compare
from slimepo.cli import build_parser, main
from slimepo.cli_options import resolve_config
from slimepo.config import ConfigError, EvalConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "slimepo"


def eval_config(*argv: str) -> EvalConfig:
    args = build_parser().parse_args(["eval", *argv])
    return resolve_config(EvalConfig, args, args.config)


def test_eval_flags_are_the_eval_config_fields():
    config = eval_config("--bench", "ifeval", "--max-prompts", "3", "--no-generate", "--batch-size", "2")

    assert (config.bench, config.max_prompts, config.generate, config.batch_size) == ("ifeval", 3, False, 2)
    assert config.model == "default" and config.max_new_tokens == 128


def test_eval_yaml_options_are_overridden_by_flags(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("bench: ifeval\nmax_new_tokens: 7\nbench_max_new_tokens: 64\n")

    config = eval_config("--config", str(path), "--max-new-tokens", "9")

    assert (config.bench, config.max_new_tokens, config.bench_max_new_tokens) == ("ifeval", 9, 64)


def test_unknown_eval_yaml_key_names_the_file_and_the_closest_option(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("max_prompt: 3\n")

    with pytest.raises(ConfigError, match=r"eval\.yaml: unknown option 'max_prompt'; did you mean 'max_prompts'"):
        eval_config("--config", str(path))


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-prompts", "5"], "max_prompts: limits the prompts of --bench"),
    (["--bench", "ifeval", "--max-prompts", "0"], "max_prompts: must be a whole number >= 1"),
    (["--bench", "ifeval", "--judge-url", "http://x", "--judge-model", "j"], r"judge_url: the judge grades the answers of --bench mt-bench \| arena-hard \| alpaca-eval; add one"),
    (["--bench", "mt-bench", "--judge-url", "http://x"], "judge_url: needs --judge-model"),
    (["--sample", "--temperature", "0"], "sampling needs --temperature > 0"),
])
def test_invalid_eval_options_are_refused_before_anything_loads(argv, message):
    with pytest.raises(ConfigError, match=message):
        eval_config(*argv)


def test_unknown_benchmark_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--bench", "ifevl"])
    assert "invalid choice: 'ifevl'" in capsys.readouterr().err


def test_compare_takes_generation_and_benchmark_options_and_training_ones(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(slimepo.compare, "compare", lambda *a: calls.append(a) or tmp_path / "report.md")

    assert main(["compare", "--losses", "slime", "--out-root", str(tmp_path), "--seed", "3",
                 "--bench", "ifeval", "--max-prompts", "4", "--bench-max-new-tokens", "32"]) == 0

    [(_, train_config, _, eval_config)] = calls
    assert train_config.seed == 3  # --seed of compare is training's
    assert (eval_config.bench, eval_config.max_prompts, eval_config.bench_max_new_tokens) == ("ifeval", 4, 32)


def test_the_eval_command_module_does_not_import_the_main_command_module():
    tree = ast.parse((SRC / "cli_eval.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}

    assert "slimepo.cli" not in imported and "slimepo.cli_options" in imported


def test_an_unknown_eval_flag_names_the_closest_eval_option(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--max-prompt", "3"])
    assert "unknown option --max-prompt; did you mean --max-prompts?" in capsys.readouterr().err


def test_eval_takes_trust_remote_code_off_by_default():
    assert eval_config("--trust-remote-code").trust_remote_code is True
    assert eval_config().trust_remote_code is False


def test_an_infinite_sampling_temperature_is_refused():
    with pytest.raises(ConfigError, match="^temperature: must be a finite number, got inf$"):
        eval_config("--sample", "--temperature", "inf")


def test_report_on_a_missing_folder_is_an_error_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-run"

    assert main(["report", str(missing), "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err == f"slimepo: error: report: run folder {str(missing)!r} does not exist\n"
    assert not (tmp_path / "report").exists()


def test_report_on_a_folder_without_metrics_is_an_error_naming_it(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err == (
        f"slimepo: error: report: {str(tmp_path)!r} holds no metrics.jsonl: not a training run folder (nor a slimepo iterate folder)\n"
    )
