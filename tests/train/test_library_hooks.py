"""The private hooks of transformers, accelerate, peft and torch that slimepo overrides or reads still exist.

Each of them can be renamed in any release without notice. An override of a method that
is gone is dead code, a private attribute that is gone reads as its default: either way
training would go on, silently without what slimepo put there (the non-finite step guard,
crash-safe checkpoints, the chunked head). These tests fail instead, naming the hook, the
installed version, and what slimepo uses it for.
"""

from __future__ import annotations

import inspect

import accelerate
import peft
import pytest
import torch
import transformers
import transformers.trainer
from accelerate.optimizer import AcceleratedOptimizer
from transformers import Trainer

from slimepo.train.trainer import PreferenceTrainer

TRAINER = "slimepo.train.trainer.PreferenceTrainer"
TRANSFORMERS = f"transformers {transformers.__version__}"

#: Trainer methods PreferenceTrainer overrides: name -> (the parameters it is called with, what for).
OVERRIDDEN = {
    "_get_num_items_in_batch": (("batch_samples", "device"),
                                "count one optimizer step's pairs and tokens over all processes (StepTotals), "
                                "which every batch mean of the loss divides by"),
    "_run_epoch": (None, "stop a run resumed at max_steps in mid-epoch instead of training one step too many"),
    "_get_grad_norm": (("model", "grad_norm"),
                       "let the non-finite step guard decide, before the optimizer step, whether it is applied"),
    "_save_checkpoint": (("model", "trial"), "write each checkpoint in a staging folder, renamed when complete"),
    "_get_output_dir": (("trial",), "point the Trainer's checkpoint writing and rotation into that staging folder"),
}
#: Trainer methods and attributes PreferenceTrainer calls or sets: name -> what for.
USED = {
    "_get_train_sampler": "build the training batches dealt to the processes in whole rounds (get_train_dataloader)",
    "_prepare_inputs": "move evaluation and scoring batches to the device (prediction_step, score_examples)",
    "_train_batch_size": "the batch size of the training batches (get_train_dataloader)",
    "loss_is_scaled_for_ga": "tell the Trainer the loss is already divided by the whole step's counts",
}


def trainer_source() -> str:
    return inspect.getsource(transformers.trainer)


def hook_problems() -> list[str]:
    """One sentence per hook the installed libraries no longer offer as slimepo uses it."""
    problems = []
    source = trainer_source()
    for name, (parameters, purpose) in OVERRIDDEN.items():
        method = getattr(Trainer, name, None)
        if method is None:
            problems.append(f"{TRANSFORMERS} renamed or removed Trainer.{name}, which {TRAINER} overrides to {purpose}")
            continue
        if f"self.{name}(" not in source:
            problems.append(f"{TRANSFORMERS} no longer calls Trainer.{name}, which {TRAINER} overrides to {purpose}")
        if parameters is not None:
            found = tuple(list(inspect.signature(method).parameters)[1:])
            if found != parameters:
                problems.append(f"{TRANSFORMERS} changed Trainer.{name}'s parameters to {found} (slimepo's override "
                                f"takes {parameters}), which {TRAINER} overrides to {purpose}")
    # A private method of its own that calls the Trainer's (super()) is an override this list must name;
    # one that does not (a helper such as _step_counts) is slimepo's alone.
    for name, value in sorted(vars(PreferenceTrainer).items()):
        function = getattr(value, "__func__", value)
        if not name.startswith("_") or name.startswith("__") or name in OVERRIDDEN or not inspect.isfunction(function):
            continue
        if f"super().{name}(" in inspect.getsource(function):
            problems.append(f"{TRAINER}.{name} extends Trainer.{name}, " + (
                f"which {TRANSFORMERS} no longer has" if not hasattr(Trainer, name)
                else "which tests/train/test_library_hooks.py does not list: add it to OVERRIDDEN"))
    for name, purpose in USED.items():
        if not hasattr(Trainer, name) and f"self.{name} =" not in inspect.getsource(Trainer.__init__):
            problems.append(f"{TRANSFORMERS} renamed or removed Trainer.{name}, which {TRAINER} uses to {purpose}")
    if "self.loss_is_scaled_for_ga" not in inspect.getsource(Trainer.training_step):
        problems.append(f"{TRANSFORMERS}'s Trainer.training_step no longer reads loss_is_scaled_for_ga, which "
                        f"{TRAINER} sets so that its loss is not divided by the accumulation steps a second time")
    return problems


def test_every_trainer_hook_slimepo_overrides_or_uses_still_exists_and_is_called():
    problems = hook_problems()
    assert not problems, "\n".join(problems)


def _load_rng_state(self, checkpoint):  # an override the list above does not name
    return super()._load_rng_state(checkpoint)


def test_a_renamed_trainer_hook_is_named_with_the_version_and_what_slimepo_needs_it_for(monkeypatch):
    monkeypatch.delattr(Trainer, "_get_grad_norm")
    monkeypatch.setattr(PreferenceTrainer, "_load_rng_state", _load_rng_state, raising=False)
    assert hook_problems() == [
        f"{TRANSFORMERS} renamed or removed Trainer._get_grad_norm, which {TRAINER} overrides to let the "
        "non-finite step guard decide, before the optimizer step, whether it is applied",
        f"{TRAINER}._load_rng_state extends Trainer._load_rng_state, which tests/train/test_library_hooks.py does "
        "not list: add it to OVERRIDDEN"]


def test_the_step_guard_s_skip_flag_is_what_accelerate_reports_as_a_skipped_step():
    """slimepo.train.faults sets ``AcceleratedOptimizer._is_overflow`` (a GradScaler's "this step was
    skipped") so that the Trainer leaves the learning-rate schedule alone on a skipped step."""
    where = f"accelerate {accelerate.__version__}"
    purpose = "which slimepo.train.faults.NonFiniteStepGuard sets so that a skipped step does not advance the schedule"
    assert "self._is_overflow" in inspect.getsource(AcceleratedOptimizer.__init__), (
        f"{where} renamed AcceleratedOptimizer._is_overflow, {purpose}")
    assert "_is_overflow" in inspect.getsource(AcceleratedOptimizer.step_was_skipped.fget), (
        f"{where}'s AcceleratedOptimizer.step_was_skipped no longer reads _is_overflow, {purpose}")
    assert "optimizer_step_was_skipped" in inspect.getsource(Trainer._run_epoch), (
        f"{TRANSFORMERS}'s Trainer._run_epoch no longer asks accelerator.optimizer_step_was_skipped, {purpose}")


def test_peft_s_trained_head_copy_is_read_as_slimepo_reads_it():
    """``output_projection`` recognizes peft's ``ModulesToSaveWrapper`` by its class name and reads
    ``original_module``, ``modules_to_save``, ``active_adapters`` and ``disable_adapters``; renamed,
    the chunked head would quietly give way to full logits, or score the reference with the trained head."""
    from peft import LoraConfig, get_peft_model

    from slimepo.logprobs import output_projection
    from slimepo.model import quiet_peft
    from slimepo.testing import tiny_model

    with quiet_peft():
        model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    head = model.get_base_model().get_output_embeddings()
    where = f"peft {peft.__version__}"
    assert type(head).__name__ == "ModulesToSaveWrapper", (
        f"{where} renamed ModulesToSaveWrapper (now {type(head).__name__}), which slimepo.logprobs.output_projection "
        "recognizes by name to project a trained lm_head copy in chunks")
    for name in ("original_module", "modules_to_save", "disable_adapters"):
        assert hasattr(head, name), f"{where} renamed ModulesToSaveWrapper.{name}, which slimepo.logprobs.output_projection reads"
    assert hasattr(head, "active_adapters") or hasattr(head, "active_adapter"), (
        f"{where} renamed ModulesToSaveWrapper.active_adapters, which slimepo.logprobs.output_projection reads")
    trained, original = head.modules_to_save["default"].weight, head.original_module.weight
    assert output_projection(model)[0] is trained
    with model.disable_adapter():  # the reference of a LoRA policy
        assert output_projection(model)[0] is original, (
            f"{where}: with adapters disabled output_projection still reads the trained head copy")


def test_torch_s_private_names_slimepo_reads_still_exist():
    from torch._dynamo.eval_frame import OptimizedModule

    compiled = torch.compile(torch.nn.Linear(2, 2))  # nothing compiles before a call
    assert isinstance(compiled, OptimizedModule) and hasattr(compiled, "_orig_mod"), (
        f"torch {torch.__version__} renamed OptimizedModule._orig_mod, which slimepo.logprobs._base_model follows "
        "to reach a compiled model's config and head")
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        assert callable(getattr(torch.cpu, probe, None)), (
            f"torch {torch.__version__} renamed torch.cpu.{probe}, which slimepo.model.bf16_hardware asks whether "
            "this CPU has bf16 instructions: without it --mixed-precision auto trains in fp32 on every CPU")


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_config_s_attention_implementation_is_where_slimepo_reads_it(implementation):
    from slimepo.testing import tiny_model

    model = tiny_model("llama")
    model.set_attn_implementation(implementation)
    assert getattr(model.config, "_attn_implementation", None) == implementation, (
        f"{TRANSFORMERS} moved PretrainedConfig._attn_implementation, which slimepo.logprobs reads to choose the "
        "shared/packed attention masks (layer_windows) and FlexAttention's BlockMask")
