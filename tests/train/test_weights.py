"""Per-pair weights from a dataset column (--weight-column): rows, batches, step counts, a run."""

import csv
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from slimepo.config import ConfigError, TrainConfig
from slimepo.data import DataError, load_rows, normalize_rows, prepare_pairs
from slimepo.data.collate import PairCollator
from slimepo.data.formats import ValidationReport, weighted_pairs
from slimepo.testing import tiny_tokenizer
from slimepo.train import train
from slimepo.train.trainer import PreferenceTrainer


def pair_row(i, **extra):
    return {"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}.", **extra}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_weights_are_read_from_the_column_and_bad_ones_are_bad_rows_with_their_row_numbers(tmp_path):
    rows = [pair_row(1, w=2), pair_row(2, w=0.5), pair_row(3), pair_row(4, w=None), pair_row(5, w=-1),
            pair_row(6, w="heavy"), pair_row(7, w=True), pair_row(8, w=0), pair_row(9, w="1.5"), pair_row(10, w=""),
            pair_row(11, w=float("nan")), pair_row(12, w=[1]), pair_row(13, w=10**400)]
    path = write_jsonl(tmp_path / "weighted.jsonl", rows)
    report = ValidationReport()
    pairs = normalize_rows(load_rows(path), report, convert=weighted_pairs("w"))
    # Kept: rows 1, 2, 8 and 9 (a weight of 0 is a valid weight; "1.5" is a number's text, as in a CSV).
    assert [(p.origin.row, p.weight) for p in pairs] == [(1, 2.0), (2, 0.5), (8, 0.0), (9, 1.5)]
    assert report.counts == {"missing_weight": 3, "bad_weight": 6}
    assert [o.row for o in report.examples["missing_weight"]] == [3, 4, 10]
    assert [o.row for o in report.examples["bad_weight"]] == [5, 6, 7, 11, 12]  # the first five
    with pytest.raises(DataError) as err:
        report.check(0.05)
    message = str(err.value)
    assert "bad_weight: 6 rows (first: 5, 6, 7, 11, 12) - the weight is not a finite number >= 0" in message
    assert "missing_weight: 3 rows (first: 3, 4, 10) - the weight column (--weight-column) is absent" in message
    assert "--weight-column names the one holding each pair's weight" in message


def test_a_bad_pair_is_counted_under_its_own_reason_before_its_weight(tmp_path):
    path = write_jsonl(tmp_path / "w.jsonl", [{"prompt": "Q?", "chosen": "same", "rejected": "same", "w": -1}])
    report = ValidationReport()
    assert normalize_rows(load_rows(path), report, convert=weighted_pairs("w")) == []
    assert report.counts == {"identical_responses": 1}


def test_csv_weights_are_text_and_columns_remapping_keeps_the_weight_column(tmp_path):
    path = tmp_path / "w.csv"
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["question", "good", "bad", "score"])
        writer.writeheader()
        writer.writerows([{"question": "Q1?", "good": "yes", "bad": "no", "score": "2"},
                          {"question": "Q2?", "good": "yes", "bad": "no", "score": "-0.5"}])
    report = ValidationReport()
    rows = load_rows(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    pairs = normalize_rows(rows, report, convert=weighted_pairs("score"))
    assert [p.weight for p in pairs] == [2.0]
    assert report.counts == {"bad_weight": 1} and report.examples["bad_weight"][0].row == 2


def test_prepare_pairs_keeps_each_weight_on_the_tokenized_pair_and_refuses_all_zero(tmp_path):
    tokenizer = tiny_tokenizer()
    path = write_jsonl(tmp_path / "w.jsonl", [pair_row(1, w=2), pair_row(2, w=0), pair_row(3, w=0.25)])
    pairs, _ = prepare_pairs(path, tokenizer, max_length=64, max_prompt_length=32, weight_column="w")
    assert [p.weight for p in pairs] == [2.0, 0.0, 0.25]
    unweighted, _ = prepare_pairs(path, tokenizer, max_length=64, max_prompt_length=32)
    assert [p.weight for p in unweighted] == [1.0, 1.0, 1.0]
    zero = write_jsonl(tmp_path / "zero.jsonl", [pair_row(1, w=0), pair_row(2, w=0)])
    with pytest.raises(DataError, match="every pair of .* has weight 0 in column 'w'"):
        prepare_pairs(zero, tokenizer, max_length=64, max_prompt_length=32, weight_column="w")


@pytest.mark.parametrize("layout", ["shared", "separate", "packed"])
def test_batches_carry_weights_only_when_a_weight_column_is_set(tmp_path, layout):
    tokenizer = tiny_tokenizer()
    path = write_jsonl(tmp_path / "w.jsonl", [pair_row(1, w=2), pair_row(2, w=0), pair_row(3, w=0.25)])
    pairs, _ = prepare_pairs(path, tokenizer, max_length=64, max_prompt_length=32, weight_column="w")
    plain = PairCollator(tokenizer.pad_token_id, layout=layout)(pairs)
    weighted = PairCollator(tokenizer.pad_token_id, layout=layout, weights=True)(pairs)
    assert "weights" not in plain
    assert set(weighted) == {*plain, "weights"}
    assert all(torch.equal(weighted[key], plain[key]) for key in plain)
    assert weighted["weights"].dtype == torch.float32 and weighted["weights"].tolist() == [2.0, 0.0, 0.25]


def test_step_counts_are_weighted_and_leave_stand_ins_out():
    def batch(weights, chosen_lengths, rejected_lengths, **extra):
        masks = {side: torch.arange(5) < torch.tensor(lengths)[:, None]
                 for side, lengths in (("chosen", chosen_lengths), ("rejected", rejected_lengths))}
        return {"chosen_mask": masks["chosen"], "rejected_mask": masks["rejected"],
                **({} if weights is None else {"weights": torch.tensor(weights)}), **extra}

    trainer = SimpleNamespace(accelerator=SimpleNamespace(reduce=lambda t, reduction: t),
                              _step_counts=PreferenceTrainer._step_counts, unpaired=False)
    parts = [batch([2.0, 0.5], [3, 1], [2, 4]), batch([0.0], [5], [5]),
             batch([9.0], [5], [5], stand_in=True)]
    totals = PreferenceTrainer._get_num_items_in_batch(trainer, parts, "cpu")
    # Σw = 2 + 0.5 + 0 = 2.5; Σw|y_w| = 2·3 + 0.5·1 + 0·5 = 6.5; Σw|y_l| = 2·2 + 0.5·4 + 0·5 = 6; the stand-in counts 0.
    assert [float(totals.pairs), float(totals.chosen_tokens), float(totals.rejected_tokens)] == [2.5, 6.5, 6.0]
    plain = PreferenceTrainer._get_num_items_in_batch(trainer, [batch(None, [3, 1], [2, 4])], "cpu")
    assert [float(plain.pairs), float(plain.chosen_tokens), float(plain.rejected_tokens)] == [2.0, 4.0, 6.0]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"loss": "kto", "weight_column": "w"}, "weight_column: kto trains on unpaired examples"),
    ({"weight_column": " "}, "weight_column: must name a column"),
])
def test_weight_column_is_refused_with_kto_and_without_a_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**overrides).validate()


WEIGHTS = [1, 2, 1, 0, 2, 1]  # the weighted set; the same rows repeated w times make the other (7 pairs)


def test_cli_run_with_a_weight_column_logs_the_step_1_loss_and_grad_norm_of_the_run_with_rows_repeated(
    tiny_model_dir, toy_data, tmp_path
):
    rows = [json.loads(line) for line in toy_data["train"].read_text().splitlines()][: len(WEIGHTS)]
    weighted = write_jsonl(tmp_path / "weighted.jsonl", [{**row, "w": w} for row, w in zip(rows, WEIGHTS)])
    repeated = write_jsonl(tmp_path / "repeated.jsonl", [row for row, w in zip(rows, WEIGHTS) for _ in range(w)])
    common = dict(model=str(tiny_model_dir), eval_dataset=str(toy_data["test"]), eval_split="train", max_steps=1,
                  logging_steps=1, save_steps=0, monitor_steps=0, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                  warmup_ratio=0.0, learning_rate=1e-2)
    # One optimizer step, every pair in its one batch: the batches' order cannot differ.
    cli = subprocess.run(
        [sys.executable, "-m", "slimepo.cli", "train", "--dataset", str(weighted), "--weight-column", "w",
         "--batch-size", str(len(WEIGHTS)), "--output-dir", str(tmp_path / "weighted"),
         *(arg for key, value in common.items() for arg in (f"--{key.replace('_', '-')}", str(value)))],
        capture_output=True, text=True, timeout=600,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    train(TrainConfig(dataset=str(repeated), batch_size=sum(WEIGHTS), output_dir=str(tmp_path / "repeated"), **common))

    def first_train_log(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return next(r for r in map(json.loads, lines) if r["split"] == "train" and "loss" in r)

    weighted_log, repeated_log = first_train_log("weighted"), first_train_log("repeated")
    assert weighted_log["step"] == repeated_log["step"] == 1
    assert weighted_log["loss"] == pytest.approx(repeated_log["loss"], rel=1e-5)
    assert weighted_log["grad_norm"] == pytest.approx(repeated_log["grad_norm"], rel=1e-4)
    # Not the unweighted loss of the 6 pairs: the weights changed it.
    train(TrainConfig(dataset=str(weighted), batch_size=len(WEIGHTS), output_dir=str(tmp_path / "plain"), **common))
    assert first_train_log("plain")["loss"] != pytest.approx(weighted_log["loss"], rel=1e-4)


def test_a_dry_run_of_an_unreachable_dataset_gives_its_sample_the_weight_column(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "slimepo.cli", "train", "--dataset", "org/prefs", "--weight-column", "score",
         "--dry-run"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 optimizer steps" in result.stdout
