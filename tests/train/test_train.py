"""End-to-end training on a tiny model: learning, outputs that reload, CLI, config errors."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from slimepo.config import ConfigError, TrainConfig
from slimepo.testing import tiny_tokenizer
from slimepo.train import train


def toy_config(tiny_model_dir, toy_data, out, **overrides):
    values = dict(
        model=str(tiny_model_dir), dataset=str(toy_data["train"]), eval_dataset=str(toy_data["test"]),
        eval_split="train", output_dir=str(out), max_steps=20, batch_size=4, learning_rate=1e-2,
        logging_steps=5, save_steps=0, lora_r=8, lora_alpha=16, lora_dropout=0.0, warmup_ratio=0.0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_slime_run_lowers_the_loss_and_raises_held_out_accuracy(tiny_model_dir, toy_data, tmp_path):
    result = train(toy_config(tiny_model_dir, toy_data, tmp_path / "run"))
    train_logs = [r for r in read_metrics(result.output_dir) if r["split"] == "train" and "loss" in r]
    assert train_logs[-1]["loss"] < train_logs[0]["loss"]
    assert result.after["accuracy"] > result.before["accuracy"]
    assert result.after["accuracy"] >= 0.8
    for key in ("loss/margin", "loss/anchor", "loss/stabilizer", "logps/chosen_sum", "collapse/rejected_p_lt_1e-4",
                "collapse/rejected_min_logp", "grad_norm", "learning_rate", "tokens_per_second", "accuracy", "margin"):
        assert key in train_logs[-1], key
    written = json.loads((result.output_dir / "eval.json").read_text())
    assert written["accuracy"] == result.after["accuracy"]
    assert written["base"]["accuracy"] == result.before["accuracy"]
    assert "drift" in written


def test_lora_output_reloads_with_plain_peft_and_generates(tiny_model_dir, toy_data, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    result = train(toy_config(tiny_model_dir, toy_data, tmp_path / "run", max_steps=3, merge=True))
    out = result.output_dir
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["loss"] == "slime" and config["max_steps"] == 3
    tokenizer = tiny_tokenizer()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What do you think of the river?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    adapter_model = AutoPeftModelForCausalLM.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    generated = adapter_model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    ids = prompt["input_ids"]
    torch.testing.assert_close(merged(ids).logits, adapter_model(ids).logits, rtol=1e-4, atol=1e-4)


def test_full_fine_tuning_output_reloads_with_transformers(tiny_model_dir, toy_data, tmp_path):
    from transformers import AutoModelForCausalLM

    result = train(toy_config(tiny_model_dir, toy_data, tmp_path / "run", max_steps=2, use_lora=False, learning_rate=1e-3))
    model = AutoModelForCausalLM.from_pretrained(result.output_dir)
    assert (result.output_dir / "model.safetensors").is_file()
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.lm_head.weight, before.lm_head.weight)


def test_dpo_with_lora_uses_the_base_as_reference(tiny_model_dir, toy_data, tmp_path):
    result = train(toy_config(tiny_model_dir, toy_data, tmp_path / "run", loss="dpo", max_steps=5, logging_steps=1))
    first = [r for r in read_metrics(result.output_dir) if r["split"] == "train"][0]
    # At step 1 the adapters are still zero: policy == reference, so DPO's rewards are 0.
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-4)
    assert result.after["accuracy"] > result.before["accuracy"]


def test_output_dir_holding_a_run_is_not_overwritten(tiny_model_dir, toy_data, tmp_path):
    from slimepo.train.run import OutputExistsError

    config = toy_config(tiny_model_dir, toy_data, tmp_path / "run", max_steps=1)
    train(config)
    with pytest.raises(OutputExistsError, match="--resume auto"):
        train(config)
    config.overwrite = True
    train(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": -1.0}, "learning_rate: must be a number > 0"),
        ({"loss": "slime", "loss_params": {"margin_mode": "both"}}, "margin_mode must be one of dual, hard, soft"),
        ({"loss": "simpo", "loss_params": {"anchor_weight": 1.0}}, "has no parameter"),
        ({"loss": "slim"}, "did you mean 'slime'"),
        ({"max_prompt_length": 512, "max_length": 512}, "max_prompt_length (512) must be < max_length (512)"),
        ({"dataset": "./missing.jsonl"}, "dataset: path './missing.jsonl' does not exist"),
        ({"lr_scheduler": "step"}, "lr_scheduler: got 'step'; allowed: cosine, linear, constant"),
        ({"batch_size": 0}, "batch_size: must be a number > 0"),
        ({"warmup_ratio": 2.0}, "warmup_ratio: must be in"),
        ({"columns": {"question": "q"}}, "columns: unknown key"),
        ({"resume": "/no/such/checkpoint"}, "resume:"),
        ({"pack_tokens": 0}, "pack_tokens: must be a whole number >= 1, got 0"),
        ({"attn_implementation": "flash_attention_2"}, "attn_implementation: flash_attention_2 takes no per-pair"),
        ({"attn_implementation": "flash_attention_2", "layout": "packed"}, "which --layout packed needs"),
    ],
)
def test_invalid_options_fail_before_any_model_is_loaded(overrides, message, monkeypatch):
    import slimepo.train.run as run

    monkeypatch.setattr(run, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before validation"))
    with pytest.raises(ConfigError) as err:
        train(TrainConfig(**overrides))
    assert message in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="FlexAttention trains on CUDA")
def test_flex_attention_training_on_cpu_is_refused_before_any_model_is_loaded(monkeypatch, tmp_path):
    import slimepo.train.run as run

    monkeypatch.setattr(run, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before the check"))
    with pytest.raises(ConfigError, match="attn_implementation: flex_attention cannot train on CPU"):
        train(TrainConfig(attn_implementation="flex_attention", output_dir=str(tmp_path / "out")))


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "slimepo.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_yaml_with_flag_override(tiny_model_dir, toy_data, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "dataset": str(toy_data["train"]), "eval_dataset": str(toy_data["test"]),
        "eval_split": "train", "output_dir": str(tmp_path / "out"), "max_steps": 5, "save_steps": 0,
        "loss": "simpo", "loss_params": {"beta": 2.5}, "learning_rate": 1e-2,
    }))
    result = run_cli("train", "--config", str(config_file), "--max-steps", "2", "--loss-params", "beta=3.0,gamma=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["loss"] == "simpo"
    assert saved["loss_params"] == {"beta": 3.0, "gamma": 0.5}
    assert "preference accuracy" in result.stdout


def test_cli_unknown_yaml_key_and_flag_name_the_closest_option(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("learning_rte: 0.1\n")
    result = run_cli("train", "--config", str(config_file))
    assert result.returncode == 2
    assert "unknown option 'learning_rte'; did you mean 'learning_rate'?" in result.stderr
    assert str(config_file) in result.stderr
    result = run_cli("train", "--max-step", "3")
    assert result.returncode == 2 and "did you mean --max-steps?" in result.stderr


def test_cli_help_lists_every_option():
    from slimepo.config import field_names

    result = run_cli("train", "--help")
    assert result.returncode == 0
    for name in field_names():
        assert "--" + name.replace("_", "-") in result.stdout


def test_token_budget_batches_train_and_respect_the_budget(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    from slimepo.data.batching import TokenBudgetBatchSampler

    yielded = []
    original = TokenBudgetBatchSampler.__iter__

    def recording_iter(self):
        for batch in original(self):
            yielded.append([self.lengths[i] for i in batch])
            yield batch

    monkeypatch.setattr(TokenBudgetBatchSampler, "__iter__", recording_iter)
    result = train(toy_config(tiny_model_dir, toy_data, tmp_path / "run", max_tokens_per_batch=90, max_steps=6))
    assert result.global_step == 6
    assert len(yielded) >= 6
    assert all(len(b) == 1 or max(b) * len(b) <= 90 for b in yielded)
    assert any(len(b) > 1 for b in yielded)


def test_a_chat_template_override_is_saved_with_the_tokenizer(tiny_model_dir, toy_data, tmp_path):
    from transformers import AutoTokenizer

    template = (
        "{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}"
    )
    result = train(toy_config(tiny_model_dir, toy_data, tmp_path / "run", max_steps=1, chat_template=template))
    assert AutoTokenizer.from_pretrained(result.output_dir).chat_template == template


def test_precomputed_reference_log_probs_give_the_same_dpo_run(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    from slimepo.train.trainer import PreferenceTrainer

    passes = []
    original = PreferenceTrainer.token_logps

    def counting(self, model, batch, **options):
        passes.append(1)
        return original(self, model, batch, **options)

    monkeypatch.setattr(PreferenceTrainer, "token_logps", counting)
    runs, calls = {}, {}
    for precompute in (False, True):
        out = tmp_path / f"run-{precompute}"
        passes.clear()
        train(toy_config(tiny_model_dir, toy_data, out, loss="dpo", max_steps=4, logging_steps=1,
                         precompute_ref_logps=precompute))
        calls[precompute] = len(passes)
        runs[precompute] = [r for r in read_metrics(out) if r["split"] == "train" and "loss" in r]
    assert len(runs[True]) == len(runs[False]) == 4
    assert calls[False] == 2 * 4 and calls[True] == 4  # no reference pass during training
    for live, pre in zip(runs[False], runs[True]):
        assert pre["loss"] == pytest.approx(live["loss"], rel=1e-4, abs=1e-6)
        assert pre["rewards/chosen"] == pytest.approx(live["rewards/chosen"], rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("ratio, shares", [(1.0, [0.0, 0.25, 0.5, 0.75]), (0.5, [0.0, 0.5, 1.0, 0.5])])
def test_warmup_ratio_is_a_share_of_the_steps_one_included(tiny_model_dir, toy_data, tmp_path, ratio, shares):
    # 4 steps, cosine after warm-up: ratio 1.0 warms up over all 4 (lr·s/4 for step s = 0..3), ratio 0.5
    # over 2, then cos decay over the other 2: step 3 at lr·(1 + cos(π/2))/2 = lr/2. transformers alone
    # reads a "warmup_steps" of 1.0 as one step: [0, 1, 0.75, 0.25].
    config = toy_config(tiny_model_dir, toy_data, tmp_path / "run", max_steps=4, logging_steps=1, warmup_ratio=ratio,
                        monitor_steps=0)
    train(config)
    rates = [r["learning_rate"] for r in read_metrics(tmp_path / "run") if r["split"] == "train" and "loss" in r]
    assert rates == pytest.approx([1e-2 * s for s in shares], abs=1e-9)


def test_a_weighted_sum_of_losses_trains_from_yaml_and_logs_each_term(tiny_model_dir, toy_data, tmp_path):
    config_file = tmp_path / "sum.yaml"
    config_file.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "dataset": str(toy_data["train"]), "eval_dataset": str(toy_data["test"]),
        "eval_split": "train", "output_dir": str(tmp_path / "run"), "max_steps": 2, "logging_steps": 1,
        "save_steps": 0, "lora_r": 4, "lora_alpha": 8, "monitor_steps": 0,
        "loss": ["dpo", {"sft": 0.5}], "loss_params": {"dpo": {"beta": 0.2}},
    }))
    result = run_cli("train", "--config", str(config_file))
    assert result.returncode == 0, result.stderr[-3000:]

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["loss"] == "dpo,sft=0.5" and saved["loss_params"] == {"dpo": {"beta": 0.2}}
    for record in (r for r in read_metrics(tmp_path / "run") if r["split"] == "train" and "loss" in r):
        # the logged step loss is the weighted sum of the terms logged beside it
        assert record["loss"] == pytest.approx(record["loss/dpo/sigmoid"] + 0.5 * record["loss/sft/nll"], rel=1e-5)
    assert "tags: [slimepo, preference-optimization, dpo, sft]" in (tmp_path / "run" / "README.md").read_text()
