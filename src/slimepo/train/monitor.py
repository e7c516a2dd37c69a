"""Training-time stability monitor: is the chosen answer still likely, are rejected tokens collapsing?

Every ``monitor_steps`` optimizer steps it scores a fixed handful of held-out pairs and logs,
against the same pairs at step 0:

- ``monitor/chosen_drift``: mean r(y_w) now minus at the start (nats/token; negative =
  the chosen answers became less likely, i.e. unlearning);
- ``monitor/collapse``: fraction of rejected tokens with p < 1e-4.

It warns once per condition when the drift falls below ``-unlearning_alarm`` or the
collapse fraction has risen by more than ``collapse_alarm`` (a share, e.g. 0.02 = two
percentage points) above its value at the start.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import TrainerCallback

from slimepo.diagnostics import COLLAPSE_PROB, collapse_stats
from slimepo.losses.base import sequence_stats
from slimepo.metrics_log import append_record
from slimepo.scoring import PairScores, score_pairs

logger = logging.getLogger(__name__)


def chosen_mean_logp(scores: PairScores) -> float:
    return float(sequence_stats(scores.chosen_logps, scores.chosen_mask, "chosen").mean.mean())


def rejected_collapse(scores: PairScores) -> float:
    return float(collapse_stats(scores.rejected_logps, scores.rejected_mask)["rejected_p_lt_1e-4"])


class StabilityMonitor(TrainerCallback):
    def __init__(self, pairs, *, pad_token_id: int, every: int, unlearning_alarm: float, collapse_alarm: float,
                 chunk_size: int | None, metrics_path: Path):
        self.pairs = list(pairs)
        self.score = dict(pad_token_id=pad_token_id, chunk_size=chunk_size)
        self.every = every
        self.unlearning_alarm = unlearning_alarm
        self.collapse_alarm = collapse_alarm
        self.metrics_path = metrics_path
        self.start: dict[str, float] | None = None
        self.warned: set[str] = set()

    def _measure(self, model) -> PairScores | None:
        """The pairs' scores on process 0, None on the others: every process calls it, and a batch is
        scored by one process only (by all of them when each forward gathers sharded weights)."""
        return score_pairs(model, self.pairs, **self.score, across_processes=True)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Measure the start once; a resumed run reads it back, so drift stays relative to step 0.

        Every process calls the measurement unless the saved start exists, which all see alike:
        one shared output folder, and process 0 writes it atomically only after a measurement the
        others have joined.
        """
        if not self.pairs or self.start is not None:
            return
        saved = self.metrics_path.with_name("monitor_start.json")
        if saved.is_file():
            self.start = json.loads(saved.read_text())
            return
        scores = self._measure(model)
        if scores is None:  # not process 0
            return
        self.start = {"chosen_logp": chosen_mean_logp(scores), "collapse": rejected_collapse(scores)}
        staged = saved.with_suffix(".tmp")
        staged.write_text(json.dumps(self.start))
        os.replace(staged, saved)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.pairs or state.global_step % self.every:
            return
        scores = self._measure(model)
        if scores is None:  # not process 0
            return
        drift = chosen_mean_logp(scores) - self.start["chosen_logp"]
        collapse = rejected_collapse(scores)
        append_record(self.metrics_path, state.global_step, "monitor", state.epoch,
                      {"monitor/chosen_drift": drift, "monitor/collapse": collapse})
        if drift < -self.unlearning_alarm and "unlearning" not in self.warned:
            self.warned.add("unlearning")
            logger.warning(
                "step %d: chosen log-likelihood fell by %.3f nats/token since the start (alarm at %.3f): "
                "the model is unlearning the preferred answers", state.global_step, -drift, self.unlearning_alarm,
            )
        if collapse - self.start["collapse"] > self.collapse_alarm and "collapse" not in self.warned:
            self.warned.add("collapse")
            logger.warning(
                "step %d: %.1f%% of rejected tokens have p < %g, up from %.1f%% at the start (alarm at +%.1f "
                "points): formatting collapse", state.global_step, 100 * collapse, COLLAPSE_PROB,
                100 * self.start["collapse"], 100 * self.collapse_alarm,
            )
