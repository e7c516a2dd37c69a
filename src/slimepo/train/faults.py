"""Numerical faults: an optimizer step whose loss or gradient is not finite is not applied.

One bad batch (an overflow, a corrupt row, a spike) must not write NaN into the weights
or into Adam's moments, where it would stay for the rest of the run. Per optimizer step:

    bad = any micro-batch loss on any process is NaN/inf  or  the global grad norm is NaN/inf

A bad step is skipped whole: weights, optimizer state and learning-rate schedule stay
as they were (the step counter still advances, as for an fp16 overflow). Skips are
counted (``skipped_steps`` in the metrics), and ``max_bad_steps`` consecutive ones stop
the run with :class:`NonFiniteTrainingError`; no checkpoint is written during such a
streak, so the newest checkpoint is the last good state.

The skip uses the flag accelerate raises when a GradScaler skips a step, so the Trainer
does not advance the scheduler. It works wherever the optimizer is accelerate's
``AcceleratedOptimizer`` (one device, DDP, FSDP), not under DeepSpeed, which steps inside
its engine.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
from torch import Tensor
from transformers import TrainerCallback

from slimepo.train.checkpoint import latest_complete_checkpoint

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


class NonFiniteStepGuard(TrainerCallback):
    """Decides, once per optimizer step, whether the step is applied.

    The trainer reports each micro-batch loss (:meth:`observe_loss`) and the gradient
    norm (:meth:`decide`, just before the optimizer step); ``on_train_begin`` makes the
    optimizer's ``step`` honour the decision.
    """

    def __init__(self, max_bad_steps: int, output_dir: str):
        self.max_bad_steps = max_bad_steps
        self.output_dir = output_dir
        self.skipped_steps = 0  # over the whole run, restored on resume
        self.consecutive_bad = 0
        self.skip = False  # the decision for the optimizer step about to run
        self._bad_losses: Tensor | None = None  # non-finite micro-batch losses since the last step

    def observe_loss(self, loss: Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).sum()
        self._bad_losses = bad if self._bad_losses is None else self._bad_losses + bad

    def decide(self, grad_norm: Tensor | float | None, global_step: int, reduce_sum) -> bool:
        """Skip the coming optimizer step? ``reduce_sum`` sums a tensor over processes."""
        bad_losses = self._bad_losses if self._bad_losses is not None else torch.zeros((), dtype=torch.long)
        self._bad_losses = None
        bad_losses = int(reduce_sum(bad_losses.float().reshape(1)).sum())
        norm = float(grad_norm) if grad_norm is not None else 0.0
        self.skip = bad_losses > 0 or not math.isfinite(norm)
        if not self.skip:
            self.consecutive_bad = 0
            return False
        self.skipped_steps += 1
        self.consecutive_bad += 1
        step = global_step + 1
        logger.warning(
            "step %d: %s; optimizer step skipped (%d in a row, the run stops at %d)",
            step, f"{bad_losses} non-finite loss(es)" if bad_losses else f"gradient norm {norm}",
            self.consecutive_bad, self.max_bad_steps,
        )
        if self.consecutive_bad >= self.max_bad_steps:
            last = latest_complete_checkpoint(self.output_dir)
            where = f"the newest checkpoint, {last}, holds" if last else "no checkpoint was written; the run held"
            raise NonFiniteTrainingError(
                f"{self.consecutive_bad} consecutive optimizer steps ({step - self.consecutive_bad + 1} to {step}) had "
                f"a non-finite loss or gradient (max_bad_steps={self.max_bad_steps}); stopping. None of them changed "
                f"the weights; {where} the last good state. Lower the learning rate or check the data, then "
                "resume with --resume auto."
            )
        return True

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None or getattr(optimizer, "_slimepo_guarded", False):
            return
        apply_step = optimizer.step

        @functools.wraps(apply_step)  # keeps the scheduler's "wrapped" mark: steps still go through it
        def step(closure=None):
            # ``_is_overflow`` is accelerate's "this step was skipped": the Trainer then
            # leaves the scheduler alone. Reset it on applied steps (only a scaler does).
            optimizer._is_overflow = self.skip
            if not self.skip:
                # DeepSpeed's optimizer wrapper takes no closure (its engine steps inside backward).
                return apply_step() if closure is None else apply_step(closure)
            return None

        optimizer.step = step
        optimizer._slimepo_guarded = True
