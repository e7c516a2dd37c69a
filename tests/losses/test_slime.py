"""SLIME's objective against PAPER.md, term by term, with expected values from the formula."""

import math

import pytest
import torch

from slimepo.losses import get_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pair_batch(chosen_rows, rejected_rows, pad=-7.0):
    """Right-padded [batch, tokens] log-probs and masks from ragged Python lists."""

    def build(rows):
        width = max(len(r) for r in rows)
        logps = torch.full((len(rows), width), pad)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            logps[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return logps, mask

    return (*build(chosen_rows), *build(rejected_rows))


CHOSEN = [[-0.5, -1.0, -1.5], [-0.2, -0.4]]
REJECTED = [[-2.0, -3.0], [-0.1, -6.0, -0.3, -2.0]]
PARAMS = dict(
    margin_weight=1.0, hard_margin=1.5, soft_margin=1.0, gate_slope=2.5,
    anchor_weight=0.1, stabilizer_weight=5e-4, stabilizer_shift=1.25, stabilizer_power=2.5,
)


def expected_slime(chosen, rejected, p, margin_mode="dual", reduction="batch_tokens"):
    """PAPER.md's objective evaluated with plain floats."""
    r_w = [sum(c) / len(c) for c in chosen]
    r_l = [sum(r) / len(r) for r in rejected]
    margins = []
    for w, lo in zip(r_w, r_l):
        delta = w - lo
        hinge = max(0.0, p["hard_margin"] - delta)
        gate = sigmoid(-p["gate_slope"] * (delta - p["soft_margin"]))
        if margin_mode == "dual":
            margins.append(p["margin_weight"] * hinge * gate)
        elif margin_mode == "hard":
            margins.append(p["margin_weight"] * hinge)
        else:
            k = p["gate_slope"]
            margins.append(p["margin_weight"] * softplus(-k * (delta - p["soft_margin"])) / k)
    phi = [[softplus(-t - p["stabilizer_shift"]) ** p["stabilizer_power"] for t in r] for r in rejected]
    if reduction == "batch_tokens":
        stab = sum(sum(x) for x in phi) / sum(len(x) for x in phi)
    else:
        stab = sum(sum(x) / len(x) for x in phi) / len(phi)
    margin = sum(margins) / len(margins)
    anchor = -p["anchor_weight"] * sum(r_w) / len(r_w)
    stabilizer = p["stabilizer_weight"] * stab
    return margin + anchor + stabilizer, margin, anchor, stabilizer


@pytest.mark.parametrize("margin_mode", ["dual", "hard", "soft"])
@pytest.mark.parametrize("reduction", ["batch_tokens", "sequence"])
def test_slime_matches_hand_computed_objective(margin_mode, reduction):
    loss_fn = get_loss("slime", margin_mode=margin_mode, stabilizer_reduction=reduction, **PARAMS)
    out = loss_fn(*pair_batch(CHOSEN, REJECTED))
    total, margin, anchor, stab = expected_slime(CHOSEN, REJECTED, PARAMS, margin_mode, reduction)
    assert out.loss.item() == pytest.approx(total, rel=1e-6)
    assert out.metrics["loss/margin"].item() == pytest.approx(margin, rel=1e-6)
    assert out.metrics["loss/anchor"].item() == pytest.approx(anchor, rel=1e-6)
    assert out.metrics["loss/stabilizer"].item() == pytest.approx(stab, rel=1e-6)


def test_sequence_reduction_differs_from_batch_tokens_for_unequal_lengths():
    a = get_loss("slime", stabilizer_reduction="batch_tokens")(*pair_batch(CHOSEN, REJECTED))
    b = get_loss("slime", stabilizer_reduction="sequence")(*pair_batch(CHOSEN, REJECTED))
    assert a.metrics["loss/stabilizer"].item() != pytest.approx(b.metrics["loss/stabilizer"].item(), rel=1e-3)


def test_slime_metrics_report_length_normalized_rewards_and_accuracy():
    out = get_loss("slime")(*pair_batch(CHOSEN, REJECTED))
    r_w = [-1.0, -0.3]
    r_l = [-2.5, -8.4 / 4]
    assert out.metrics["rewards/chosen"].item() == pytest.approx(sum(r_w) / 2)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(sum(r_l) / 2)
    assert out.metrics["margin"].item() == pytest.approx((r_w[0] - r_l[0] + r_w[1] - r_l[1]) / 2)
    assert out.metrics["accuracy"].item() == 1.0
    assert out.metrics["logps/chosen"].item() == pytest.approx(sum(r_w) / 2)


@pytest.mark.parametrize("delta_excess", [0.0, 0.3, 5.0])
def test_margin_term_and_its_gradient_are_exactly_zero_once_delta_reaches_hard_margin(delta_excess):
    # Δ = m_h + excess, including Δ == m_h exactly (representable values).
    chosen = torch.tensor([[-0.5, -0.5]], requires_grad=True)
    rejected = torch.tensor([[-2.0 - delta_excess, -2.0 - delta_excess]], requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss_fn = get_loss("slime", anchor_weight=0.0, stabilizer_weight=0.0, hard_margin=1.5)
    out = loss_fn(chosen, mask, rejected, mask)
    assert out.metrics["loss/margin"].item() == 0.0
    out.loss.backward()
    assert torch.equal(chosen.grad, torch.zeros_like(chosen))
    assert torch.equal(rejected.grad, torch.zeros_like(rejected))


def test_margin_term_pushes_when_delta_below_hard_margin():
    chosen = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    rejected = torch.tensor([[-1.5, -1.5]], requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = get_loss("slime", anchor_weight=0.0, stabilizer_weight=0.0)(chosen, mask, rejected, mask)
    out.loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_anchor_gradient_per_chosen_token_is_minus_weight_over_batch_times_length():
    lam_w = 0.37
    chosen, chosen_mask, rejected, rejected_mask = pair_batch([[-0.1, -0.2, -0.3], [-1.0, -2.0]], [[-4.0], [-5.0]])
    chosen.requires_grad_(True)
    loss_fn = get_loss("slime", anchor_weight=lam_w, margin_weight=0.0, stabilizer_weight=0.0)
    loss_fn(chosen, chosen_mask, rejected, rejected_mask).loss.backward()
    batch = 2
    expected = torch.tensor([[-lam_w / (batch * 3)] * 3, [-lam_w / (batch * 2)] * 2 + [0.0]])
    torch.testing.assert_close(chosen.grad, expected, rtol=1e-6, atol=0)


def test_stabilizer_gradient_is_negligible_for_likely_tokens_and_grows_as_tokens_collapse():
    token_logps = torch.tensor([[-0.01, -0.1, -0.5, -1.0, -2.0, -4.0, -8.0, -16.0]], requires_grad=True)
    mask = torch.ones_like(token_logps, dtype=torch.bool)
    chosen = torch.zeros(1, 1)
    loss_fn = get_loss("slime", margin_weight=0.0, anchor_weight=0.0, stabilizer_weight=1.0)
    loss_fn(chosen, torch.ones(1, 1, dtype=torch.bool), token_logps, mask).loss.backward()
    push = -token_logps.grad[0]  # gradient descent raises ℓ_t by this much per unit step
    assert (push > 0).all()
    assert (push[1:] > push[:-1]).all(), push
    # Far above -δ = -1.25 the push is tiny compared with a collapsed token's.
    assert push[0] / push[-1] < 1e-3


def _with_garbage(logps, mask, garbage):
    filled = logps.clone()
    if garbage == "random":
        filled[~mask] = torch.randn(int((~mask).sum()), generator=torch.Generator().manual_seed(3)) * 100
    else:
        filled[~mask] = garbage
    return filled


@pytest.mark.parametrize(
    "loss_name", ["slime", "slime-soft", "slime-hard", "simpo", "cpo", "orpo", "sft", "dpo", "dpo-norm", "ipo", "hinge", "rpo"]
)
def test_values_at_masked_positions_never_change_loss_or_gradient(loss_name):
    base = pair_batch(CHOSEN, REJECTED, pad=0.0)
    chosen_mask, rejected_mask = base[1], base[3]
    loss_fn = get_loss(loss_name)
    ref = {}
    if loss_fn.requires_reference:
        ref = dict(ref_chosen_logps=torch.tensor([-3.2, -0.9]), ref_rejected_logps=torch.tensor([-4.0, -8.0]))
    results = []
    for garbage in (0.0, -1e4, float("nan"), float("inf"), "random"):
        chosen = _with_garbage(base[0], chosen_mask, garbage).requires_grad_(True)
        rejected = _with_garbage(base[2], rejected_mask, garbage).requires_grad_(True)
        out = loss_fn(chosen, chosen_mask, rejected, rejected_mask, **ref)
        out.loss.backward()
        # A side the loss does not use (sft's rejected) gets no gradient at all.
        grad_c = chosen.grad if chosen.grad is not None else torch.zeros_like(chosen)
        grad_r = rejected.grad if rejected.grad is not None else torch.zeros_like(rejected)
        results.append((out.loss.detach(), grad_c[chosen_mask], grad_r[rejected_mask]))
        assert torch.equal(grad_c[~chosen_mask], torch.zeros_like(grad_c[~chosen_mask]))
        assert torch.equal(grad_r[~rejected_mask], torch.zeros_like(grad_r[~rejected_mask]))
    for loss, g_c, g_r in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert torch.equal(g_c, results[0][1])
        assert torch.equal(g_r, results[0][2])


def test_real_token_with_log_prob_exactly_zero_is_counted_by_the_stabilizer():
    # The authors' code drops tokens whose log-prob is 0; a probability-1 token is real.
    rejected = torch.tensor([[0.0, -3.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss_fn = get_loss("slime", margin_weight=0.0, anchor_weight=0.0, stabilizer_weight=1.0)
    out = loss_fn(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), rejected, mask)
    p, delta = 2.5, 1.25
    expected = (softplus(0.0 - delta) ** p + softplus(3.0 - delta) ** p) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # ... and the per-token average (r) counts it too.
    assert out.metrics["logps/rejected"].item() == pytest.approx(-1.5)


def test_soft_mode_has_no_hinge_and_hard_mode_has_no_gate():
    chosen = torch.tensor([[-0.1]])
    rejected = torch.tensor([[-3.1]])  # Δ = 3.0 > m_h
    mask = torch.ones(1, 1, dtype=torch.bool)
    common = dict(anchor_weight=0.0, stabilizer_weight=0.0)
    soft = get_loss("slime", margin_mode="soft", **common)(chosen, mask, rejected, mask).loss.item()
    assert soft == pytest.approx(softplus(-2.5 * (3.0 - 1.0)) / 2.5, rel=1e-6) and soft > 0
    hard_close = get_loss("slime", margin_mode="hard", **common)(torch.tensor([[-1.0]]), mask, torch.tensor([[-1.2]]), mask)
    assert hard_close.loss.item() == pytest.approx(1.5 - 0.2, rel=1e-6)  # no sigmoid factor


def test_presets_carry_the_authors_values_and_ablations():
    script = get_loss("slime")
    assert (script.anchor_weight, script.stabilizer_shift, script.hard_margin, script.soft_margin) == (0.1, 1.25, 1.5, 1.0)
    assert (script.gate_slope, script.stabilizer_power, script.stabilizer_weight, script.margin_weight) == (2.5, 2.5, 5e-4, 1.0)
    config = get_loss("slime-config")
    assert (config.anchor_weight, config.stabilizer_shift) == (0.8, 0.5)
    assert get_loss("slime-no-anchor").anchor_weight == 0.0
    assert get_loss("slime-no-stabilizer").stabilizer_weight == 0.0
    assert get_loss("slime-hard").margin_mode == "hard"
    assert get_loss("slime-soft").margin_mode == "soft"
    assert get_loss("slime-config", anchor_weight=0.3).anchor_weight == 0.3


def test_invalid_margin_mode_and_reduction_name_the_allowed_values():
    with pytest.raises(ValueError, match="margin_mode must be one of dual, hard, soft"):
        get_loss("slime", margin_mode="both")
    with pytest.raises(ValueError, match="stabilizer_reduction must be one of batch_tokens, sequence"):
        get_loss("slime", stabilizer_reduction="token")
    with pytest.raises(ValueError, match="anchor_weight must be a number >= 0"):
        get_loss("slime", anchor_weight=-1)


# Δ on both sides of both margins (m_s = 1.0, m_h = 1.5, k = 2.5, λ_m = 0.7), per mode:
# (Δ, dual L_margin, dual dL/dΔ, hard L_margin, hard dL/dΔ, soft L_margin, soft dL/dΔ). Written
# from PAPER.md with u = −k(Δ − m_s): dual = λ_m·max(0, m_h − Δ)·σ(u), its derivative
# −λ_m·σ(u)·[1 + k(m_h − Δ)(1 − σ(u))] below m_h; hard = λ_m·max(0, m_h − Δ), derivative −λ_m;
# soft = λ_m·softplus(u)/k, derivative −λ_m·σ(u). E.g. Δ = 1.0: σ(0) = 1/2, dual = 0.7·0.5·0.5.
MARGIN_CASES = [
    (-0.5, 1.367831682, -0.7624887774, 1.4, -0.7, 1.05650873, -0.6839158411),  # below m_s
    (0.6, 0.4605669045, -0.8214047999, 0.63, -0.7, 0.3677132725, -0.511741005),  # below m_s
    (1.0, 0.175, -0.56875, 0.35, -0.7, 0.1940812106, -0.35),  # at m_s
    (1.2, 0.07928354045, -0.3876554171, 0.21, -0.7, 0.1327415556, -0.2642784682),  # between m_s and m_h
    (1.5, 0.0, 0.0, 0.0, 0.0, 0.07054014278, -0.1558900972),  # at m_h
    (2.0, 0.0, 0.0, 0.0, 0.0, 0.0220891256, -0.05310072601),  # above m_h
]


@pytest.mark.parametrize("mode", ["dual", "hard", "soft"])
@pytest.mark.parametrize("case", MARGIN_CASES, ids=lambda c: f"delta={c[0]}")
def test_margin_term_value_and_gradient_on_both_sides_of_both_margins(case, mode):
    delta = case[0]
    value, slope = {"dual": case[1:3], "hard": case[3:5], "soft": case[5:7]}[mode]
    chosen = torch.tensor([[-0.25]], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([[-0.25 - delta]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss_fn = get_loss("slime", margin_mode=mode, margin_weight=0.7, anchor_weight=0.0, stabilizer_weight=0.0)
    out = loss_fn(chosen, mask, rejected, mask)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert chosen.grad.item() == pytest.approx(slope, rel=1e-5, abs=1e-9)  # dL/dℓ_w = dL/dΔ for one token
    assert rejected.grad.item() == pytest.approx(-slope, rel=1e-5, abs=1e-9)


def test_full_objective_on_a_batch_across_the_margins_by_hand():
    """Three one-token pairs, Δ = 0.6, 1.2, 2.0, with every term on and the defaults.

    Defaults: λ_m = 1, m_h = 1.5, m_s = 1, k = 2.5, λ_w = 0.1, λ_l = 5e-4, δ = 1.25, p = 2.5.
    Chosen ℓ = −0.5 each, so L_anchor = −0.1·(−0.5) = 0.05. Margins (λ_m = 1, the table above
    divided by 0.7): 0.6579527208, 0.1132622006, 0, mean 0.2570716405. Rejected ℓ = −1.1,
    −1.7, −2.5: φ = softplus(−ℓ − δ)^p = softplus(−0.15)^2.5, softplus(0.45)^2.5, softplus(1.25)^2.5
    = 0.3038462646, 0.8641036139, 2.7645443800, mean 1.3108314195, times 5e-4.
    """
    chosen = torch.full((3, 1), -0.5, dtype=torch.float64)
    rejected = torch.tensor([[-1.1], [-1.7], [-2.5]], dtype=torch.float64)
    mask = torch.ones(3, 1, dtype=torch.bool)
    out = get_loss("slime")(chosen, mask, rejected, mask)
    assert out.metrics["loss/margin"].item() == pytest.approx(0.2570716405, rel=1e-6)
    assert out.metrics["loss/anchor"].item() == pytest.approx(0.05, rel=1e-6)
    assert out.metrics["loss/stabilizer"].item() == pytest.approx(5e-4 * 1.3108314195, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.2570716405 + 0.05 + 5e-4 * 1.3108314195, rel=1e-6)
