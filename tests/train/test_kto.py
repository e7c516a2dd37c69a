"""KTO end to end on a tiny model: unpaired rows in, the loss falls, desirable completions rise above
undesirable ones, the usual outputs are written; CLI and YAML; refused options and data."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from slimepo.config import ConfigError, TrainConfig
from slimepo.data import DataError
from slimepo.train import train

THINGS = ["river", "garden", "train", "letter", "forest", "window", "market", "bridge", "candle", "island",
          "kitchen", "mountain", "school", "harbor", "violin", "castle", "meadow", "tunnel", "basket", "lantern"]


def unpaired_rows(things):
    """A learnable signal without pairs: 'good' completions are desirable, 'bad' ones are not."""
    rows = []
    for thing in things:
        prompt = f"What do you think of the {thing}?"
        rows.append({"prompt": prompt, "completion": f"The {thing} is good.", "label": True})
        rows.append({"prompt": [{"role": "user", "content": prompt}],
                     "completion": [{"role": "assistant", "content": f"The {thing} is bad."}], "label": False})
    return rows


@pytest.fixture(scope="module")
def unpaired_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unpaired")
    paths = {}
    for split, things in (("train", THINGS[:14]), ("test", THINGS[14:])):
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in unpaired_rows(things)))
    return paths


def kto_config(tiny_model_dir, data, out, **overrides):
    values = dict(
        model=str(tiny_model_dir), loss="kto", dataset=str(data["train"]), eval_dataset=str(data["test"]),
        eval_split="train", output_dir=str(out), max_steps=20, batch_size=4, learning_rate=1e-2, logging_steps=1,
        save_steps=0, lora_r=8, lora_alpha=16, lora_dropout=0.0, warmup_ratio=0.0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kto_lowers_its_loss_and_lifts_desirable_above_undesirable(tiny_model_dir, unpaired_data, tmp_path):
    # 2 micro-batches per step: the loss divides by the step's examples (StepTotals), z_0 is the step's.
    result = train(kto_config(tiny_model_dir, unpaired_data, tmp_path / "run", gradient_accumulation_steps=2,
                              eval_steps=10))
    records = read_metrics(result.output_dir)
    logs = [r for r in records if r["split"] == "train" and "loss" in r]
    assert len(logs) == 20 and logs[-1]["loss"] < logs[0]["loss"]
    # Step 1: the LoRA update is still 0, so policy == reference: every log-ratio, reward and the KL
    # estimate are 0, and each example's loss is λ·(1 − σ(0)) = 0.5.
    first = logs[0]
    assert first["loss"] == pytest.approx(0.5, abs=1e-5)
    for key in ("rewards/desirable", "rewards/undesirable", "kl", "reference_point", "drift/desirable"):
        assert first[key] == pytest.approx(0.0, abs=1e-5), key
    for key in ("loss/desirable", "loss/undesirable", "logps/desirable", "logps/undesirable", "drift/undesirable",
                "unlearning_rate/desirable", "grad_norm", "tokens_per_second"):
        assert key in logs[-1], key
    assert logs[-1]["rewards/desirable"] > logs[-1]["rewards/undesirable"]
    # z_0 = max(0, KL estimate) per step, so its logged mean is >= 0 and >= the mean estimate.
    assert all(r["reference_point"] >= max(0.0, r["kl"]) - 1e-6 for r in logs)
    evals = [r for r in records if r["split"] == "eval"]
    assert evals and "rewards/desirable" in evals[-1] and math.isfinite(evals[-1]["loss"])

    out = result.output_dir
    for name in ("adapter_model.safetensors", "README.md", "config.yaml", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["loss"] == "kto"
    written = json.loads((out / "eval.json").read_text())
    assert written == result.after and written["examples"] == 12 and written["desirable"] == 6
    gap_before = result.before["desirable_logp_mean"] - result.before["undesirable_logp_mean"]
    gap_after = written["desirable_logp_mean"] - written["undesirable_logp_mean"]
    assert gap_after > gap_before
    assert written["drift"]["desirable_drift_mean"] > written["drift"]["undesirable_drift_mean"]
    assert written["base"]["desirable_logp_mean"] == pytest.approx(result.before["desirable_logp_mean"])
    assert "Ethayarajh" in (out / "README.md").read_text()


def test_kto_trains_from_the_cli_with_a_yaml_file(tiny_model_dir, unpaired_data, tmp_path):
    config_file = tmp_path / "kto.yaml"
    config_file.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "eval_dataset": str(unpaired_data["test"]), "eval_split": "train",
        "output_dir": str(tmp_path / "out"), "max_steps": 2, "save_steps": 0, "lora_r": 4, "lora_alpha": 8,
        "loss_params": {"beta": 0.2, "undesirable_weight": 0.8},
    }))
    result = subprocess.run(
        [sys.executable, "-m", "slimepo.cli", "train", "--config", str(config_file), "--loss", "kto",
         "--dataset", str(unpaired_data["train"])],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["loss"] == "kto" and saved["loss_params"] == {"beta": 0.2, "undesirable_weight": 0.8}
    assert (tmp_path / "out" / "eval.json").is_file()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"batch_size": 1}, "batch_size: kto estimates its reference point on mismatched pairs"),
    ({"batch_size": 1, "gradient_accumulation_steps": 1}, r"needs batch_size x gradient_accumulation_steps >= 2, "
                                                          r"got 1 x 1"),
    ({"precompute_ref_logps": True}, "precompute_ref_logps: kto's mismatched pairs are known only once a batch"),
    ({"loss_params": {"beta": 0.0}}, "kto: beta must be a number > 0"),
    ({"loss": "kto,sft=0.1"}, "'kto' trains on unpaired examples"),
])
def test_options_kto_cannot_take_are_refused_before_any_model_is_loaded(overrides, message, monkeypatch, tmp_path):
    import slimepo.train.run as run

    monkeypatch.setattr(run, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before validation"))
    with pytest.raises(ConfigError, match=message):
        train(TrainConfig(**{"loss": "kto", "output_dir": str(tmp_path / "out"), **overrides}))


def test_the_wrong_format_for_the_loss_is_named_before_any_model_is_loaded(
        tiny_model_dir, unpaired_data, toy_data, tmp_path, monkeypatch):
    import slimepo.train.run as run

    monkeypatch.setattr(run, "load_policy", lambda *a, **k: pytest.fail("model loaded before the data was checked"))
    with pytest.raises(DataError, match="These rows are preference pairs"):
        train(kto_config(tiny_model_dir, toy_data, tmp_path / "a"))
    with pytest.raises(DataError, match="These rows are unpaired examples .* train on them with --loss kto"):
        train(kto_config(tiny_model_dir, unpaired_data, tmp_path / "b", loss="dpo"))


def test_a_kto_dry_run_of_an_unreachable_dataset_trains_on_an_unpaired_sample(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "slimepo.cli", "train", "--loss", "kto", "--dataset", "org/unpaired-prefs", "--dry-run"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 optimizer steps" in result.stdout and "48-row UltraFeedback-shaped sample" in result.stderr


@pytest.mark.parametrize("accumulation", [1, 2])
def test_with_several_micro_batches_the_gradient_forward_scores_no_mismatched_completion(
    accumulation, tiny_model_dir, unpaired_data, tmp_path, monkeypatch
):
    """The step's KL batch is scored before its first micro-batch (no gradient); the micro-batches'
    own forwards then carry their completions only. With one micro-batch, its forward scores both."""
    from slimepo.train.trainer import PreferenceTrainer

    seen = []
    token_logps = PreferenceTrainer.token_logps

    def spy(self, model, batch, **kwargs):
        if torch.is_grad_enabled() and model.training:
            seen.append((int((batch["part_ids"] == 2).sum()), batch["rejected_mask"].shape[1]))
        return token_logps(self, model, batch, **kwargs)

    monkeypatch.setattr(PreferenceTrainer, "token_logps", spy)
    train(kto_config(tiny_model_dir, unpaired_data, tmp_path / "run", max_steps=2, batch_size=4 // accumulation,
                     gradient_accumulation_steps=accumulation))
    assert len(seen) == 2 * accumulation
    if accumulation == 1:
        assert all(tokens > 0 and width > 0 for tokens, width in seen)
    else:
        assert seen == [(0, 0)] * 4
