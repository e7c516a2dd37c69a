"""Collapse, drift and held-out preference metrics, defined once (slimepo.diagnostics), on hand-computed values."""

import json
import math

import pytest
import torch

from slimepo.diagnostics import (
    collapse_metrics,
    collapse_stats,
    drift_stats,
    end_of_turn_stats,
    preference_metrics,
)


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


NAN = float("nan")
LOG_1E4 = math.log(1e-4)  # -9.21
LOG_1E8 = math.log(1e-8)  # -18.42


def two_pairs_with_garbage():
    """Two pairs whose masked positions hold values that would change every statistic."""
    chosen_logps = torch.tensor([[-0.2, -0.4, -1e9], [-1.0, NAN, 5.0]])
    chosen_mask = torch.tensor([[True, True, False], [True, False, False]])
    rejected_logps = torch.tensor([[-1.0, -10.0, -20.0, -1e9], [-0.5, -12.0, NAN, -50.0]])
    rejected_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    return chosen_logps, chosen_mask, rejected_logps, rejected_mask


def test_statistics_ignore_masked_garbage_and_follow_definitions():
    result = preference_metrics(*two_pairs_with_garbage())

    chosen_r = [(-0.2 - 0.4) / 2, -1.0]
    rejected_r = [(-1.0 - 10.0 - 20.0) / 3, (-0.5 - 12.0) / 2]
    margins = sorted(c - r for c, r in zip(chosen_r, rejected_r, strict=True))  # [5.25, 10.033]
    assert result["pairs"] == 2
    assert result["accuracy"] == 1.0
    assert result["chosen_logp_mean"] == pytest.approx(sum(chosen_r) / 2)
    assert result["rejected_logp_mean"] == pytest.approx(sum(rejected_r) / 2)
    margin = result["margin"]
    assert margin["mean"] == pytest.approx(sum(margins) / 2)
    assert margin["std"] == pytest.approx((margins[1] - margins[0]) / 2)  # population std
    assert margin["p50"] == pytest.approx(sum(margins) / 2)
    assert margin["p10"] == pytest.approx(margins[0] + 0.1 * (margins[1] - margins[0]))
    assert margin["p90"] == pytest.approx(margins[0] + 0.9 * (margins[1] - margins[0]))


def test_collapse_fractions_count_valid_rejected_tokens_below_thresholds():
    result = preference_metrics(*two_pairs_with_garbage())

    # valid rejected tokens: -1, -10, -20, -0.5, -12
    assert LOG_1E8 < -12.0 < -10.0 < LOG_1E4 < -1.0
    assert result["collapse"]["rejected_p_lt_1e-4"] == pytest.approx(3 / 5)  # -10, -20, -12
    assert result["collapse"]["rejected_p_lt_1e-8"] == pytest.approx(1 / 5)  # -20
    assert result["collapse"]["rejected_min_logp"] == pytest.approx(-20.0)


def test_accuracy_counts_strict_wins_only():
    chosen = torch.tensor([[-1.0], [-1.0], [-3.0], [-2.0]])
    rejected = torch.tensor([[-2.0], [-1.0], [-1.0], [-4.0]])  # win, tie, loss, win
    mask = torch.ones(4, 1, dtype=torch.bool)

    result = preference_metrics(chosen, mask, rejected, mask)

    assert result["accuracy"] == pytest.approx(2 / 4)
    assert "base" not in result and "drift" not in result


def test_drift_against_base_that_is_higher_on_chosen_in_two_of_four_pairs():
    mask = torch.tensor([[True, True, False]] * 4)
    garbage = -1e6
    model_chosen = torch.tensor([[-1.0, -1.0, garbage]] * 4)  # r = -1 everywhere
    model_rejected = torch.tensor([[-2.0, -2.0, garbage]] * 4)  # r = -2 everywhere
    base_chosen_r = [-0.5, -2.0, -0.8, -3.0]  # base above the model in pairs 0 and 2
    base_chosen = torch.tensor([[r, r, 7.0] for r in base_chosen_r])
    base_rejected = torch.tensor([[-1.0, -1.0, NAN]] * 4)

    result = preference_metrics(
        model_chosen, mask, model_rejected, mask, base=(base_chosen, mask, base_rejected, mask)
    )

    drift = result["drift"]
    assert drift["unlearning_rate"] == pytest.approx(0.5)
    assert drift["chosen_drift_mean"] == pytest.approx(sum(-1.0 - r for r in base_chosen_r) / 4)
    assert drift["rejected_drift_mean"] == pytest.approx(-2.0 - -1.0)
    base = result["base"]
    assert base["accuracy"] == pytest.approx(2 / 4)  # base r(y_w) > -1 in pairs 0 and 2
    assert base["chosen_logp_mean"] == pytest.approx(sum(base_chosen_r) / 4)
    assert base["rejected_logp_mean"] == pytest.approx(-1.0)
    assert base["collapse"]["rejected_p_lt_1e-4"] == 0.0


def test_result_is_json_serializable_and_std_defined_for_one_pair():
    mask = torch.ones(1, 2, dtype=torch.bool)
    logps = torch.tensor([[-1.0, -2.0]])
    result = preference_metrics(logps, mask, logps - 1, mask, base=(logps, mask, logps, mask))

    assert json.loads(json.dumps(result)) == result
    assert result["margin"]["std"] == 0.0


def test_base_with_other_token_counts_is_rejected():
    mask = torch.ones(2, 3, dtype=torch.bool)
    short = torch.tensor([[True, True, False], [True, True, True]])
    logps = torch.full((2, 3), -1.0)

    with pytest.raises(ValueError, match="base chosen"):
        preference_metrics(logps, mask, logps, mask, base=(logps, short, logps, mask))


def test_end_of_turn_is_the_last_valid_tokens_log_prob_on_the_responses_marked_as_ending():
    logps = torch.tensor([[-0.2, -0.4, -1e9], [-1.0, NAN, 5.0], [-3.0, -2.0, -1.0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])

    stats = end_of_turn_stats(logps, mask, [True, True, False])  # the third was cut: its last token is no end

    assert stats == {"count": 2, "logp_mean": pytest.approx((-0.4 - 1.0) / 2),
                     "p_mean": pytest.approx((math.exp(-0.4) + math.exp(-1.0)) / 2)}
    assert end_of_turn_stats(logps, mask, [False, False, False]) == {"count": 0, "logp_mean": None, "p_mean": None}
    with pytest.raises(ValueError, match=r"ends must be \[pairs\] = \[3\]"):
        end_of_turn_stats(logps, mask, [True, True])


def test_preference_metrics_give_the_end_of_turn_of_each_side_for_the_model_and_the_base():
    chosen_logps, chosen_mask, rejected_logps, rejected_mask = two_pairs_with_garbage()
    base = (chosen_logps - 1.0, chosen_mask, rejected_logps - 2.0, rejected_mask)

    result = preference_metrics(chosen_logps, chosen_mask, rejected_logps, rejected_mask, base=base,
                                ends=([True, True], [True, False]))

    # chosen ends: -0.4 (row 1, second token) and -1.0 (row 2, its only token); rejected: -20.0 (row 1).
    assert result["end_of_turn"]["chosen"]["logp_mean"] == pytest.approx(-0.7)
    assert result["end_of_turn"]["rejected"] == {"count": 1, "logp_mean": -20.0, "p_mean": pytest.approx(math.exp(-20))}
    assert result["base"]["end_of_turn"]["chosen"]["logp_mean"] == pytest.approx(-1.7)
    assert result["base"]["end_of_turn"]["rejected"]["logp_mean"] == pytest.approx(-22.0)
    assert "end_of_turn" not in preference_metrics(*two_pairs_with_garbage())
