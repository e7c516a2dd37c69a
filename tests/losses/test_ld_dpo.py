"""LD-DPO (Liu et al., arXiv:2409.06411) against its formula by hand, its reference reduction, and
the training paths that feed it (a reference pass per step, or precomputed once)."""

import json
import math

import pytest
import torch

from slimepo.losses import get_loss
from slimepo.losses.pairwise import length_desensitized_sums

CHOSEN = torch.tensor([[-0.5, -1.0, -1.5, 0.0], [-0.2, -0.4, 0.0, 0.0]])
CHOSEN_MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])
REJECTED = torch.tensor([[-2.0, -3.0, 0.0], [-0.1, -6.0, -0.3]])
REJECTED_MASK = torch.tensor([[True, True, False], [True, True, True]])
REF_W, REF_L = torch.tensor([-2.5, -1.0]), torch.tensor([-4.0, -7.0])


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def mean(xs):
    return sum(xs) / len(xs)

# Pair 0: |y_w| = 3, |y_l| = 2, l_p = 2: chosen -0.5 - 1.0 + α·(-1.5); rejected -2.0 - 3.0.
# Pair 1: |y_w| = 2, |y_l| = 3, l_p = 2: chosen -0.2 - 0.4; rejected -0.1 - 6.0 + α·(-0.3).


def by_hand(alpha):
    return [-1.5 + alpha * -1.5, -0.6], [-5.0, -6.1 + alpha * -0.3]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_ld_dpo_is_dpo_on_length_desensitized_log_likelihoods(alpha):
    beta = 0.2
    (w0, w1), (l0, l1) = by_hand(alpha)
    ref_w, ref_l = REF_W.tolist(), REF_L.tolist()  # taken as the reference's π̂, already reduced
    h = [beta * ((w - rw) - (lo - rl)) for w, lo, rw, rl in zip((w0, w1), (l0, l1), ref_w, ref_l)]
    out = get_loss("ld-dpo", beta=beta, alpha=alpha)(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK,
                                                    ref_chosen_logps=REF_W, ref_rejected_logps=REF_L)
    assert out.loss.item() == pytest.approx(mean([-logsigmoid(x) for x in h]), rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(mean([beta * (w0 - ref_w[0]), beta * (w1 - ref_w[1])]),
                                                                 rel=1e-6)


def test_alpha_one_is_dpo_exactly():
    kwargs = dict(ref_chosen_logps=REF_W, ref_rejected_logps=REF_L)
    ld = get_loss("ld-dpo", alpha=1.0, beta=0.1)(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, **kwargs)
    dpo = get_loss("dpo", beta=0.1)(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, **kwargs)
    assert torch.equal(ld.loss, dpo.loss)


def test_the_reference_is_reduced_the_same_way_and_positions_follow_the_mask_in_any_layout():
    # The same responses placed after 2 positions of something else (a shared layout's prompt): the
    # weights follow each response's own token order, not the row's.
    shift = lambda x, fill: torch.cat([torch.full((x.shape[0], 2), fill, dtype=x.dtype), x], dim=1)  # noqa: E731
    chosen, rejected = length_desensitized_sums(shift(CHOSEN, 7.0), shift(CHOSEN_MASK, False),
                                                shift(REJECTED, 7.0), shift(REJECTED_MASK, False), 0.3)
    (w0, w1), (l0, l1) = by_hand(0.3)
    assert chosen.tolist() == pytest.approx([w0, w1]) and rejected.tolist() == pytest.approx([l0, l1])
    loss = get_loss("ld-dpo", alpha=0.3)
    ref_chosen, ref_rejected = loss.reference_sums(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK)
    assert ref_chosen.tolist() == pytest.approx([w0, w1]) and ref_rejected.tolist() == pytest.approx([l0, l1])
    # DPO's reference is the plain sum
    dpo_chosen, dpo_rejected = get_loss("dpo").reference_sums(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK)
    assert dpo_chosen.tolist() == pytest.approx([-3.0, -0.6]) and dpo_rejected.tolist() == pytest.approx([-5.0, -6.4])
    assert loss.reference_key() == {"length_desensitized_alpha": 0.3} and get_loss("dpo").reference_key() == {}


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, True])
def test_alpha_outside_zero_one_is_refused_by_name(alpha):
    with pytest.raises(ValueError, match="ld-dpo: alpha must be a number in \\[0, 1\\]"):
        get_loss("ld-dpo", alpha=alpha)


def test_a_composition_whose_terms_reduce_the_reference_differently_is_refused():
    get_loss("ld-dpo,sft=0.2")  # one reference-based term: fine
    with pytest.raises(ValueError, match="reduce the reference log-probs differently"):
        get_loss("ld-dpo,dpo=0.5")


def test_training_with_a_reference_pass_per_step_or_precomputed_logs_the_same_ld_dpo_run(
        tiny_model_dir, toy_data, tmp_path):
    from slimepo.config import TrainConfig
    from slimepo.train import train

    runs = {}
    for precompute in (False, True):
        out = tmp_path / f"run-{precompute}"
        train(TrainConfig(model=str(tiny_model_dir), dataset=str(toy_data["train"]), eval_dataset=str(toy_data["test"]),
                          eval_split="train", output_dir=str(out), max_steps=3, batch_size=4, logging_steps=1,
                          save_steps=0, lora_r=4, lora_alpha=8, lora_dropout=0.0, monitor_steps=0, learning_rate=1e-2,
                          loss="ld-dpo", loss_params={"alpha": 0.2}, precompute_ref_logps=precompute,
                          ref_logps_cache="off", dtype="float32"))
        runs[precompute] = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                            if r["split"] == "train" and "loss" in r]
    assert len(runs[True]) == len(runs[False]) == 3
    for live, pre in zip(runs[False], runs[True]):
        assert pre["loss"] == pytest.approx(live["loss"], rel=1e-4, abs=1e-6)
        assert pre["rewards/chosen"] == pytest.approx(live["rewards/chosen"], rel=1e-3, abs=1e-5)
    # at step 1 the policy is the reference (zero LoRA update): every log-ratio 0, the loss log 2
    assert runs[False][0]["loss"] == pytest.approx(math.log(2), rel=1e-5)
