"""The stability monitor: logs drift and collapse against step 0, warns once per condition."""

import json
import logging
from types import SimpleNamespace

import pytest
import torch

import slimepo.train.monitor as monitor_module
from slimepo.scoring import PairScores
from slimepo.train.monitor import StabilityMonitor

MASK = torch.ones(2, 4, dtype=torch.bool)


def scores(chosen_logp: float, collapsed_rejected: int) -> PairScores:
    """Two pairs of 4 tokens; ``collapsed_rejected`` of the 8 rejected tokens at log p = -20."""
    rejected = torch.full((2, 4), -1.0)
    rejected.view(-1)[:collapsed_rejected] = -20.0
    return PairScores(torch.full((2, 4), chosen_logp), MASK, rejected, MASK)


@pytest.fixture
def run_monitor(tmp_path, monkeypatch):
    def run(sequence):
        feed = iter(sequence)
        monkeypatch.setattr(monitor_module, "score_pairs", lambda *a, **k: next(feed))
        monitor = StabilityMonitor(["p"], pad_token_id=0, every=1, unlearning_alarm=0.5, collapse_alarm=0.2,
                                   chunk_size=4, metrics_path=tmp_path / "metrics.jsonl")
        args = SimpleNamespace(process_index=0)
        monitor.on_train_begin(args, None, None, model=None)
        for n in range(1, len(sequence)):
            monitor.on_step_end(args, SimpleNamespace(global_step=n, epoch=0.0), None, model=None)
        return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    return run


def test_monitor_logs_drift_and_collapse_relative_to_the_start(run_monitor):
    lines = run_monitor([scores(-1.0, 1), scores(-1.25, 1), scores(-0.75, 3)])
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[0]["monitor/chosen_drift"] == pytest.approx(-0.25)
    assert lines[1]["monitor/chosen_drift"] == pytest.approx(0.25)
    assert lines[0]["monitor/collapse"] == pytest.approx(1 / 8)
    assert lines[1]["monitor/collapse"] == pytest.approx(3 / 8)


def test_monitor_warns_once_per_condition(run_monitor, caplog):
    with caplog.at_level(logging.WARNING, logger="slimepo.train.monitor"):
        # drift -0.6 (< -0.5) from step 1 on; collapse +3/8 (> 0.2) from step 2 on
        run_monitor([scores(-1.0, 0), scores(-1.6, 0), scores(-1.7, 3), scores(-1.8, 4)])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unlearning" in m for m in messages) == 1
    assert sum("formatting collapse" in m for m in messages) == 1


def test_monitor_stays_quiet_below_the_alarms(run_monitor, caplog):
    with caplog.at_level(logging.WARNING, logger="slimepo.train.monitor"):
        run_monitor([scores(-1.0, 2), scores(-1.4, 3), scores(-0.9, 2)])
    assert not caplog.records


def test_a_resumed_monitor_keeps_the_original_start(run_monitor, tmp_path):
    run_monitor([scores(-1.0, 0), scores(-1.2, 0)])
    start = json.loads((tmp_path / "monitor_start.json").read_text())
    assert start == {"chosen_logp": -1.0, "collapse": 0.0}
    # A resume reads the saved start instead of scoring, so step 1 gets the first scores.
    lines = run_monitor([scores(-1.5, 0), scores(-9.0, 0)])
    assert lines[-1]["step"] == 1 and lines[-1]["monitor/chosen_drift"] == pytest.approx(-0.5)
