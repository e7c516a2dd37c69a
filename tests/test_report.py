import json
import math
import random
import re

import pytest

from slimepo.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_metrics(loss, steps, seed):
    """Metric lines shaped like the trainer's: noisy train steps, eval every 20 steps."""
    rng = random.Random(seed)
    lines = []
    for step in range(1, steps + 1):
        progress = step / steps
        chosen = -1.2 + (0.1 if loss == "slime" else -0.6) * progress + rng.gauss(0, 0.05)
        rejected = -1.4 - 2.0 * progress + rng.gauss(0, 0.05)
        row = {
            "step": step,
            "split": "train",
            "epoch": progress,
            "loss": 1.5 * math.exp(-2 * progress) + rng.gauss(0, 0.05),
            "logps/chosen": chosen,
            "logps/rejected": rejected,
            "logps/chosen_sum": chosen * 200,
            "logps/rejected_sum": rejected * 180,
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "margin": chosen - rejected,
            "accuracy": min(1.0, 0.5 + 0.45 * progress + rng.gauss(0, 0.05)),
            "collapse/rejected_p_lt_1e-4": 0.01 + (0.02 if loss == "slime" else 0.2) * progress,
            "collapse/rejected_min_logp": -12 - 10 * progress,
            "grad_norm": 2.0 + rng.random(),
            "learning_rate": 1e-4 * (1 - progress),
            "tokens_per_second": 900 + rng.gauss(0, 30),
        }
        if loss == "slime":
            row |= {
                "loss/margin": 1.0 - progress,
                "loss/anchor": -0.1 * chosen,
                "loss/stabilizer": 1e-3,
            }
        else:
            row |= {"loss/sigmoid": 0.69 - 0.4 * progress}
        lines.append(json.dumps(row))
        if step % 20 == 0:
            lines.append(
                json.dumps(
                    {
                        "step": step,
                        "split": "eval",
                        "epoch": progress,
                        "loss": 1.4 * math.exp(-1.8 * progress),
                        "logps/chosen": chosen - 0.1,
                        "logps/rejected": rejected + 0.2,
                        "margin": chosen - rejected - 0.3,
                        "accuracy": 0.5 + 0.4 * progress,
                        "collapse/rejected_p_lt_1e-4": 0.02 * progress,
                    }
                )
            )
            lines.append(
                json.dumps(
                    {
                        "step": step,
                        "split": "monitor",
                        "epoch": progress,
                        "monitor/chosen_drift": (0.05 if loss == "slime" else -0.5) * progress,
                        "monitor/collapse": 0.1 * progress,
                    }
                )
            )
    return lines


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two run folders: a SLIME run with eval.json, a DPO run with five malformed lines."""
    tmp_path = tmp_path_factory.mktemp("runs")
    runs = []
    for name, loss, steps in (("slime-run", "slime", 120), ("dpo-run", "dpo", 100)):
        run = tmp_path / name
        run.mkdir()
        lines = synthetic_metrics(loss, steps, seed=len(runs))
        if loss == "dpo":
            lines[5:5] = [
                "{not json",
                "[1, 2]",
                '{"split": "train", "loss": 1.0}',
                "",
                '{"step": 3',
            ]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run / "config.yaml").write_text(f"loss: {loss}\nlearning_rate: 1.0e-4\n")
        runs.append(run)
    evaluation = {
        "pairs": 500,
        "accuracy": 0.74,
        "margin": {"mean": 1.8, "std": 0.9, "p10": 0.2, "p50": 1.7, "p90": 3.1},
        "chosen_logp_mean": -1.1,
        "rejected_logp_mean": -2.9,
        "collapse": {
            "rejected_p_lt_1e-4": 0.03,
            "rejected_p_lt_1e-8": 0.001,
            "rejected_min_logp": -21.0,
        },
        "generation": {"count": 80, "ended_rate": 0.975, "degenerate_rate": 0.0125},
    }
    (runs[0] / "eval.json").write_text(json.dumps(evaluation))
    return runs


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory):
    return write_report(two_runs, tmp_path_factory.mktemp("report"))


def table_after(markdown, heading):
    """The rows of the first table after ``heading``, header and rule excluded."""
    block = []
    for line in markdown.split(heading, 1)[1].splitlines():
        if line.startswith("|"):
            block.append(line)
        elif block:
            break
    return block[2:]


def test_report_writes_valid_pngs_and_markdown_that_embeds_them(report):
    markdown = report.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert {"loss.png", "loglik.png", "margin.png", "accuracy.png", "collapse.png"} <= set(images)
    for image in images:
        data = (report.parent / image).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_runs_table_gives_each_runs_loss_and_last_step(report):
    markdown = report.read_text()

    rows = table_after(markdown, "## Runs")
    assert len(rows) == 2
    assert rows[0].startswith("| slime-run | slime | 120 |")
    assert rows[1].startswith("| dpo-run | dpo | 100 |")


def test_evaluation_table_has_one_row_per_run_with_dashes_for_missing(report):
    markdown = report.read_text()

    rows = table_after(markdown, "Held-out preference pairs")
    assert len(rows) == 2
    slime = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert slime[:4] == ["slime-run", "500", "0.74", "1.8"]
    assert "—" in slime  # no drift without a base model
    dpo = [cell.strip() for cell in rows[1].strip("|").split("|")]
    assert dpo[0] == "dpo-run" and set(dpo[1:]) == {"—"}
    generations = table_after(markdown, "Generations:")
    assert len(generations) == 2 and "0.975" in generations[0]


def test_malformed_lines_are_skipped_with_a_note(report):
    markdown = report.read_text()

    notes = markdown.split("## Notes", 1)[1]
    assert notes.count("dpo-run: metrics.jsonl line") == 4  # the blank line is not a problem
    assert "slime-run: metrics.jsonl" not in notes


def test_missing_files_still_give_a_report(tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text(": : not yaml [")
    (empty / "eval.json").write_text("{truncated")

    markdown = write_report([empty], tmp_path / "report").read_text()

    assert "No curve could be drawn" in markdown
    assert "empty-run: metrics.jsonl is missing" in markdown
    assert "config.yaml could not be read" in markdown
    assert "eval.json could not be read" in markdown
    assert len(table_after(markdown, "## Runs")) == 1


def test_the_trainers_end_of_run_summary_line_is_not_reported_as_a_problem(tmp_path):
    import json as _json

    from slimepo.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("loss: slime\n")
    lines = [{"step": 1, "split": "train", "epoch": 0.1, "loss": 1.0, "logps/chosen": -1.0, "logps/rejected": -2.0},
             {"step": 1, "split": "summary", "epoch": 0.1, "train_runtime": 3.0}]
    (run / "metrics.jsonl").write_text("".join(_json.dumps(x) + "\n" for x in lines))
    text = write_report([run], tmp_path / "report").read_text()
    assert "line 2" not in text


def test_benchmark_scores_of_every_evaluation_are_tabled_the_newest_winning(tmp_path):
    import os

    run = tmp_path / "slime"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    (run / "eval.json").write_text(json.dumps({"pairs": 3, "accuracy": 0.5}))  # training's
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps({"pairs": 4, "accuracy": 0.75, "settings": {},
                                                        "ifeval": {"prompt_level_strict": 0.2, "prompts": 541}}))
    (run / "eval-mt").mkdir()
    (run / "eval-mt" / "eval.json").write_text(json.dumps({"mt_bench": {"overall": 4.5, "questions": 80},
                                                           "ifeval": {"prompt_level_strict": 0.9, "prompts": 5}}))
    os.utime(run / "eval" / "eval.json", (1, 1))  # eval-mt/ is the newer: its IFEval wins
    plain = tmp_path / "dpo"
    plain.mkdir()
    (plain / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 2.0}) + "\n")

    markdown = write_report([run, plain], tmp_path / "report").read_text()

    assert table_after(markdown, "## Benchmarks") == [
        "| slime | 0.9 | 5 | 4.5 | 80 |",
        "| dpo | — | — | — | — |",
    ]
    assert "| run | IFEval prompt strict | IFEval prompts | MT-Bench (1-10) | MT-Bench questions |" in markdown
    assert table_after(markdown, "Held-out preference pairs")[0].startswith("| slime | 4 | 0.75 |")  # eval/, not training's


def test_a_report_of_runs_without_benchmarks_has_no_benchmark_section(report):
    assert "## Benchmarks" not in report.read_text()
