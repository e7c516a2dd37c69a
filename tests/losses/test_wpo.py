"""WPO weighting (Zhou et al., arXiv:2406.11827) against its formula by hand, on any pair loss, its
mutants, the option that turns it on, and a tiny-model training run."""

import json
import math
from pathlib import Path

import pytest
import torch

import slimepo.losses.wpo as wpo_module
from slimepo.config import ConfigError, TrainConfig
from slimepo.losses import StepTotals, WpoWeighted, get_loss
from slimepo.testing import failing_checks, module_from_source, mutated

# Each response token as (its position's distribution over a vocabulary of 3, the token): the
# test derives ℓ_t = log p[y_t] and log Σ_v p_v² from them with math only.
PAIRS = [
    (  # pair 0: both sides less likely than the policy's own samples
        [((0.5, 0.3, 0.2), 1), ((0.6, 0.2, 0.2), 0), ((0.1, 0.1, 0.8), 0)],
        [((0.25, 0.25, 0.5), 2), ((0.7, 0.2, 0.1), 2)],
    ),
    (  # pair 1: argmax tokens of peaked positions, w > 1 on both sides: the product is clamped to 1
        [((0.9, 0.05, 0.05), 0), ((0.8, 0.1, 0.1), 0)],
        [((0.6, 0.3, 0.1), 0)],
    ),
    (  # pair 2: a uniform position gives exactly w = 1 (p = 1/3 = Σ p²)
        [((1 / 3, 1 / 3, 1 / 3), 1)],
        [((0.5, 0.4, 0.1), 2), ((0.2, 0.2, 0.6), 1), ((0.3, 0.3, 0.4), 2)],
    ),
]
# By hand: pair 1's rejected token weighs 0.6 / (0.36 + 0.09 + 0.01) = 30/23; its chosen
# √((0.9/0.815)·(0.8/0.66)) = 1.1569523594; product 1.5090682948 > 1 -> ω = 1.
# Pair 0: w_w = (0.3/0.38 · 0.6/0.44 · 0.1/0.66)^(1/3) = 0.5463833193, w_l = (0.5/0.375 · 0.1/0.54)^(1/2)
# = 0.4969039950, ω = 0.2715000542. Pair 2: w_w = 1, w_l = (0.1/0.42 · 0.2/0.44 · 0.4/0.34)^(1/3) = 0.5030792070.
OMEGA = (0.2715000541510423, 1.0, 0.5030792070214002)
OMEGA_UNCLAMPED = (0.2715000541510423, 1.5090682948, 0.5030792070214002)  # TRL >= 0.29
REF_W, REF_L = (-4.5, -0.5, -1.0), (-2.5, -0.3, -5.0)
BETA = 0.5
PAD = math.nan  # masked positions hold NaN: any use of them shows


def response_weight(tokens) -> float:
    """w(x, y) = exp(mean_t [log p(y_t) − log Σ_v p_v²]), in plain floats."""
    return math.exp(sum(math.log(p[y]) - math.log(sum(q * q for q in p)) for p, y in tokens) / len(tokens))


def logps_of(tokens) -> list[float]:
    return [math.log(p[y]) for p, y in tokens]


def batch(side: int, rows=range(3)):
    """``(logps, mask, log_sum_sq)`` ``[batch, 3]`` float64 of one side (0 chosen, 1 rejected)."""
    responses = [PAIRS[i][side] for i in rows]
    logps = torch.full((len(responses), 3), PAD, dtype=torch.float64)
    log_sum_sq = torch.full((len(responses), 3), PAD, dtype=torch.float64)
    mask = torch.zeros((len(responses), 3), dtype=torch.bool)
    for i, tokens in enumerate(responses):
        n = len(tokens)
        logps[i, :n] = torch.tensor(logps_of(tokens), dtype=torch.float64)
        log_sum_sq[i, :n] = torch.tensor([math.log(sum(q * q for q in p)) for p, _ in tokens], dtype=torch.float64)
        mask[i, :n] = True
    return logps, mask, log_sum_sq


def dpo_h(i: int) -> float:
    chosen, rejected = (sum(logps_of(PAIRS[i][side])) for side in (0, 1))
    return BETA * ((chosen - REF_W[i]) - (rejected - REF_L[i]))


def minus_logsigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def run(wpo, rows=range(3), requires_grad=False, clamp=True, **kwargs):
    """WPO-weighted DPO (built from the module ``wpo``) on the rows ``rows`` of the batch."""
    (cl, cm, cs), (rl, rm, rs) = batch(0, rows), batch(1, rows)
    cl.requires_grad_(requires_grad)
    rl.requires_grad_(requires_grad)
    ref_chosen = torch.tensor([REF_W[i] for i in rows], dtype=torch.float64)
    ref_rejected = torch.tensor([REF_L[i] for i in rows], dtype=torch.float64)
    out = wpo.WpoWeighted(get_loss("dpo", beta=BETA), clamp=clamp)(cl, cm, rl, rm, ref_chosen, ref_rejected,
                                                      chosen_log_sum_sq=cs, rejected_log_sum_sq=rs, **kwargs)
    return out, cl, rl


def test_hand_numbers_follow_from_the_formula_in_plain_floats():
    for (chosen, rejected), omega in zip(PAIRS, OMEGA):
        assert min(1.0, response_weight(chosen) * response_weight(rejected)) == pytest.approx(omega, rel=1e-12)
    assert response_weight(PAIRS[1][0]) * response_weight(PAIRS[1][1]) > 1.2  # the clamp is exercised
    assert response_weight(PAIRS[2][0]) == pytest.approx(1.0, rel=1e-12)
    for (chosen, rejected), omega in zip(PAIRS, OMEGA_UNCLAMPED):
        assert response_weight(chosen) * response_weight(rejected) == pytest.approx(omega, rel=1e-10)


# Each check takes the module, so the mutants below run through the same checks.

def check_the_pair_weights_by_hand(wpo):
    (cl, cm, cs), (rl, rm, rs) = batch(0), batch(1)
    omega = wpo.wpo_pair_weights(cl, cm, cs, rl, rm, rs)
    assert omega.dtype == torch.float32 and omega.shape == (3,)
    assert omega.tolist() == pytest.approx(OMEGA, rel=1e-6)


def check_weighted_dpo_is_the_mean_of_omega_times_each_pairs_loss(wpo):
    out = run(wpo)[0]
    expected = sum(w * minus_logsigmoid(dpo_h(i)) for i, w in enumerate(OMEGA)) / 3  # divided by B, not Σ ω
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["loss/sigmoid"].item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["wpo/weight"].item() == pytest.approx(sum(OMEGA) / 3, rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(  # rewards stay unweighted
        sum(BETA * (sum(logps_of(PAIRS[i][0])) - REF_W[i]) for i in range(3)) / 3, rel=1e-6)


def check_data_weights_count_and_omega_only_scales(wpo):
    data = (2.0, 1.0, 0.5)
    out = run(wpo, weights=torch.tensor(data))[0]
    expected = sum(d * w * minus_logsigmoid(dpo_h(i)) for i, (d, w) in enumerate(zip(data, OMEGA))) / sum(data)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def check_a_token_mean_weighs_each_pairs_tokens_by_omega(wpo):
    (cl, cm, cs), (rl, rm, rs) = batch(0), batch(1)
    loss = wpo.WpoWeighted(get_loss("sft", reduction="batch_tokens"))
    out = loss(cl, cm, rl, rm, chosen_log_sum_sq=cs, rejected_log_sum_sq=rs)
    tokens = sum(len(chosen) for chosen, _ in PAIRS)  # 6 chosen tokens: the count without WPO
    expected = -sum(w * sum(logps_of(chosen)) for (chosen, _), w in zip(PAIRS, OMEGA)) / tokens
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def check_no_gradient_flows_through_the_weights(wpo):
    out, chosen, rejected = run(wpo, requires_grad=True)
    grad_chosen, grad_rejected = torch.autograd.grad(out.loss, (chosen, rejected))
    # ∂(ω_i·L_i/3)/∂ℓ_t = ∓ω_i·β·σ(−h_i)/3 on each valid token, ω_i held constant
    for i, w in enumerate(OMEGA):
        g = w * BETA * sigmoid(-dpo_h(i)) / 3
        n_chosen, n_rejected = len(PAIRS[i][0]), len(PAIRS[i][1])
        assert grad_chosen[i, :n_chosen].tolist() == pytest.approx([-g] * n_chosen, rel=1e-6)
        assert grad_rejected[i, :n_rejected].tolist() == pytest.approx([g] * n_rejected, rel=1e-6)
        assert grad_chosen[i, n_chosen:].abs().sum() == 0 and grad_rejected[i, n_rejected:].abs().sum() == 0


def check_micro_batches_add_up_to_the_step(wpo):
    whole = run(wpo)[0].loss
    totals = StepTotals(pairs=3.0, chosen_tokens=6.0, rejected_tokens=6.0)
    parts = sum(run(wpo, rows=rows, step_totals=totals)[0].loss for rows in ([0, 1], [2]))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def check_unclamped_weights_exceed_one_and_scale_the_loss(wpo):
    (cl, cm, cs), (rl, rm, rs) = batch(0), batch(1)
    assert wpo.wpo_pair_weights(cl, cm, cs, rl, rm, rs, clamp=False).tolist() == pytest.approx(OMEGA_UNCLAMPED, rel=1e-6)
    out = run(wpo, clamp=False)[0]
    expected = sum(w * minus_logsigmoid(dpo_h(i)) for i, w in enumerate(OMEGA_UNCLAMPED)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["wpo/weight"].item() == pytest.approx(sum(OMEGA_UNCLAMPED) / 3, rel=1e-6)


CHECKS = [check_the_pair_weights_by_hand, check_unclamped_weights_exceed_one_and_scale_the_loss, check_weighted_dpo_is_the_mean_of_omega_times_each_pairs_loss,
          check_data_weights_count_and_omega_only_scales, check_a_token_mean_weighs_each_pairs_tokens_by_omega,
          check_no_gradient_flows_through_the_weights, check_micro_batches_add_up_to_the_step]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_wpo_by_hand(check):
    check(wpo_module)


SOURCE = Path(wpo_module.__file__)
#: (what it breaks, text in wpo.py, replacement)
MUTANTS = [
    ("no clamp at 1", "weight.clamp(max=1.0) if clamp", "weight if clamp"),
    ("clamped whatever the option", "if clamp else weight", "if clamp else weight.clamp(max=1.0)"),
    ("option not passed on", "rejected_log_sum_sq, clamp=self.clamp)", "rejected_log_sum_sq)"),
    ("sum over tokens, not mean", "return aligned.sum(-1) / mask.sum(-1)", "return aligned.sum(-1)"),
    ("chosen weight only", "log_weight = log_policy_weight(chosen_logps, chosen_mask, chosen_log_sum_sq) + log_policy_weight(\n"
     "        rejected_logps, rejected_mask, rejected_log_sum_sq)",
     "log_weight = log_policy_weight(chosen_logps, chosen_mask, chosen_log_sum_sq)"),
    ("weights not detached", "    with torch.no_grad():\n        aligned", "    if True:\n        aligned"),
    ("normalizer dropped (plain probability)", "logps.float() - log_sum_sq.float()", "logps.float()"),
    ("normalizer added", "logps.float() - log_sum_sq.float()", "logps.float() + log_sum_sq.float()"),
    ("masked positions counted", "torch.where(mask, logps.float() - log_sum_sq.float(), torch.zeros((), device=logps.device))",
     "logps.float() - log_sum_sq.float()"),
    ("geometric mean of the two sides", "weight = torch.exp(log_weight)", "weight = torch.exp(log_weight / 2)"),
    ("weights renormalized (ω in the counts)", "weights=weights, pair_factors=omega",
     "weights=omega if weights is None else weights * omega"),
]


def test_the_checks_pass_on_a_fresh_copy_of_the_unmutated_source():
    module = module_from_source(SOURCE.read_text(encoding="utf-8"), "slimepo_wpo_copy")
    for check in CHECKS:
        check(module)


@pytest.mark.parametrize(("label", "old", "new"), MUTANTS, ids=[m[0] for m in MUTANTS])
def test_every_mutant_of_wpo_fails_a_check(label, old, new):
    source = mutated(SOURCE.read_text(encoding="utf-8"), old, new, SOURCE)
    assert failing_checks(CHECKS, module_from_source(source, "slimepo_wpo_mutant")), f"mutant '{label}' passes every check"


def test_when_every_token_is_as_likely_as_the_policys_own_samples_the_loss_is_the_unweighted_loss():
    (cl, cm, _), (rl, rm, _) = batch(0), batch(1)
    ref = dict(ref_chosen_logps=torch.tensor(REF_W), ref_rejected_logps=torch.tensor(REF_L))
    wpo = WpoWeighted(get_loss("dpo"))(cl, cm, rl, rm, **ref, chosen_log_sum_sq=cl, rejected_log_sum_sq=rl)
    assert wpo.metrics["wpo/weight"].item() == 1.0
    assert torch.equal(wpo.loss, get_loss("dpo")(cl, cm, rl, rm, **ref).loss)


def test_the_statistic_is_required_and_only_pair_losses_are_weighted():
    (cl, cm, _), (rl, rm, _) = batch(0), batch(1)
    loss = WpoWeighted(get_loss("simpo"))
    assert loss.requires_log_sum_sq and not get_loss("simpo").requires_log_sum_sq
    with pytest.raises(ValueError, match="needs chosen_log_sum_sq and rejected_log_sum_sq"):
        loss(cl, cm, rl, rm)
    with pytest.raises(TypeError, match="WPO weighs a loss on preference pairs once"):
        WpoWeighted(get_loss("kto"))
    with pytest.raises(TypeError, match="WPO weighs a loss on preference pairs once"):
        WpoWeighted(loss)


def test_a_weighted_composition_keeps_its_reference_its_hyperparameters_and_cites_wpo():
    loss = WpoWeighted(get_loss("ld-dpo,sft=0.2", **{"ld-dpo": {"alpha": 0.3}}))
    assert loss.name == "ld-dpo,sft=0.2+wpo" and loss.requires_reference
    assert loss.reference_key() == {"length_desensitized_alpha": 0.3}
    assert loss.hyperparameters()["wpo"] is True and loss.hyperparameters()["ld-dpo.alpha"] == 0.3
    assert loss.citation.endswith("WPO weighting: Zhou et al., arXiv:2406.11827 (2024)")


def test_the_wpo_option_builds_the_weighted_loss_and_is_refused_for_unpaired_losses(tmp_path):
    assert isinstance(TrainConfig(loss="dpo", wpo=True).loss_fn(), WpoWeighted)
    assert TrainConfig(loss="dpo", wpo=True).loss_fn().clamp is True
    assert TrainConfig(loss="dpo", wpo=True, wpo_clamp=False).loss_fn().hyperparameters()["wpo_clamp"] is False
    with pytest.raises(ConfigError, match="wpo_clamp: false applies to WPO's weights; add --wpo"):
        TrainConfig(loss="dpo", wpo_clamp=False, output_dir=str(tmp_path / "plain")).validate()
    assert not isinstance(TrainConfig(loss="dpo").loss_fn(), WpoWeighted)
    config = TrainConfig(loss="kto", wpo=True, output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="wpo: kto trains on unpaired examples"):
        config.validate()


def test_a_tiny_model_trains_with_wpo_from_the_cli_and_the_head_paths_agree(tiny_model_dir, toy_data, tmp_path):
    from slimepo.cli import main

    runs = {}
    for name, options in (("chunked-shared", []), ("full-logits-separate", ["--logprob-chunk-size", "0", "--layout", "separate"]),
                          ("chunk-3-packed", ["--logprob-chunk-size", "3", "--layout", "packed"])):
        out = tmp_path / name
        assert main(["train", "--model", str(tiny_model_dir), "--dataset", str(toy_data["train"]),
                     "--eval-dataset", str(toy_data["test"]), "--eval-split", "train", "--output-dir", str(out),
                     "--max-steps", "2", "--batch-size", "14", "--logging-steps", "1", "--save-steps", "0",
                     "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--monitor-steps", "0",
                     "--dtype", "float32", "--loss", "dpo", "--wpo", *options]) == 0
        runs[name] = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                      if r["split"] == "train" and "loss" in r]
        assert (out / "config.yaml").read_text().count("wpo: true") == 1
        assert "| `wpo` | True |" in (out / "README.md").read_text()
    first = runs["chunked-shared"][0]
    # Step 1 holds all 14 pairs and the policy is the reference (zero LoRA update): every DPO term is
    # log 2, so the loss is log 2 times the batch's mean ω, which the run logs.
    assert 0 < first["wpo/weight"] < 1
    assert first["loss"] == pytest.approx(math.log(2) * first["wpo/weight"], rel=1e-5)
    for name in ("full-logits-separate", "chunk-3-packed"):
        for a, b in zip(runs["chunked-shared"], runs[name]):
            assert b["wpo/weight"] == pytest.approx(a["wpo/weight"], rel=1e-4), name
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), name
