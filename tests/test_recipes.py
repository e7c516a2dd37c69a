"""The paper's full-scale recipes (configs/paper/): they load, validate, hold the values of
PAPER.md, and pass ``slimepo train --dry-run``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimepo.config import TrainConfig, config_from_mapping, load_yaml
from slimepo.losses import get_loss
from slimepo.testing import tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper"
MODELS = {
    "llama-3.2-3b": ("meta-llama/Llama-3.2-3B", "llama3.jinja"),
    "qwen3-4b": ("Qwen/Qwen3-4B-Base", "qwen3.jinja"),
    "gemma-3-4b": ("google/gemma-3-4b-pt", "gemma3.jinja"),
}
STAGES = ("sft", "slime", "dpo", "simpo")
RECIPES = [(model, stage) for model in MODELS for stage in STAGES]
#: Beside the faithful recipes: SLIME as the authors' published trainer ran it (docs/paper-recipes.md).
AS_RUN = [(model, "slime-as-run") for model in MODELS]


def recipe_path(model: str, stage: str) -> Path:
    return PAPER / model / f"{stage}.yaml"


def load_recipe(model: str, stage: str) -> TrainConfig:
    path = recipe_path(model, stage)
    return config_from_mapping(load_yaml(path), source=str(path))


@pytest.fixture
def sft_outputs(tmp_path: Path) -> Path:
    """A working folder as after the SFT stages: ``runs/paper/<model>/sft/merged`` exists
    (empty) and ``configs`` points at the repository's. Stage-2 recipes name the merged
    SFT folder as their model, and validation requires a local model path to exist."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    for model in MODELS:
        (tmp_path / "runs" / "paper" / model / "sft" / "merged").mkdir(parents=True)
    return tmp_path


def test_every_model_has_the_four_stages_and_nothing_else():
    found = sorted(str(p.relative_to(PAPER)) for p in PAPER.glob("*/*.yaml"))
    assert found == sorted(f"{model}/{stage}.yaml" for model, stage in RECIPES + AS_RUN)


@pytest.mark.parametrize(("model", "stage"), RECIPES + AS_RUN)
def test_recipe_validates_from_the_repository_root(model, stage, sft_outputs, monkeypatch):
    monkeypatch.chdir(sft_outputs)
    load_recipe(model, stage).validate()


@pytest.mark.parametrize(("model", "stage"), RECIPES)
def test_recipe_holds_the_papers_shared_settings(model, stage):
    config = load_recipe(model, stage)
    hub_id, template = MODELS[model]
    # model and LoRA
    assert config.model == (hub_id if stage == "sft" else f"runs/paper/{model}/sft/merged")
    assert config.dtype == "auto" and config.attn_implementation == "sdpa"
    assert config.use_lora and (config.lora_r, config.lora_alpha, config.lora_dropout) == (64, 128, 0.05)
    assert config.lora_target_modules.split(",") == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]
    assert config.modules_to_save == ["lm_head"]
    # data: UltraFeedback binarized, 34% SFT / 66% preference, seed 0, test_prefs held out
    assert (config.dataset, config.dataset_split) == ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")
    assert config.dataset_cut == ("first:0.34" if stage == "sft" else "rest:0.34")
    assert config.dataset_cut_seed == 0
    assert (config.eval_dataset, config.eval_split) == ("HuggingFaceH4/ultrafeedback_binarized", "test_prefs")
    assert config.chat_template == f"configs/paper/templates/{template}"
    assert (config.max_length, config.max_prompt_length) == (2048, 1024)
    # optimization
    assert config.learning_rate == 1e-4
    assert (config.batch_size, config.gradient_accumulation_steps) == (1, 2)
    assert config.num_epochs == 1 and config.max_steps == -1
    assert config.seed == 0
    assert config.output_dir == f"runs/paper/{model}/{stage}"
    assert config.merge == (stage == "sft")


@pytest.mark.parametrize("model", MODELS)
def test_objectives_have_the_papers_hyperparameters(model):
    assert load_recipe(model, "sft").loss == "sft"

    slime = load_recipe(model, "slime")
    assert slime.loss == "slime" and slime.loss_params == {}
    loss = get_loss(slime.loss, **slime.loss_params)  # the authors' training-script values
    assert (loss.hard_margin, loss.soft_margin, loss.gate_slope, loss.margin_weight) == (1.5, 1.0, 2.5, 1.0)
    assert (loss.anchor_weight, loss.stabilizer_weight) == (0.1, 5e-4)
    assert (loss.stabilizer_shift, loss.stabilizer_power) == (1.25, 2.5)

    dpo = load_recipe(model, "dpo")
    assert dpo.loss == "dpo" and dpo.loss_params == {"beta": 0.1}
    assert dpo.ref_model is None  # the reference is the initial weights: the SFT model

    simpo = load_recipe(model, "simpo")
    assert simpo.loss == "simpo"
    # TRL's CPOTrainer(loss_type="simpo", simpo_gamma=2.0) with TRL's default beta = 0.1
    assert simpo.loss_params == {"beta": 0.1, "gamma": 2.0}


@pytest.mark.parametrize("model", MODELS)
def test_the_as_run_recipe_differs_from_the_faithful_one_in_the_loss_count_and_the_cut_only(model):
    faithful, as_run = load_recipe(model, "slime").to_dict(), load_recipe(model, "slime-as-run").to_dict()
    differing = {name: (faithful[name], as_run[name]) for name in faithful if faithful[name] != as_run[name]}
    assert differing == {
        "loss": ("slime", "slime=3"),  # loss_type "ipo" iterated by character: the SLIME loss summed 3 times
        "max_length": (2048, 131072),  # their SLIME forward drops truncation: completions are never cut
        "output_dir": (f"runs/paper/{model}/slime", f"runs/paper/{model}/slime-as-run"),
    }
    assert as_run["max_prompt_length"] == 1024 and as_run["max_grad_norm"] == 1.0


def test_three_times_the_loss_clipped_at_three_c_is_the_formula_clipped_at_c():
    """Their runs: the tripled loss clipped at 1.0 = the formula's gradient clipped at 1/3, times 3."""
    import torch

    torch.manual_seed(0)
    inputs = (torch.randn(3, 5).clamp(max=-0.1), torch.ones(3, 5, dtype=torch.bool),
              torch.randn(3, 4).clamp(max=-0.1) - 2, torch.ones(3, 4, dtype=torch.bool))
    results = {}
    for spec in ("slime=3", "slime"):
        logps = [t.clone().requires_grad_(True) if t.dtype != torch.bool else t for t in inputs]
        out = get_loss(spec)(*logps)
        out.loss.backward()
        results[spec] = (out.loss.detach(), torch.cat([logps[0].grad.flatten(), logps[2].grad.flatten()]))
    (loss3, grad3), (loss1, grad1) = results["slime=3"], results["slime"]
    torch.testing.assert_close(loss3, 3 * loss1)
    torch.testing.assert_close(grad3, 3 * grad1)
    c = float(grad1.norm()) / 2  # a clip that acts
    clipped3, clipped1 = grad3 * min(1.0, 3 * c / float(grad3.norm())), grad1 * min(1.0, c / float(grad1.norm()))
    torch.testing.assert_close(clipped3, 3 * clipped1)  # Adam then divides the factor 3 out (up to its eps)


@pytest.mark.parametrize("template", sorted({template for _, template in MODELS.values()}))
def test_chat_template_renders_a_prompt_that_prefixes_the_conversation(template):
    text = (PAPER / "templates" / template).read_text(encoding="utf-8")
    tokenizer = tiny_tokenizer()
    prompt = [{"role": "user", "content": "How do I cook rice?"}]
    answer = [{"role": "assistant", "content": "Rinse it first."}]
    rendered_prompt = tokenizer.apply_chat_template(
        prompt, chat_template=text, tokenize=False, add_generation_prompt=True
    )
    rendered_full = tokenizer.apply_chat_template(prompt + answer, chat_template=text, tokenize=False)
    assert rendered_full.startswith(rendered_prompt)
    assert rendered_full[len(rendered_prompt) :].startswith("Rinse it first.")


def dry_run(model: str, stage: str, cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    config = f"configs/paper/{model}/{stage}.yaml"
    return subprocess.run(
        [sys.executable, "-m", "slimepo.cli", "train", "--config", config, "--dry-run", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def assert_dry_run_passes(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 optimizer steps" in result.stdout


@pytest.mark.parametrize("stage", (*STAGES, "slime-as-run"))
def test_qwen3_recipe_passes_the_dry_run(stage, sft_outputs):
    assert_dry_run_passes(dry_run("qwen3-4b", stage, sft_outputs))


@pytest.mark.slow
@pytest.mark.parametrize(("model", "stage"), [r for r in RECIPES if r[0] != "qwen3-4b"])
def test_every_other_recipe_passes_the_dry_run(model, stage, sft_outputs):
    assert_dry_run_passes(dry_run(model, stage, sft_outputs))
