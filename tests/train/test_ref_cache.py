"""Reference log-probs cached on disk: reused by a run that would compute the same numbers, never by another."""

from __future__ import annotations

import json

import pytest
import torch

import slimepo.train.run
from slimepo.config import TrainConfig
from slimepo.train import train
from slimepo.train.ref_cache import IDENTITY_FILE, LOGPS_FILE

TRAIN_PAIRS = 14  # toy_data["train"]


def dpo_config(model_dir, toy_data, out, cache, **overrides) -> TrainConfig:
    values = dict(
        model=str(model_dir), dataset=str(toy_data["train"]), eval_dataset=str(toy_data["test"]),
        eval_split="train", output_dir=str(out), max_steps=2, batch_size=4, logging_steps=1, save_steps=0,
        lora_r=4, lora_alpha=8, lora_dropout=0.0, monitor_steps=0, learning_rate=1e-2, loss="dpo",
        precompute_ref_logps=True, ref_logps_cache=str(cache),
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def reference_passes(monkeypatch):
    """Counts the pairs scored by precompute_reference's forward passes."""
    scored = []
    real = slimepo.train.run.score_pairs

    def counting(model, pairs, **kw):
        if any(p.ref_chosen_logp is None for p in pairs) and len(pairs) == TRAIN_PAIRS:
            scored.append(len(pairs))
        return real(model, pairs, **kw)

    monkeypatch.setattr(slimepo.train.run, "score_pairs", counting)
    return scored


def losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train" and "loss" in r]


def entries(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def test_a_second_run_reuses_the_cached_sums_and_trains_the_same(tiny_model_dir, toy_data, tmp_path, reference_passes):
    cache = tmp_path / "cache"
    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "a", cache))
    # Another seed draws other LoRA A matrices; the reference (zero adapters) is the same base.
    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "b", cache))
    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "c", cache, seed=1))

    assert reference_passes == [TRAIN_PAIRS]  # scored once, by the first run
    assert len(entries(cache)) == 1
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    stored = json.loads((cache / entries(cache)[0] / IDENTITY_FILE).read_text())
    assert stored["pairs"] == TRAIN_PAIRS and stored["layout"] == "shared" and stored["max_length"] == 1024


def test_the_cached_sums_equal_a_fresh_reference_pass(tiny_model_dir, toy_data, tmp_path):
    from safetensors.torch import load_file

    from slimepo.data import prepare_pairs
    from slimepo.model import load_causal_lm, load_tokenizer
    from slimepo.scoring import score_pairs

    cache = tmp_path / "cache"
    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "a", cache, mixed_precision="no"))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs, _ = prepare_pairs(str(toy_data["train"]), tokenizer, split="train")
    scores = score_pairs(load_causal_lm(str(tiny_model_dir), training=False), pairs,
                         pad_token_id=tokenizer.pad_token_id, batch_size=4)

    cached = load_file(cache / entries(cache)[0] / LOGPS_FILE)
    torch.testing.assert_close(cached["ref_chosen_logp"], scores.chosen_logps.sum(-1).double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached["ref_rejected_logp"], scores.rejected_logps.sum(-1).double(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", [
    {"max_length": 900},  # a length: nothing is cut here, but the key says it
    {"chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"},  # tokenization
    {"layout": "separate"},
    {"logprob_chunk_size": 0},
    {"ref_model": "SELF_COPY"},  # a separate reference (same weights, other module names) is another model
])
def test_any_change_that_can_move_the_numbers_scores_afresh(tiny_model_dir, toy_data, tmp_path, reference_passes,
                                                           change):
    if change.get("ref_model") == "SELF_COPY":
        change = {"ref_model": str(tiny_model_dir)}
    cache = tmp_path / "cache"
    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "a", cache))
    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "b", cache, **change))

    assert reference_passes == [TRAIN_PAIRS] * 2 and len(entries(cache)) == 2


def test_another_tokenizer_scores_afresh(tiny_model_dir, toy_data, tmp_path, reference_passes):
    import shutil

    from tokenizers import normalizers
    from transformers import AutoTokenizer

    other = tmp_path / "same-weights-other-tokenizer"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()  # "The river" -> "the river": other ids
    tokenizer.save_pretrained(other)
    cache = tmp_path / "cache"
    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "a", cache))
    train(dpo_config(other, toy_data, tmp_path / "b", cache))

    assert reference_passes == [TRAIN_PAIRS] * 2 and len(entries(cache)) == 2
    digests = {json.loads((cache / e / IDENTITY_FILE).read_text())["reference_weights_sha256"] for e in entries(cache)}
    assert len(digests) == 1  # the same reference: only the tokenization differs


def test_an_entry_that_does_not_hold_what_its_key_names_is_replaced(tiny_model_dir, toy_data, tmp_path,
                                                                    reference_passes, caplog):
    cache = tmp_path / "cache"
    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "a", cache))
    entry = cache / entries(cache)[0]
    identity = json.loads((entry / IDENTITY_FILE).read_text())
    (entry / IDENTITY_FILE).write_text(json.dumps({**identity, "pairs": TRAIN_PAIRS - 1}))

    train(dpo_config(tiny_model_dir, toy_data, tmp_path / "b", cache))

    assert reference_passes == [TRAIN_PAIRS] * 2 and "does not hold what its key names" in caplog.text
    assert json.loads((entry / IDENTITY_FILE).read_text()) == identity
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_off_writes_no_cache(tiny_model_dir, toy_data, tmp_path, monkeypatch, reference_passes):
    monkeypatch.setenv("SLIMEPO_CACHE", str(tmp_path / "slimepo-cache"))
    for name in ("a", "b"):
        train(dpo_config(tiny_model_dir, toy_data, tmp_path / name, "off"))
    assert reference_passes == [TRAIN_PAIRS] * 2 and not (tmp_path / "slimepo-cache" / "ref-logps").exists()
