"""Collapse and drift, defined once (slimepo.diagnostics), on hand-computed values."""

import math

import pytest
import torch

from slimepo.diagnostics import collapse_metrics, collapse_stats, drift_stats


def test_collapse_counts_valid_rejected_tokens_below_each_threshold_and_the_minimum():
    logps = torch.tensor([[-1.0, -10.0, -20.0], [-12.0, -0.5, -99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # -99 is padding

    stats = collapse_stats(logps, mask)

    # log(1e-4) = -9.21, log(1e-8) = -18.42: -10, -20, -12 below the first; -20 below the second.
    assert stats["rejected_p_lt_1e-4"].item() == pytest.approx(3 / 5)
    assert stats["rejected_p_lt_1e-8"].item() == pytest.approx(1 / 5)
    assert stats["rejected_min_logp"].item() == -20.0
    assert math.log(1e-4) > -10.0


def test_training_logs_the_same_collapse_under_the_collapse_prefix():
    logps, mask = torch.tensor([[-1.0, -10.0]]), torch.tensor([[True, True]])

    assert {k: v.item() for k, v in collapse_metrics(logps, mask).items()} == {
        "collapse/rejected_p_lt_1e-4": 0.5, "collapse/rejected_p_lt_1e-8": 0.0, "collapse/rejected_min_logp": -10.0,
    }


def test_drift_is_model_minus_base_per_pair_and_unlearning_the_share_that_fell():
    drift = drift_stats(
        torch.tensor([-1.0, -2.0, -3.0, -1.0]), torch.tensor([-1.5, -1.0, -2.0, -1.0]),
        torch.tensor([-4.0, -4.0, -4.0, -4.0]), torch.tensor([-3.0, -3.0, -3.0, -5.0]),
    )

    assert drift["chosen_drift_mean"] == pytest.approx((0.5 - 1.0 - 1.0 + 0.0) / 4)
    assert drift["unlearning_rate"] == 0.5  # pairs 2 and 3 fell; pair 4 is unchanged
    assert drift["rejected_drift_mean"] == pytest.approx((-1 - 1 - 1 + 1) / 4)
