"""slimepo.zero3 without DeepSpeed: what it leaves alone, and what it refuses.

Its gathers run under 2 DeepSpeed processes in tests/train/test_deepspeed.py."""

import pytest
import torch

from slimepo import zero3
from slimepo.config import ConfigError, TrainConfig


def partitioned_parameter(requires_grad: bool) -> torch.nn.Parameter:
    """A parameter as ZeRO-3 leaves it between forwards: an empty tensor beside its ``ds_id``."""
    param = torch.nn.Parameter(torch.empty(0), requires_grad=requires_grad)
    param.ds_id = 0
    return param


def test_parameters_zero3_did_not_partition_are_used_as_they_are():
    weight, bias = torch.nn.Parameter(torch.ones(3, 2)), None
    assert not zero3.partitioned([weight, bias])
    assert zero3.whole_copies(weight, bias) == (weight, None)
    with zero3.gathered([weight, bias]):  # a no-op: deepspeed is not imported
        pass


def test_a_partitioned_head_that_is_trained_is_refused_where_a_gradient_is_recorded():
    """A gathered copy would take the head's gradient and leave DeepSpeed's partitions untrained."""
    head = partitioned_parameter(requires_grad=True)
    assert zero3.trains_partitioned([head, None])
    assert not zero3.trains_partitioned([partitioned_parameter(requires_grad=False)])
    with pytest.raises(RuntimeError, match="cannot train an output head that DeepSpeed ZeRO-3 partitions.*--logprob-chunk-size 0"):
        zero3.whole_copies(head, None)


def test_zero3_full_fine_tuning_is_refused_unless_the_weights_are_gathered_to_be_saved(monkeypatch, tmp_path):
    """Without ``stage3_gather_16bit_weights_on_model_save`` the Trainer saves the trained weights
    only as DeepSpeed's partitioned checkpoint (and zero_to_fp32.py), where slimepo's outputs
    promise model.safetensors (seen on 2 CPU processes before the check)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    from slimepo.train import run as train_run

    monkeypatch.setattr(hf_deepspeed, "is_deepspeed_zero3_enabled", lambda: True)
    monkeypatch.setattr(hf_deepspeed, "deepspeed_config", lambda: {"zero_optimization": {"stage": 3}})
    assert zero3.saves_no_whole_model()
    monkeypatch.setattr(train_run, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before the check"))
    with pytest.raises(ConfigError, match="use_lora: under DeepSpeed ZeRO-3 .* pass --zero3_save_16bit_model true"):
        train_run.train(TrainConfig(use_lora=False, output_dir=str(tmp_path / "out")))
    save = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}
    monkeypatch.setattr(hf_deepspeed, "deepspeed_config", lambda: save)
    assert not zero3.saves_no_whole_model()
