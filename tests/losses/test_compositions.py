"""Length-normalized DPO, the NLL term, weighted compositions, their spec and presets, by hand."""

import math
import warnings

import pytest
import torch

from slimepo.losses import LOSSES, CompositeLoss, StepTotals, get_loss, parse_loss_spec


def pair_batch(chosen_rows, rejected_rows, pad=-9.0):
    """Right-padded float64 [batch, tokens] log-probs and bool masks from ragged lists."""

    def build(rows):
        width = max(len(r) for r in rows)
        logps = torch.full((len(rows), width), pad, dtype=torch.float64)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            logps[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
            mask[i, : len(row)] = True
        return logps, mask

    return (*build(chosen_rows), *build(rejected_rows))


# Two pairs whose lengths differ on each side.
#   chosen:   [-0.5, -1.5] (π = -2, |y| = 2, r = -1)     [-2.0] (π = -2, |y| = 1, r = -2)
#   rejected: [-1, -3, -2] (π = -6, |y| = 3, r = -2)     [-4, -2] (π = -6, |y| = 2, r = -3)
# reference sums: chosen -3, -1 (per token -1.5, -1); rejected -3, -5 (per token -1, -2.5).
CHOSEN = [[-0.5, -1.5], [-2.0]]
REJECTED = [[-1.0, -3.0, -2.0], [-4.0, -2.0]]
REF_CHOSEN = torch.tensor([-3.0, -1.0])
REF_REJECTED = torch.tensor([-3.0, -5.0])
REF = dict(ref_chosen_logps=REF_CHOSEN, ref_rejected_logps=REF_REJECTED)

# dpo-norm, per-token log-ratios: pair 1: chosen -1 - (-1.5) = 0.5, rejected -2 - (-1) = -1, gap 1.5;
# pair 2: chosen -2 - (-1) = -1, rejected -3 - (-2.5) = -0.5, gap -0.5. With β = 5: h = 7.5, -2.5;
# -log σ(7.5) = log(1 + e^-7.5) = 0.000552931475, -log σ(-2.5) = log(1 + e^2.5) = 2.578889734.
DPO_NORM_PAIRS = (0.0005529314753607964, 2.5788897342925496)
DPO_NORM = sum(DPO_NORM_PAIRS) / 2  # 1.2897213329
# sft: sequence = -mean(-1, -2) = 1.5; batch_tokens = -(-2 - 2) / 3 = 4/3.
NLL_SEQUENCE, NLL_TOKENS = 1.5, 4 / 3
# DPO (β = 0.1) on sums: pair 1: (-2 + 3) - (-6 + 3) = 4, h = 0.4; pair 2: (-2 + 1) - (-6 + 5) = 0, h = 0.
# -log σ(0.4) = log(1 + e^-0.4) = 0.5130152524, -log σ(0) = log 2 = 0.6931471806.
DPO = (0.5130152523999526 + math.log(2)) / 2  # 0.6030812165


def run(spec, with_ref=True, **params):
    inputs = pair_batch(CHOSEN, REJECTED)
    return get_loss(spec, **params)(*inputs, **(REF if with_ref else {}))


def test_dpo_norm_divides_policy_and_reference_by_length_with_tulu_beta_5():
    out = run("dpo-norm")
    assert out.loss.item() == pytest.approx(DPO_NORM, rel=1e-6)
    assert out.metrics["loss/sigmoid"].item() == pytest.approx(DPO_NORM, rel=1e-6)
    # rewards β·(per-token log-ratio): chosen 5·(0.5, -1), rejected 5·(-1, -0.5); margins 7.5, -2.5.
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-1.25, rel=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-3.75, rel=1e-6)
    assert out.metrics["margin"].item() == pytest.approx(2.5, rel=1e-6)
    assert out.metrics["accuracy"].item() == 0.5


def test_dpo_norm_with_label_smoothing_and_another_beta():
    # ε = 0.2: per pair 0.8·(-log σ(h)) + 0.2·(-log σ(-h)); h = 7.5 → 0.8·0.000552931 + 0.2·7.500552931,
    # h = -2.5 → 0.8·2.578889734 + 0.2·0.078889734; mean 1.789721333.
    assert run("dpo-norm", label_smoothing=0.2).loss.item() == pytest.approx(1.7897213328839552, rel=1e-6)
    # β = 1: h = 1.5, -0.5: log(1 + e^-1.5) = 0.2014132779, log(1 + e^0.5) = 0.9740769842.
    assert run("dpo-norm", beta=1.0).loss.item() == pytest.approx((0.2014132779827524 + 0.9740769841801067) / 2, rel=1e-6)


def test_dpo_norm_gradient_per_token_is_beta_over_length():
    chosen, chosen_mask, rejected, rejected_mask = pair_batch(CHOSEN, REJECTED)
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    get_loss("dpo-norm")(chosen, chosen_mask, rejected, rejected_mask, **REF).loss.backward()
    # dL/dℓ = -(1/B)·σ(-h)·(±β/|y|), + for chosen tokens: chosen pair 1: -(1/2)·σ(-7.5)·5/2, pair 2:
    # -(1/2)·σ(2.5)·5/1; rejected pair 1: +(1/2)·σ(-7.5)·5/3, pair 2: +(1/2)·σ(2.5)·5/2.
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert chosen.grad[0, :2].tolist() == pytest.approx([-1.25 * sig(-7.5)] * 2, rel=1e-5)
    assert chosen.grad[1, 0].item() == pytest.approx(-2.5 * sig(2.5), rel=1e-5)
    assert rejected.grad[1, :2].tolist() == pytest.approx([1.25 * sig(2.5)] * 2, rel=1e-5)
    assert rejected.grad[0, :3].tolist() == pytest.approx([(5 / 6) * sig(-7.5)] * 3, rel=1e-5)


@pytest.mark.parametrize(("reduction", "expected"), [("sequence", NLL_SEQUENCE), ("batch_tokens", NLL_TOKENS)])
def test_sft_reductions_mean_per_response_or_per_token(reduction, expected):
    out = run("sft", with_ref=False, reduction=reduction)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["loss/nll"].item() == pytest.approx(expected, rel=1e-6)


def test_sft_gradient_weighs_each_response_or_each_token_the_same():
    grads = {}
    for reduction in ("sequence", "batch_tokens"):
        chosen, chosen_mask, rejected, rejected_mask = pair_batch(CHOSEN, REJECTED)
        chosen.requires_grad_(True)
        get_loss("sft", reduction=reduction)(chosen, chosen_mask, rejected, rejected_mask).loss.backward()
        grads[reduction] = chosen.grad[chosen_mask].tolist()
    # sequence: -1/(B·|y_w|) = -1/4 for pair 1's two tokens, -1/2 for pair 2's one; batch_tokens: -1/3 each.
    assert grads["sequence"] == pytest.approx([-0.25, -0.25, -0.5], rel=1e-6)
    assert grads["batch_tokens"] == pytest.approx([-1 / 3] * 3, rel=1e-6)


def test_composition_is_the_weighted_sum_and_reports_each_term():
    out = run("dpo-norm,sft=0.5")
    assert out.loss.item() == pytest.approx(DPO_NORM + 0.5 * NLL_SEQUENCE, rel=1e-6)
    assert out.metrics["loss/total"].item() == pytest.approx(DPO_NORM + 0.5 * NLL_SEQUENCE, rel=1e-6)
    assert out.metrics["loss/dpo-norm/sigmoid"].item() == pytest.approx(DPO_NORM, rel=1e-6)
    assert out.metrics["loss/sft/nll"].item() == pytest.approx(NLL_SEQUENCE, rel=1e-6)  # unweighted
    # Rewards, margin and accuracy are the first term's: dpo-norm's.
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-1.25, rel=1e-6)
    assert out.metrics["margin"].item() == pytest.approx(2.5, rel=1e-6)
    assert out.metrics["accuracy"].item() == 0.5


def test_rewards_come_from_the_first_term_in_the_order_written():
    out = run("sft=0.5,dpo-norm")
    assert out.loss.item() == pytest.approx(DPO_NORM + 0.5 * NLL_SEQUENCE, rel=1e-6)
    # sft's rewards are r(y): chosen -1, -2; rejected -2, -3: margins 1, 1.
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-1.5, rel=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-2.5, rel=1e-6)
    assert out.metrics["accuracy"].item() == 1.0


def test_rpo_is_dpo_plus_one_times_the_per_response_nll():
    out = run("rpo")
    assert out.loss.item() == pytest.approx(DPO + NLL_SEQUENCE, rel=1e-6)
    assert out.metrics["loss/dpo/sigmoid"].item() == pytest.approx(DPO, rel=1e-6)
    assert out.metrics["loss/sft/nll"].item() == pytest.approx(NLL_SEQUENCE, rel=1e-6)
    # DPO's rewards β(π - π_ref): chosen 0.1·(1, -1), rejected 0.1·(-3, -1).
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-7)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.2, rel=1e-6)


def test_rpo_as_trl_computes_it_takes_the_token_mean_nll():
    # TRL's loss_type=["sigmoid", "sft"]: cross-entropy over all chosen tokens of the batch.
    assert run("rpo", sft={"reduction": "batch_tokens"}).loss.item() == pytest.approx(DPO + NLL_TOKENS, rel=1e-6)
    assert run("dpo,sft=0.5").loss.item() == pytest.approx(DPO + 0.5 * NLL_SEQUENCE, rel=1e-6)


def test_rpo_gradient_adds_the_nll_push_to_dpo_s():
    chosen, chosen_mask, rejected, rejected_mask = pair_batch(CHOSEN, REJECTED)
    chosen.requires_grad_(True)
    get_loss("rpo")(chosen, chosen_mask, rejected, rejected_mask, **REF).loss.backward()
    # DPO: -(1/B)·σ(-h)·β = -0.05·σ(-0.4) = -0.0200656170 (pair 1), -0.05·0.5 = -0.025 (pair 2);
    # NLL: -1/(B·|y_w|) = -0.25 (pair 1), -0.5 (pair 2).
    assert chosen.grad[chosen_mask].tolist() == pytest.approx([-0.2700656169943774] * 2 + [-0.525], rel=1e-5)


def test_composition_needs_a_reference_when_any_term_does():
    assert get_loss("rpo").requires_reference and get_loss("slime,dpo=0.5").requires_reference
    assert not get_loss("slime,sft=0.3").requires_reference
    with pytest.raises(ValueError, match=r"loss 'dpo,sft=0.5' needs reference log-probs"):
        run("dpo,sft=0.5", with_ref=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("slime,sft=0.3")
    assert any("'slime,sft=0.3' is reference-free" in str(w.message) for w in caught)


def random_step(pairs=7, seed=0):
    """``pairs`` pairs of 1 to 9 chosen and 1 to 12 rejected tokens, as float32 leaves."""
    g = torch.Generator().manual_seed(seed)
    chosen = (-torch.rand(pairs, 9, generator=g) * 3).requires_grad_(True)
    rejected = (-torch.rand(pairs, 12, generator=g) * 5).requires_grad_(True)
    chosen_lengths = torch.randint(1, 10, (pairs,), generator=g)
    rejected_lengths = torch.randint(1, 13, (pairs,), generator=g)
    chosen_mask = torch.arange(9) < chosen_lengths[:, None]
    rejected_mask = torch.arange(12) < rejected_lengths[:, None]
    ref = (-torch.rand(pairs, generator=g) * 20, -torch.rand(pairs, generator=g) * 30)
    return chosen, chosen_mask, rejected, rejected_mask, ref


@pytest.mark.parametrize(("spec", "params"), [
    ("slime,sft=0.3", {}),
    ("dpo,sft=0.2", {}),
    ("dpo,sft=0.2", {"sft": {"reduction": "batch_tokens"}}),
    ("slime,sft=0.3", {"sft": {"reduction": "batch_tokens"}}),
    ("rpo", {}),
    ("dpo-norm", {}),
])
def test_micro_batches_of_4_and_3_sum_to_the_unsplit_step_loss_and_gradient(spec, params):
    loss_fn = get_loss(spec, **params)
    chosen, chosen_mask, rejected, rejected_mask, (ref_c, ref_r) = random_step()
    ref = lambda rows: dict(ref_chosen_logps=ref_c[rows], ref_rejected_logps=ref_r[rows]) if loss_fn.requires_reference else {}  # noqa: E731
    whole = loss_fn(chosen, chosen_mask, rejected, rejected_mask, **ref(slice(None))).loss
    whole_grads = torch.autograd.grad(whole, (chosen, rejected), allow_unused=True)
    totals = StepTotals(pairs=7, chosen_tokens=chosen_mask.sum().float(), rejected_tokens=rejected_mask.sum().float())
    parts = [
        loss_fn(chosen[rows], chosen_mask[rows], rejected[rows], rejected_mask[rows], **ref(rows), step_totals=totals).loss
        for rows in (slice(0, 4), slice(4, 7))
    ]
    split = parts[0] + parts[1]
    split_grads = torch.autograd.grad(split, (chosen, rejected), allow_unused=True)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=0)
    for a, b in zip(split_grads, whole_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_split_step_of_a_token_mean_nll_divides_by_the_step_s_chosen_tokens():
    # Micro-batch 1 holds pair 1 (2 tokens, Σℓ = -2), micro-batch 2 pair 2 (1 token, Σℓ = -2); the step has 3.
    chosen, chosen_mask, rejected, rejected_mask = pair_batch(CHOSEN, REJECTED)
    loss_fn = get_loss("dpo-norm,sft=0.5", sft={"reduction": "batch_tokens"})
    totals = StepTotals(pairs=2, chosen_tokens=3.0, rejected_tokens=5.0)
    parts = [loss_fn(chosen[i:i + 1], chosen_mask[i:i + 1], rejected[i:i + 1], rejected_mask[i:i + 1],
                     REF_CHOSEN[i:i + 1], REF_REJECTED[i:i + 1], step_totals=totals).loss.item() for i in (0, 1)]
    # pair 1: 0.000552931/2 + 0.5·2/3; pair 2: 2.578889734/2 + 0.5·2/3.
    assert parts[0] == pytest.approx(DPO_NORM_PAIRS[0] / 2 + 1 / 3, rel=1e-6)
    assert parts[1] == pytest.approx(DPO_NORM_PAIRS[1] / 2 + 1 / 3, rel=1e-6)


@pytest.mark.parametrize(("spec", "terms"), [
    ("dpo", [("dpo", 1.0)]),
    ("dpo,sft=0.2", [("dpo", 1.0), ("sft", 0.2)]),
    ("dpo=1, sft = 0.2", [("dpo", 1.0), ("sft", 0.2)]),
    ("slime-no-anchor=0.5,sft", [("slime-no-anchor", 0.5), ("sft", 1.0)]),
    ("sft=2e-1,dpo-norm=3", [("sft", 0.2), ("dpo-norm", 3.0)]),
    (["dpo", {"sft": 0.2}], [("dpo", 1.0), ("sft", 0.2)]),
    (["dpo", "sft=0.2"], [("dpo", 1.0), ("sft", 0.2)]),
    ({"slime": 1, "sft": 0.25}, [("slime", 1.0), ("sft", 0.25)]),
    ("rpo", [("rpo", 1.0)]),
])
def test_spec_parses_names_and_weights_from_cli_and_yaml(spec, terms):
    assert parse_loss_spec(spec) == terms


@pytest.mark.parametrize(("spec", "message"), [
    ("", r"loss spec is empty"),
    ([], r"loss spec is empty"),
    ("dpo,", r"loss spec 'dpo,': a term has no loss name"),
    ("=0.5", r"a term has no loss name"),
    ("dpo,dpo=2", r"'dpo' is given twice"),
    ("dpo,sft=0", r"weight of 'sft' must be a finite number > 0, got 0.0"),
    ("dpo,sft=-0.1", r"weight of 'sft' must be a finite number > 0, got -0.1"),
    ("dpo,sft=inf", r"weight of 'sft' must be a finite number > 0, got inf"),
    ("dpo,sft=nan", r"weight of 'sft' must be a finite number > 0, got nan"),
    ("dpo,sft=x", r"weight of 'sft' must be a number, got 'x'"),
    ("dpo,sft=", r"weight of 'sft' must be a number, got ''"),
    ({"sft": True}, r"weight of 'sft' must be a finite number > 0, got True"),
    ("dpo,sfx", r"unknown loss 'sfx' \(did you mean 'sft'\?\); valid losses: slime"),
    ("dpo,sft=0.2=1", r"unknown loss 'sft=0.2'"),
    ("rpo,sft=0.1", r"'rpo' is itself a composition \(dpo,sft\); write its terms out instead"),
    ("rpo=2", r"'rpo' is itself a composition"),
    ([{"dpo": 1, "sft": 0.2}], r"each item must be a name or a one-key mapping"),
    (["dpo,sft"], r"each item must be a name or a one-key mapping"),
    (3, r"loss spec must be a string, a list or a mapping, got 3"),
])
def test_bad_specs_are_refused_saying_why(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_loss_spec(spec)
    with pytest.raises(ValueError, match=message):
        get_loss(spec)


def test_a_plain_name_still_takes_its_own_hyperparameters():
    assert type(get_loss("dpo", beta=0.2)).__name__ == "DpoLoss"
    assert get_loss("dpo", beta=0.2).beta == 0.2
    assert get_loss("dpo=1").hyperparameters() == get_loss("dpo").hyperparameters()
    assert not isinstance(get_loss(["slime-config"]), CompositeLoss)


def test_composition_parameters_are_keyed_by_term():
    loss_fn = get_loss("dpo,sft=0.2", dpo={"beta": 0.3}, sft={"reduction": "batch_tokens"})
    assert loss_fn.name == "dpo,sft=0.2"
    assert loss_fn.hyperparameters() == {
        "dpo.weight": 1.0, "dpo.beta": 0.3, "dpo.label_smoothing": 0.0, "sft.weight": 0.2, "sft.reduction": "batch_tokens",
    }
    # A term keeps its preset's values: slime-config's λ_w = 0.8, δ = 0.5.
    slime = get_loss("slime-config=0.5,sft", **{"slime-config": {"margin_mode": "soft"}}).terms["slime-config"][1]
    assert (slime.anchor_weight, slime.stabilizer_shift, slime.margin_mode) == (0.8, 0.5, "soft")
    # A preset that is a composition: an override updates its term, the rest of the recipe stays.
    assert get_loss("rpo", dpo={"beta": 0.5}).hyperparameters() == {
        "dpo.weight": 1.0, "dpo.beta": 0.5, "dpo.label_smoothing": 0.0, "sft.weight": 1.0, "sft.reduction": "sequence",
    }


@pytest.mark.parametrize(("spec", "params", "message"), [
    ("dpo,sft=0.2", {"beta": 0.3}, r"loss 'dpo,sft=0.2' is a composition of dpo, sft: its parameters are given per "
                                    r"term, e.g. dpo=\{\.\.\.\}; it has no term beta"),
    ("rpo", {"beta": 0.3}, r"loss 'rpo' is a composition of dpo, sft: .* it has no term beta"),
    ("dpo,sft=0.2", {"dpo": {"gamma": 1.0}}, r"loss 'dpo' \(a term of 'dpo,sft=0.2'\) has no parameter\(s\) gamma; "
                                             r"valid parameters: beta, label_smoothing"),
    ("dpo,sft=0.2", {"dpo": 0.3}, r"loss 'dpo,sft=0.2': the parameters of term 'dpo' must be a mapping, got 0.3"),
    ("dpo,sft=0.2", {"sft": {"reduction": "tokens"}}, r"sft: reduction must be one of sequence, batch_tokens"),
    ("dpo", {"dpo": {"beta": 0.3}}, r"loss 'dpo' has no parameter\(s\) dpo"),
])
def test_bad_parameters_of_a_composition_are_refused_clearly(spec, params, message):
    with pytest.raises(ValueError, match=message):
        get_loss(spec, **params)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("inf"), float("nan"), True])
def test_composite_loss_refuses_a_weight_that_is_not_finite_and_positive(weight):
    with pytest.raises(ValueError, match=r"weight of 'sft' must be a finite number > 0"):
        CompositeLoss({"dpo": (1.0, get_loss("dpo")), "sft": (weight, get_loss("sft"))})


def test_composite_loss_built_directly_names_itself_by_its_spec():
    loss_fn = CompositeLoss({"slime": (1.0, get_loss("slime")), "sft": (0.25, get_loss("sft"))})
    assert loss_fn.name == "slime,sft=0.25"
    assert parse_loss_spec(loss_fn.name) == [("slime", 1.0), ("sft", 0.25)]
    with pytest.raises(ValueError, match="at least one term"):
        CompositeLoss({})


def test_losses_lists_single_names_and_the_new_presets():
    assert {"dpo-norm", "rpo"} <= set(LOSSES)
    assert all("," not in name and "=" not in name for name in LOSSES)


def test_a_spec_is_written_back_with_integral_weights_as_integers():
    from slimepo.losses import spec_text

    assert spec_text(parse_loss_spec(["slime", {"sft": 3.0}, {"dpo": 0.25}])) == "slime,sft=3,dpo=0.25"
    assert spec_text(parse_loss_spec("slime=3")) == "slime=3"
