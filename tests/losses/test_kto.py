"""KTO on unpaired examples: values and gradients by hand, the reference point, the registry, and mutants."""

import math
from pathlib import Path

import pytest
import torch

import slimepo.losses.kto as kto_module
from slimepo.losses import (
    LOSSES,
    UNPAIRED_LOSSES,
    KlTotals,
    KtoLoss,
    get_loss,
    is_unpaired,
    parse_loss_spec,
)
from slimepo.testing import failing_checks, module_from_source, mutated


def completion_batch(rows, pad=-9.0):
    """Right-padded float64 [batch, tokens] log-probs and the bool mask from ragged lists."""
    width = max(len(r) for r in rows)
    logps = torch.full((len(rows), width), pad, dtype=torch.float64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        logps[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = True
    return logps, mask


# Three examples of different lengths; β = 0.5, λ_D = 2, λ_U = 0.5 (unequal, so a swap shows).
#   0 desirable:   [-0.5, -1.5]       π = -2, |y| = 2, r(y) = -1;  π_ref = -3    -> log-ratio r_θ = +1
#   1 undesirable: [-1.0, -3.0, -2.0] π = -6, |y| = 3, r(y) = -2;  π_ref = -5    -> r_θ = -1
#   2 desirable:   [-2.0]             π = -2, |y| = 1, r(y) = -2;  π_ref = -1.5  -> r_θ = -0.5
COMPLETIONS = [[-0.5, -1.5], [-1.0, -3.0, -2.0], [-2.0]]
DESIRABLE = torch.tensor([True, False, True])
REF = torch.tensor([-3.0, -5.0, -1.5], dtype=torch.float64)
PARAMS = dict(beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)
# KL batch: mismatched log-ratios 2.5, 0.5, 0.0 -> mean 1.0 = z_0 (positive: the clamp does nothing).
KL = torch.tensor([2.5, 0.5, 0.0], dtype=torch.float64)
# z_0 = 1:  0: 2·(1 − σ(0.5·(1 − 1)))     = 2·(1 − 0.5)            = 1.0
#           1: 0.5·(1 − σ(0.5·(1 − (−1)))) = 0.5·(1 − σ(1))        = 0.5·0.2689414214 = 0.1344707107
#           2: 2·(1 − σ(0.5·(−0.5 − 1)))   = 2·(1 − σ(−0.75))      = 2·0.6791786992   = 1.3583573984
LOSSES_Z1 = (1.0, 0.13447071068499755, 1.358357398350786)
LOSS_Z1 = sum(LOSSES_Z1) / 3  # 0.8309427030: the mean over all 3 examples, both labels
# KL batch −3, −1, −2 -> mean −2, clamped to z_0 = 0:
#           0: 2·(1 − σ(0.5))  = 0.7550813376;  1: 0.5·(1 − σ(0.5)) = 0.1887703344;  2: 2·(1 − σ(−0.25)) = 1.1243530018
KL_NEGATIVE = torch.tensor([-3.0, -1.0, -2.0], dtype=torch.float64)
LOSS_Z0 = (0.7550813375962908 + 0.1887703343990727 + 1.1243530017715961) / 3  # 0.6894015579
# Gradient at z_0 = 1 w.r.t. each valid token of example i: (1/3)·∂L_i/∂r_θ, with h the sigmoid's argument:
#   desirable −λ_D·β·σ(h)(1 − σ(h)), undesirable +λ_U·β·σ(h)(1 − σ(h)):
#   0: −2·0.5·0.25/3 = −0.0833333333;  1: 0.5·0.5·0.1966119332/3 = 0.0163843278;  2: −2·0.5·0.2178949937/3 = −0.0726316646
GRADIENTS_Z1 = (-0.08333333333333333, 0.016384327770123486, -0.07263166458727134)


def run(cls=KtoLoss, kl=KL, requires_grad=False, **overrides):
    logps, mask = completion_batch(COMPLETIONS)
    logps.requires_grad_(requires_grad)
    kl = kl.clone().requires_grad_(requires_grad)
    out = cls(**{**PARAMS, **overrides})(logps, mask, DESIRABLE, REF, kl)
    return out, logps, mask, kl


# Each check takes the loss class, so the mutants below can be run through the same checks. The loss
# computes in fp32 (as every loss here): values agree to ~1e-7 relative.

def check_hand_values(cls):
    out, *_ = run(cls)
    assert out.loss.item() == pytest.approx(LOSS_Z1, rel=1e-6)
    metrics = {key: value.item() for key, value in out.metrics.items()}
    assert metrics["kl"] == pytest.approx(1.0) and metrics["reference_point"] == pytest.approx(1.0)
    assert metrics["loss/desirable"] == pytest.approx((LOSSES_Z1[0] + LOSSES_Z1[2]) / 2, rel=1e-6)
    assert metrics["loss/undesirable"] == pytest.approx(LOSSES_Z1[1], rel=1e-6)
    # rewards β·r_θ, without z_0 (as TRL): desirable mean of 0.5·1 and 0.5·(−0.5) = 0.125; undesirable −0.5
    assert metrics["rewards/desirable"] == pytest.approx(0.125) and metrics["rewards/undesirable"] == pytest.approx(-0.5)
    assert metrics["logps/desirable"] == pytest.approx(-1.5) and metrics["logps/undesirable"] == pytest.approx(-2.0)


def check_negative_kl_is_clamped_to_zero(cls):
    out, *_ = run(cls, kl=KL_NEGATIVE)
    assert out.loss.item() == pytest.approx(LOSS_Z0, rel=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(-2.0)  # the estimate as measured ...
    assert out.metrics["reference_point"].item() == 0.0  # ... and z_0 = max(0, it)


def check_gradients_and_a_detached_reference_point(cls):
    out, logps, mask, kl = run(cls, requires_grad=True)
    out.loss.backward()
    assert kl.grad is None or torch.count_nonzero(kl.grad) == 0  # z_0 is a constant to the gradient
    expected = torch.zeros_like(logps)
    for i, grad in enumerate(GRADIENTS_Z1):
        expected[i, mask[i]] = grad
    torch.testing.assert_close(logps.grad, expected, rtol=1e-5, atol=1e-8)


def check_the_kl_mask_and_an_empty_kl_batch(cls):
    logps, mask = completion_batch(COMPLETIONS)
    loss_fn = cls(**PARAMS)
    # Only the first two mismatched pairs count: mean(1.5, 0.5) = 1.0, as with KL.
    masked = loss_fn(logps, mask, DESIRABLE, REF, torch.tensor([1.5, 0.5, 100.0]), torch.tensor([True, True, False]))
    assert masked.loss.item() == pytest.approx(LOSS_Z1, rel=1e-6)
    # No mismatched pair at all (a batch of one example): no estimate, z_0 = 0.
    empty = loss_fn(logps, mask, DESIRABLE, REF, torch.tensor([7.0, 7.0, 7.0]), torch.zeros(3, dtype=torch.bool))
    assert empty.loss.item() == pytest.approx(LOSS_Z0, rel=1e-6)


def check_defaults_are_trls(cls):
    assert cls().hyperparameters() == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}


CHECKS = [check_hand_values, check_negative_kl_is_clamped_to_zero, check_gradients_and_a_detached_reference_point,
          check_the_kl_mask_and_an_empty_kl_batch, check_defaults_are_trls]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_kto_by_hand(check):
    check(KtoLoss)


def test_a_split_batch_sums_to_the_whole_when_it_divides_by_the_step_examples():
    logps, mask = completion_batch(COMPLETIONS)
    loss_fn = KtoLoss(**PARAMS)
    totals = KlTotals(KL.sum(), torch.tensor(3.0))  # the whole KL batch, as the trainer reduces it
    parts = [loss_fn(logps[rows], mask[rows], DESIRABLE[rows], REF[rows], kl_totals=totals, num_examples=3).loss
             for rows in (slice(0, 2), slice(2, 3))]
    assert (parts[0] + parts[1]).item() == pytest.approx(LOSS_Z1, rel=1e-6)


def test_a_label_absent_from_the_batch_reports_zero_for_its_means():
    logps, mask = completion_batch(COMPLETIONS)
    out = KtoLoss(**PARAMS)(logps, mask, torch.ones(3, dtype=torch.bool), REF, KL)
    assert out.metrics["loss/undesirable"].item() == 0.0 and out.metrics["rewards/undesirable"].item() == 0.0
    assert all(torch.isfinite(v) and v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_masked_positions_never_matter():
    logps, mask = completion_batch(COMPLETIONS, pad=float("nan"))
    assert KtoLoss(**PARAMS)(logps, mask, DESIRABLE, REF, KL).loss.item() == pytest.approx(LOSS_Z1, rel=1e-6)


def test_bf16_inputs_are_computed_in_fp32_and_extremes_stay_finite():
    logps, mask = completion_batch(COMPLETIONS)
    out = KtoLoss()(logps.bfloat16(), mask, DESIRABLE, REF.bfloat16(), KL.bfloat16())
    assert out.loss.dtype == torch.float32
    extreme = torch.full_like(logps, -1e4).requires_grad_(True)
    out = KtoLoss()(extreme, mask, DESIRABLE, REF, torch.tensor([1e5, -1e5, 3e4]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(extreme.grad).all()


def test_inputs_are_checked_with_named_errors():
    logps, mask = completion_batch(COMPLETIONS)
    loss_fn = KtoLoss()
    with pytest.raises(ValueError, match="needs reference log-probs"):
        loss_fn(logps, mask, DESIRABLE, None, KL)
    with pytest.raises(ValueError, match="desirable must be a bool tensor"):
        loss_fn(logps, mask, DESIRABLE.long(), REF, KL)
    with pytest.raises(ValueError, match="needs the KL batch"):
        loss_fn(logps, mask, DESIRABLE, REF)
    with pytest.raises(ValueError, match=r"ref_completion_logps must be \[batch\]"):
        loss_fn(logps, mask, DESIRABLE, REF[:2], KL)
    with pytest.raises(ValueError, match=r"completion_mask has no valid token in row\(s\) \[1\]"):
        loss_fn(logps, mask & torch.tensor([[True], [False], [True]]), DESIRABLE, REF, KL)


@pytest.mark.parametrize("parameter", ["beta", "desirable_weight", "undesirable_weight"])
@pytest.mark.parametrize("value", [0.0, -1.0, True])
def test_parameters_must_be_positive(parameter, value):
    with pytest.raises(ValueError, match=rf"^kto: {parameter} must be a number > 0"):
        get_loss("kto", **{parameter: value})


def test_the_registry_keeps_kto_apart_from_the_pair_losses():
    assert UNPAIRED_LOSSES == ("kto",) and "kto" not in LOSSES
    assert isinstance(get_loss("kto"), KtoLoss) and is_unpaired("kto") and not is_unpaired("dpo,sft=0.2")
    assert get_loss("kto", beta=0.2).beta == 0.2
    for spec in ("kto,sft", "dpo,kto", "kto=0.5", ["kto", {"sft": 0.1}]):
        with pytest.raises(ValueError, match="'kto' trains on unpaired examples .* stands alone"):
            parse_loss_spec(spec)
    with pytest.raises(ValueError, match="did you mean 'kto'"):
        get_loss("ktoo")


def test_the_paper_balance_of_desirable_and_undesirable_is_advised():
    assert KtoLoss().balance_warning(10, 10) is None  # ratio 1
    assert KtoLoss(desirable_weight=1.0, undesirable_weight=2.5).balance_warning(30, 10) is None  # 30/25 = 1.2
    assert "advises a value in [1, 4/3]" in KtoLoss().balance_warning(10, 30)
    assert "no undesirable example" in KtoLoss().balance_warning(5, 0)


# --- Mutants: each single change of the formula must fail one of CHECKS ------------------------

SOURCE = Path(kto_module.__file__)
#: (what it breaks, text in kto.py, replacement)
MUTANTS = [
    ("λ_U on desirable examples", "self.desirable_weight * (1 - torch.sigmoid", "self.undesirable_weight * (1 - torch.sigmoid"),
    ("λ_D on undesirable examples", "self.undesirable_weight * (1 - torch.sigmoid", "self.desirable_weight * (1 - torch.sigmoid"),
    ("labels swapped", "torch.where(desirable, desirable_loss, undesirable_loss)",
     "torch.where(desirable, undesirable_loss, desirable_loss)"),
    ("z_0 not clamped", "z0 = kl.clamp(min=0)", "z0 = kl"),
    ("z_0 clamped from above", "z0 = kl.clamp(min=0)", "z0 = kl.clamp(max=0)"),
    ("KL estimate not detached", "(total.float() / count.clamp(min=1)).detach()", "(total.float() / count.clamp(min=1))"),
    ("KL summed, not averaged", "(total.float() / count.clamp(min=1)).detach()", "total.float().detach()"),
    ("KL mask ignored", "torch.where(kl_mask, kl_logratios,", "torch.where(torch.ones_like(kl_mask), kl_logratios,"),
    ("desirable sign", "self.beta * (logratio - z0)", "self.beta * (z0 - logratio)"),
    ("undesirable sign", "self.beta * (z0 - logratio)", "self.beta * (logratio - z0)"),
    ("β dropped", "torch.sigmoid(self.beta * (logratio - z0))", "torch.sigmoid(logratio - z0)"),
    ("log-ratio per token", "logratio = completion.sum - ref_completion", "logratio = completion.mean - ref_completion"),
    ("reference left out", "logratio = completion.sum - ref_completion", "logratio = completion.sum"),
    ("sum over examples", "loss = completion.pair_mean(per_example)", "loss = per_example.sum()"),
    ("rewards relative to z_0", "self.beta * logratio, {", "self.beta * (logratio - z0), {"),
    ("default β", 'param(0.1, "β', 'param(0.2, "β'),
    ("default λ_D", 'param(1.0, "λ_D', 'param(1.33, "λ_D'),
    ("default λ_U", 'param(1.0, "λ_U', 'param(0.75, "λ_U'),
]


def test_the_checks_pass_on_a_fresh_copy_of_the_unmutated_source():
    cls = module_from_source(SOURCE.read_text(encoding="utf-8"), "slimepo_kto_copy").KtoLoss
    for check in CHECKS:
        check(cls)


@pytest.mark.parametrize(("label", "old", "new"), MUTANTS, ids=[m[0] for m in MUTANTS])
def test_every_mutant_of_kto_fails_a_check(label, old, new):
    source = mutated(SOURCE.read_text(encoding="utf-8"), old, new, SOURCE)
    cls = module_from_source(source, "slimepo_kto_mutant").KtoLoss
    assert failing_checks(CHECKS, cls), f"mutant '{label}' passes every check"


def test_hand_numbers_follow_from_the_formula_in_plain_floats():
    # The constants above, recomputed from the paper's formula with math only.
    sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    ratios, labels = (1.0, -1.0, -0.5), (True, False, True)
    for z0, expected in ((1.0, LOSS_Z1), (0.0, LOSS_Z0)):
        values = [2.0 * (1 - sigma(0.5 * (r - z0))) if d else 0.5 * (1 - sigma(0.5 * (z0 - r))) for r, d in zip(ratios, labels)]
        assert sum(values) / 3 == pytest.approx(expected, rel=1e-12)
