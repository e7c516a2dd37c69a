"""Per-pair weights: every batch mean becomes Σ_i w_i·v_i / Σ_i w_i (pairs) or
Σ_i w_i·Σ_t v_it / Σ_i w_i·|y_i| (tokens), so a weight of 2 is the pair twice and 0 no pair."""

import math

import pytest
import torch

from slimepo.losses import LOSSES, SequenceStats, StepTotals, get_loss

# Two pairs (as in test_compositions.py), weights w = (3, 1):
#   chosen:   [-0.5, -1.5] (π = -2, |y| = 2, r = -1)     [-2.0] (π = -2, |y| = 1, r = -2)
#   rejected: [-1, -3, -2] (π = -6, |y| = 3, r = -2)     [-4, -2] (π = -6, |y| = 2, r = -3)
# reference sums: chosen -3, -1; rejected -3, -5.
CHOSEN = torch.tensor([[-0.5, -1.5], [-2.0, 7.0]])
CHOSEN_MASK = torch.tensor([[True, True], [True, False]])
REJECTED = torch.tensor([[-1.0, -3.0, -2.0], [-4.0, -2.0, 7.0]])
REJECTED_MASK = torch.tensor([[True, True, True], [True, True, False]])
REF = dict(ref_chosen_logps=torch.tensor([-3.0, -1.0]), ref_rejected_logps=torch.tensor([-3.0, -5.0]))
WEIGHTS = torch.tensor([3.0, 1.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def phi(logp: float) -> float:
    """SLIME's stabilizer with its defaults δ = 1.25, p = 2.5."""
    return softplus(-logp - 1.25) ** 2.5


def run(spec, weights=WEIGHTS, **params):
    loss_fn = get_loss(spec, **params)
    ref = REF if loss_fn.requires_reference else {}
    return loss_fn(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, **ref, weights=weights)


def test_sft_sequence_is_the_weighted_mean_of_each_response_s_nll():
    # -(3·(-1) + 1·(-2)) / (3 + 1) = 5/4 (unweighted: 3/2).
    assert run("sft").loss.item() == pytest.approx(1.25, rel=1e-7)


def test_sft_batch_tokens_weighs_each_token_by_its_pair_s_weight():
    # -(3·(-2) + 1·(-2)) / (3·2 + 1·1) = 8/7 (unweighted: 4/3; weighted sum over plain count: 8/3).
    assert run("sft", reduction="batch_tokens").loss.item() == pytest.approx(8 / 7, rel=1e-7)


def test_dpo_is_the_weighted_mean_of_the_per_pair_losses():
    # β = 0.1: h = 0.1·((-2+3) - (-6+3)) = 0.4 and 0.1·((-2+1) - (-6+5)) = 0;
    # (3·log(1 + e^-0.4) + log 2) / 4 = (3·0.5130152524 + 0.6931471806) / 4 = 0.5580482344.
    out = run("dpo")
    assert out.loss.item() == pytest.approx(0.5580482344399508, rel=1e-6)
    assert out.metrics["loss/sigmoid"].item() == pytest.approx(0.5580482344399508, rel=1e-6)
    # rewards stay the plain mean over pairs: β(π - π_ref) = 0.1, -0.1 -> 0; rejected -0.3, -0.1 -> -0.2.
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-7)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.2, rel=1e-6)


def test_slime_weighs_pairs_in_margin_and_anchor_and_tokens_in_the_stabilizer():
    out = run("slime")
    # Δ = -1 - (-2) = 1 and -2 - (-3) = 1: hinge 1.5 - 1 = 0.5, gate σ(-2.5·(1 - 1)) = 0.5, 0.25 for both.
    assert out.metrics["loss/margin"].item() == pytest.approx(0.25, rel=1e-6)
    # -λ_w · (3·(-1) + 1·(-2)) / 4 = -0.1 · (-5/4) = 0.125.
    assert out.metrics["loss/anchor"].item() == pytest.approx(0.125, rel=1e-6)
    # (3·(φ(-1) + φ(-3) + φ(-2)) + 1·(φ(-4) + φ(-2))) / (3·3 + 1·2) = 3.1506170 (unweighted /5: 4.2621257).
    stabilizer = (3 * (phi(-1) + phi(-3) + phi(-2)) + phi(-4) + phi(-2)) / 11
    assert stabilizer == pytest.approx(3.150616994569326)
    assert out.metrics["loss/stabilizer"].item() == pytest.approx(5e-4 * stabilizer, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.25 + 0.125 + 5e-4 * stabilizer, rel=1e-6)
    # The sequence reduction is a mean over pairs: (3·(φ(-1)+φ(-3)+φ(-2))/3 + (φ(-4)+φ(-2))/2) / 4.
    sequence = (3 * (phi(-1) + phi(-3) + phi(-2)) / 3 + (phi(-4) + phi(-2)) / 2) / 4
    out = run("slime", stabilizer_reduction="sequence")
    assert out.metrics["loss/stabilizer"].item() == pytest.approx(5e-4 * sequence, rel=1e-6)


def test_metrics_other_than_the_loss_terms_stay_plain_means_over_pairs():
    weighted, plain = run("slime"), run("slime", weights=None)
    for key in ("rewards/chosen", "rewards/rejected", "margin", "accuracy", "logps/chosen", "logps/rejected"):
        assert torch.equal(weighted.metrics[key], plain.metrics[key]), key


@pytest.mark.parametrize(("spec", "params"), [
    ("slime", {}), ("slime", {"stabilizer_reduction": "sequence"}), ("dpo", {}), ("simpo", {}), ("sft", {}),
    ("sft", {"reduction": "batch_tokens"}), ("cpo", {}), ("orpo", {}), ("dpo,sft=0.2", {"sft": {"reduction": "batch_tokens"}}),
    ("rpo", {}),
])
def test_weights_all_one_give_exactly_the_unweighted_loss_and_gradient(spec, params):
    chosen, chosen_mask, rejected, rejected_mask, (ref_c, ref_r) = random_step()
    loss_fn = get_loss(spec, **params)
    ref = dict(ref_chosen_logps=ref_c, ref_rejected_logps=ref_r) if loss_fn.requires_reference else {}
    results = []
    for weights in (None, torch.ones(7)):
        out = loss_fn(chosen, chosen_mask, rejected, rejected_mask, **ref, weights=weights)
        results.append((out.loss, *torch.autograd.grad(out.loss, (chosen, rejected), allow_unused=True), out.metrics))
    (plain, *plain_grads, plain_metrics), (ones, *ones_grads, ones_metrics) = results
    assert torch.equal(ones, plain)
    for a, b in zip(ones_grads, plain_grads):
        assert (a is None and b is None) or torch.equal(a, b)
    assert all(torch.equal(ones_metrics[k], plain_metrics[k]) for k in plain_metrics)


def random_step(pairs=7, seed=0):
    """``pairs`` pairs of 1 to 9 chosen and 1 to 12 rejected tokens, as float32 leaves."""
    g = torch.Generator().manual_seed(seed)
    chosen = (-torch.rand(pairs, 9, generator=g) * 3).requires_grad_(True)
    rejected = (-torch.rand(pairs, 12, generator=g) * 5).requires_grad_(True)
    chosen_mask = torch.arange(9) < torch.randint(1, 10, (pairs,), generator=g)[:, None]
    rejected_mask = torch.arange(12) < torch.randint(1, 13, (pairs,), generator=g)[:, None]
    ref = (-torch.rand(pairs, generator=g) * 20, -torch.rand(pairs, generator=g) * 30)
    return chosen, chosen_mask, rejected, rejected_mask, ref


def weighted_and_repeated(name, weights, repeats):
    """(loss, grads) of ``name`` on 7 random pairs with ``weights``, and on the batch where pair i
    appears ``repeats[i]`` times (indexing the same leaves, so each copy's gradient adds up)."""
    chosen, chosen_mask, rejected, rejected_mask, (ref_c, ref_r) = random_step()
    loss_fn = get_loss(name)
    results = []
    for rows, w in ((torch.arange(7), weights), (torch.arange(7).repeat_interleave(repeats), None)):
        ref = dict(ref_chosen_logps=ref_c[rows], ref_rejected_logps=ref_r[rows]) if loss_fn.requires_reference else {}
        loss = loss_fn(chosen[rows], chosen_mask[rows], rejected[rows], rejected_mask[rows], **ref, weights=w).loss
        grads = torch.autograd.grad(loss, (chosen, rejected), allow_unused=True)
        results.append((loss, [torch.zeros_like(x) if g is None else g for g, x in zip(grads, (chosen, rejected))]))
    return results


def assert_same(results):
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=0)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", LOSSES)
def test_a_weight_of_2_is_the_same_as_the_pair_twice(name):
    # Pair 3 of weight 2 == the batch 0 1 2 3 3 4 5 6 (8 pairs): same loss, same gradient.
    weights = torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0])
    assert_same(weighted_and_repeated(name, weights, torch.tensor([1, 1, 1, 2, 1, 1, 1])))


@pytest.mark.parametrize("name", LOSSES)
def test_a_weight_of_0_is_the_same_as_no_pair(name):
    # Pair 5 of weight 0 == the batch 0 1 2 3 4 6 (its gradient is exactly 0 either way).
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    results = weighted_and_repeated(name, weights, torch.tensor([1, 1, 1, 1, 1, 0, 1]))
    assert_same(results)
    assert not results[0][1][0][5].any() and not results[0][1][1][5].any()


@pytest.mark.parametrize("name", LOSSES)
def test_integer_weights_are_the_same_as_repeating_each_pair_that_many_times(name):
    repeats = torch.tensor([2, 1, 0, 3, 1, 1, 2])
    assert_same(weighted_and_repeated(name, repeats.float(), repeats))


@pytest.mark.parametrize(("spec", "params"), [
    ("slime", {}), ("slime,sft=0.3", {"sft": {"reduction": "batch_tokens"}}), ("dpo", {}), ("cpo", {}), ("orpo", {}),
    ("sft", {"reduction": "batch_tokens"}), ("rpo", {}), ("ipo", {}),
])
def test_weighted_micro_batches_of_4_and_3_sum_to_the_unsplit_weighted_step(spec, params):
    loss_fn = get_loss(spec, **params)
    chosen, chosen_mask, rejected, rejected_mask, (ref_c, ref_r) = random_step()
    weights = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 1.5, 1.0])
    ref = lambda rows: dict(ref_chosen_logps=ref_c[rows], ref_rejected_logps=ref_r[rows]) if loss_fn.requires_reference else {}  # noqa: E731
    whole = loss_fn(chosen, chosen_mask, rejected, rejected_mask, **ref(slice(None)), weights=weights).loss
    whole_grads = torch.autograd.grad(whole, (chosen, rejected), allow_unused=True)
    # The step's weighted counts: Σ w_i = 9, Σ w_i·|y_w,i|, Σ w_i·|y_l,i|.
    totals = StepTotals(pairs=weights.sum(), chosen_tokens=(weights * chosen_mask.sum(-1)).sum(),
                        rejected_tokens=(weights * rejected_mask.sum(-1)).sum())
    parts = [
        loss_fn(chosen[rows], chosen_mask[rows], rejected[rows], rejected_mask[rows], **ref(rows),
                step_totals=totals, weights=weights[rows]).loss
        for rows in (slice(0, 4), slice(4, 7))
    ]
    split_grads = torch.autograd.grad(parts[0] + parts[1], (chosen, rejected), allow_unused=True)
    torch.testing.assert_close(parts[0] + parts[1], whole, rtol=1e-5, atol=0)
    for a, b in zip(split_grads, whole_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_a_batch_whose_weights_are_all_0_has_loss_0_and_no_gradient():
    chosen, chosen_mask, rejected, rejected_mask, _ = random_step()
    for spec in ("slime", "cpo", "sft"):
        loss = get_loss(spec)(chosen, chosen_mask, rejected, rejected_mask, weights=torch.zeros(7)).loss
        assert loss.item() == 0.0
        grads = torch.autograd.grad(loss, (chosen, rejected), allow_unused=True)
        assert all(g is None or (torch.isfinite(g).all() and not g.any()) for g in grads)


@pytest.mark.parametrize(("weights", "message"), [
    (torch.tensor([1.0, -1.0]), r"weights must be finite and >= 0; row\(s\) \[1\]"),
    (torch.tensor([float("nan"), 1.0]), r"row\(s\) \[0\]"),
    (torch.tensor([1.0, float("inf")]), r"row\(s\) \[1\]"),
    (torch.tensor([1.0, 1.0, 1.0]), r"weights must be \[batch\]=\(2,\)"),
])
def test_weights_that_are_negative_not_finite_or_of_another_shape_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        run("slime", weights=weights)


# Mutants of the weighted means: each must make a test above fail. Each is (method, replacement).
MUTANTS = {
    "pair mean divides by the pair count, not Σw": (
        "pair_mean", lambda self, v: v.sum() / self.num_pairs if self.weights is None else (self.weights * v).sum() / v.shape[0]),
    "pair mean ignores the weights in its sum": ("pair_mean", lambda self, v: v.sum() / self.num_pairs),
    "token mean ignores the weights": ("token_mean", lambda self, t: t.sum() / self.mask.sum()),
    "token mean weighs the sum, not the count": (
        "token_mean", lambda self, t: (t if self.weights is None else self.weights[:, None] * t).sum() / self.mask.sum()),
    "token mean divides by Σw, not Σw·|y|": (
        "token_mean", lambda self, t: (t if self.weights is None else self.weights[:, None] * t).sum() / self.num_pairs),
}


HAND_CHECKS = (test_sft_sequence_is_the_weighted_mean_of_each_response_s_nll,
               test_sft_batch_tokens_weighs_each_token_by_its_pair_s_weight,
               test_dpo_is_the_weighted_mean_of_the_per_pair_losses,
               test_slime_weighs_pairs_in_margin_and_anchor_and_tokens_in_the_stabilizer)


@pytest.mark.parametrize("mutant", MUTANTS)
def test_each_mutant_of_the_weighted_means_fails_a_hand_value_or_repeated_pair_check(mutant, monkeypatch):
    method, replacement = MUTANTS[mutant]
    monkeypatch.setattr(SequenceStats, method, replacement)
    checks = [(check.__name__, check) for check in HAND_CHECKS] + [
        (f"weight 2 = twice, {name}", lambda name=name: test_a_weight_of_2_is_the_same_as_the_pair_twice(name))
        for name in ("slime", "sft", "cpo", "dpo")
    ]
    failed = []
    for label, check in checks:
        try:
            check()
        except AssertionError:
            failed.append(label)
    assert failed, f"mutant '{mutant}' passes every check"
