"""The registry's contract: names, parameters, references, dtypes, degenerate inputs."""

import warnings

import pytest
import torch

from slimepo.losses import LOSSES, get_loss


def random_batch(batch=3, tokens=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    chosen = -torch.rand(batch, tokens, generator=g) * 3
    rejected = -torch.rand(batch, tokens + 2, generator=g) * 5
    chosen_mask = torch.ones(batch, tokens, dtype=torch.bool)
    chosen_mask[0, 4:] = False
    rejected_mask = torch.ones(batch, tokens + 2, dtype=torch.bool)
    rejected_mask[1, 2:] = False
    return chosen.to(dtype), chosen_mask, rejected.to(dtype), rejected_mask


def reference_for(loss_fn, batch=3):
    if not loss_fn.requires_reference:
        return {}
    return dict(ref_chosen_logps=torch.full((batch,), -6.0), ref_rejected_logps=torch.full((batch,), -9.0))


def test_registry_lists_slime_and_every_baseline():
    for name in ("slime", "slime-config", "sft", "dpo", "dpo-norm", "ipo", "hinge", "simpo", "cpo", "orpo", "rpo"):
        assert name in LOSSES


def test_unknown_loss_lists_valid_names_and_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown loss 'simp'.*did you mean 'simpo'.*valid losses: slime"):
        get_loss("simp")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"loss 'simpo' has no parameter\(s\) anchor_weight; valid parameters: beta, gamma"):
        get_loss("simpo", anchor_weight=1.0)


@pytest.mark.parametrize(("name", "parameter", "value"), [
    ("dpo", "beta", 0.0), ("hinge", "beta", 0.0), ("simpo", "beta", 0), ("ipo", "tau", float("nan")),
    ("dpo", "beta", -0.1),
])
def test_a_scale_that_trains_nothing_is_refused_naming_the_loss_and_parameter(name, parameter, value):
    with pytest.raises(ValueError, match=rf"^{name}: {parameter} must be a number > 0, got {value!r}$"):
        get_loss(name, **{parameter: value})


def test_simpo_still_takes_a_zero_target_margin():
    assert get_loss("simpo", gamma=0.0).gamma == 0.0


def test_reference_based_loss_without_reference_raises_clearly():
    with pytest.raises(ValueError, match="needs reference log-probs"):
        get_loss("dpo")(*random_batch())


def test_reference_given_to_reference_free_loss_warns_once():
    loss_fn = get_loss("slime")
    ref = dict(ref_chosen_logps=torch.zeros(3), ref_rejected_logps=torch.zeros(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn(*random_batch(), **ref)
        loss_fn(*random_batch(), **ref)
    assert len([w for w in caught if "reference-free" in str(w.message)]) == 1


@pytest.mark.parametrize("name", LOSSES)
def test_metrics_are_detached_scalars_with_the_shared_keys(name):
    loss_fn = get_loss(name)
    out = loss_fn(*random_batch(), **reference_for(loss_fn))
    assert out.loss.dim() == 0
    for key in ("rewards/chosen", "rewards/rejected", "margin", "accuracy", "logps/chosen", "logps/rejected"):
        assert key in out.metrics
    assert any(key.startswith("loss/") for key in out.metrics)
    for value in out.metrics.values():
        assert value.dim() == 0 and not value.requires_grad


@pytest.mark.parametrize("name", LOSSES)
def test_bf16_inputs_land_within_1e_2_relative_of_fp32(name):
    loss_fn = get_loss(name)
    fp32 = random_batch(tokens=64)
    bf16 = (fp32[0].bfloat16(), fp32[1], fp32[2].bfloat16(), fp32[3])
    exact = loss_fn(*fp32, **reference_for(loss_fn)).loss.item()
    low = loss_fn(*bf16, **reference_for(loss_fn)).loss
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(exact, rel=1e-2, abs=1e-6)
    # The only difference is the inputs' rounding: the arithmetic itself runs in fp32.
    upcast = (bf16[0].float(), bf16[1], bf16[2].float(), bf16[3])
    assert torch.equal(low, loss_fn(*upcast, **reference_for(loss_fn)).loss)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("value", [0.0, -1e-8, -30.0, -1e4])
def test_no_nan_or_inf_for_finite_inputs_down_to_minus_1e4(name, value):
    loss_fn = get_loss(name)
    chosen, chosen_mask, rejected, rejected_mask = random_batch()
    chosen = torch.full_like(chosen, value).requires_grad_(True)
    rejected = rejected.clone()
    rejected[0] = -1e4
    rejected.requires_grad_(True)
    out = loss_fn(chosen, chosen_mask, rejected, rejected_mask, **reference_for(loss_fn))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for grad in (chosen.grad, rejected.grad):  # None: the loss does not use that side
        assert grad is None or torch.isfinite(grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize("name", LOSSES)
def test_all_false_mask_row_raises_a_clear_error(name):
    loss_fn = get_loss(name)
    chosen, chosen_mask, rejected, rejected_mask = random_batch()
    rejected_mask[2] = False
    with pytest.raises(ValueError, match=r"rejected_mask has no valid token in row\(s\) \[2\]"):
        loss_fn(chosen, chosen_mask, rejected, rejected_mask, **reference_for(loss_fn))


def test_shape_and_dtype_errors_are_named():
    chosen, chosen_mask, rejected, rejected_mask = random_batch()
    with pytest.raises(TypeError, match="chosen_mask must be a bool tensor"):
        get_loss("slime")(chosen, chosen_mask.float(), rejected, rejected_mask)
    with pytest.raises(ValueError, match="chosen_logps and chosen_mask must both be"):
        get_loss("slime")(chosen, chosen_mask[:, :2], rejected, rejected_mask)


def test_losses_module_imports_only_torch():
    import subprocess
    import sys

    code = (
        "import sys; import slimepo.losses; "
        "bad = [m for m in ('transformers', 'datasets', 'peft', 'accelerate', 'numpy.random') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slime", "simpo"])
def test_compiled_loss_gives_the_same_values_and_gradients(name):
    plain = get_loss(name)
    compiled = get_loss(name).compiled()
    chosen, chosen_mask, rejected, rejected_mask = random_batch()
    a = chosen.clone().requires_grad_(True)
    b = chosen.clone().requires_grad_(True)
    out_plain = plain(a, chosen_mask, rejected, rejected_mask)
    out_compiled = compiled(b, chosen_mask, rejected, rejected_mask)
    out_plain.loss.backward()
    out_compiled.loss.backward()
    torch.testing.assert_close(out_compiled.loss, out_plain.loss)
    torch.testing.assert_close(b.grad, a.grad)


# PAPER.md's table, "authors' training-script values" column, and margin mode / reduction as PAPER.md
# says the authors run them; each preset below is written out whole, not derived from the code.
SLIME_SCRIPT = dict(
    margin_weight=1.0, hard_margin=1.5, soft_margin=1.0, gate_slope=2.5, anchor_weight=0.1,
    stabilizer_weight=5e-4, stabilizer_shift=1.25, stabilizer_power=2.5, margin_mode="dual",
    stabilizer_reduction="batch_tokens",
)
EVERY_PRESET = {
    "slime": SLIME_SCRIPT,
    "slime-config": {**SLIME_SCRIPT, "anchor_weight": 0.8, "stabilizer_shift": 0.5},  # the config-defaults column
    "slime-no-anchor": {**SLIME_SCRIPT, "anchor_weight": 0.0},
    "slime-no-stabilizer": {**SLIME_SCRIPT, "stabilizer_weight": 0.0},
    "slime-hard": {**SLIME_SCRIPT, "margin_mode": "hard"},
    "slime-soft": {**SLIME_SCRIPT, "margin_mode": "soft"},
    "sft": {"reduction": "sequence"},  # each response's mean NLL, as LLaMA-Factory's pref_ftx
    "dpo": {"beta": 0.1, "label_smoothing": 0.0},  # PAPER.md's DPO baseline: sigmoid, β = 0.1
    "dpo-norm": {"beta": 5.0, "label_smoothing": 0.0},  # Tülu 3's dpo_norm: β = 5 (open-instruct dpo_8b.sh)
    # LD-DPO: DPO's β, and α = 0.5 (a middle value: TRL leaves ld_alpha unset, the paper tunes it per model).
    "ld-dpo": {"beta": 0.1, "label_smoothing": 0.0, "alpha": 0.5},
    "ipo": {"tau": 0.1, "length_normalized": False},
    "hinge": {"beta": 0.1},
    "simpo": {"beta": 2.0, "gamma": 1.0, "label_smoothing": 0.0},
    "cpo": {"beta": 0.1, "alpha": 1.0},
    "orpo": {"lam": 0.1},
    # Pang et al. 2024: DPO (β = 0.1) + 1·NLL(y_w), each winner's NLL divided by its length.
    "rpo": {"dpo.weight": 1.0, "dpo.beta": 0.1, "dpo.label_smoothing": 0.0, "sft.weight": 1.0, "sft.reduction": "sequence"},
}


@pytest.mark.parametrize("name", sorted(EVERY_PRESET))
def test_every_default_of_every_preset_is_pinned(name):
    assert get_loss(name).hyperparameters() == EVERY_PRESET[name]


def test_every_preset_is_pinned():
    assert set(LOSSES) == set(EVERY_PRESET)
