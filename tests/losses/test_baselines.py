"""Baselines against their papers' formulas, with expected values from plain floats."""

import math

import pytest
import torch

from slimepo.losses import get_loss


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


CHOSEN = torch.tensor([[-0.5, -1.0, -1.5, 0.0], [-0.2, -0.4, 0.0, 0.0]])
CHOSEN_MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])
REJECTED = torch.tensor([[-2.0, -3.0, 0.0], [-0.1, -6.0, -0.3]])
REJECTED_MASK = torch.tensor([[True, True, False], [True, True, True]])
SUM_W, SUM_L = [-3.0, -0.6], [-5.0, -6.4]
LEN_W, LEN_L = [3, 2], [2, 3]
REF_W, REF_L = torch.tensor([-2.5, -1.0]), torch.tensor([-4.0, -7.0])
REF_W_F, REF_L_F = [-2.5, -1.0], [-4.0, -7.0]


def run(name, with_ref=False, **params):
    ref = dict(ref_chosen_logps=REF_W, ref_rejected_logps=REF_L) if with_ref else {}
    return get_loss(name, **params)(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, **ref)


def mean(xs):
    return sum(xs) / len(xs)


def test_sft_is_length_normalized_nll_of_chosen():
    assert run("sft").loss.item() == pytest.approx(-mean([-1.0, -0.3]))


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_sigmoid_with_label_smoothing(eps):
    beta = 0.3
    hs = [beta * ((w - rw) - (lo - rl)) for w, lo, rw, rl in zip(SUM_W, SUM_L, REF_W_F, REF_L_F)]
    expected = mean([-(1 - eps) * logsigmoid(h) - eps * logsigmoid(-h) for h in hs])
    out = run("dpo", with_ref=True, beta=beta, label_smoothing=eps)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(mean([beta * (w - r) for w, r in zip(SUM_W, REF_W_F)]), rel=1e-6)
    assert out.metrics["accuracy"].item() == mean([h > 0 for h in hs])


@pytest.mark.parametrize("normalized", [False, True])
def test_ipo_squared_distance_to_half_inverse_tau(normalized):
    tau = 0.5
    hs = []
    for w, lo, rw, rl, nw, nl in zip(SUM_W, SUM_L, REF_W_F, REF_L_F, LEN_W, LEN_L):
        cw, cl = w - rw, lo - rl
        if normalized:
            cw, cl = cw / nw, cl / nl
        hs.append(cw - cl)
    expected = mean([(h - 1 / (2 * tau)) ** 2 for h in hs])
    assert run("ipo", with_ref=True, tau=tau, length_normalized=normalized).loss.item() == pytest.approx(expected, rel=1e-6)


def test_hinge_on_reference_normalized_gap():
    beta = 0.5
    expected = mean([max(0.0, 1 - beta * ((w - rw) - (lo - rl))) for w, lo, rw, rl in zip(SUM_W, SUM_L, REF_W_F, REF_L_F)])
    assert run("hinge", with_ref=True, beta=beta).loss.item() == pytest.approx(expected, rel=1e-6)


def test_simpo_length_normalized_with_target_margin():
    beta, gamma = 2.0, 0.7
    expected = mean([-logsigmoid(beta * w / nw - beta * lo / nl - gamma) for w, lo, nw, nl in zip(SUM_W, SUM_L, LEN_W, LEN_L)])
    assert run("simpo", beta=beta, gamma=gamma).loss.item() == pytest.approx(expected, rel=1e-6)


def test_cpo_is_sigmoid_on_summed_logps_plus_token_mean_nll():
    beta, alpha = 0.1, 0.5
    prefer = mean([-logsigmoid(beta * (w - lo)) for w, lo in zip(SUM_W, SUM_L)])
    nll = -sum(SUM_W) / sum(LEN_W)
    out = run("cpo", beta=beta, alpha=alpha)
    assert out.loss.item() == pytest.approx(prefer + alpha * nll, rel=1e-6)
    assert out.metrics["loss/nll"].item() == pytest.approx(nll, rel=1e-6)


def test_orpo_odds_ratio_from_length_normalized_logps():
    lam = 0.25

    def log_odds(r):
        return r - math.log(1 - math.exp(r))

    ratios = [log_odds(w / nw) - log_odds(lo / nl) for w, lo, nw, nl in zip(SUM_W, SUM_L, LEN_W, LEN_L)]
    nll = -sum(SUM_W) / sum(LEN_W)
    expected = nll + lam * mean([-logsigmoid(x) for x in ratios])
    assert run("orpo", lam=lam).loss.item() == pytest.approx(expected, rel=1e-6)


def test_cpo_with_zero_alpha_equals_plain_sigmoid_on_unnormalized_differences():
    beta = 0.2
    cpo = run("cpo", beta=beta, alpha=0.0).loss
    diff = (CHOSEN * CHOSEN_MASK).sum(-1) - (REJECTED * REJECTED_MASK).sum(-1)
    plain = -torch.nn.functional.logsigmoid(beta * diff).mean()
    torch.testing.assert_close(cpo, plain)


def test_simpo_with_zero_gamma_equals_reference_free_length_normalized_sigmoid():
    beta = 2.5
    simpo = run("simpo", beta=beta, gamma=0.0).loss
    r_w = (CHOSEN * CHOSEN_MASK).sum(-1) / CHOSEN_MASK.sum(-1)
    r_l = (REJECTED * REJECTED_MASK).sum(-1) / REJECTED_MASK.sum(-1)
    torch.testing.assert_close(simpo, -torch.nn.functional.logsigmoid(beta * (r_w - r_l)).mean())


def test_dpo_with_zero_reference_equals_cpo_without_nll():
    zeros = torch.zeros(2)
    dpo = get_loss("dpo", beta=0.1)(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, zeros, zeros).loss
    torch.testing.assert_close(dpo, run("cpo", beta=0.1, alpha=0.0).loss)


def test_orpo_stays_finite_for_probability_one_responses():
    ones = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = get_loss("orpo")(ones.clone().requires_grad_(True), mask, torch.tensor([[-1.0, -2.0]]), mask)
    assert torch.isfinite(out.loss)
