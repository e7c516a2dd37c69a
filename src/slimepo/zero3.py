"""Reading weights that DeepSpeed ZeRO-3 has partitioned, outside the engine's forward.

Under ZeRO-3 (``accelerate launch --use_deepspeed --zero_stage 3``) transformers partitions
every weight over the processes as the model loads (``deepspeed.zero.Init``): a parameter then
holds an empty tensor beside its ``ds_id``, ``ds_shape``, ... attributes, and only the engine's
hooks gather a module's weights, for that module's forward and backward. slimepo reads weights
outside them twice: when it scores held-out pairs before training (the engine does not exist
yet) and when the chunked head projects hidden states with the head's weight after the forward.
A separate reference model, partitioned at load too, gets an engine of its own that only gathers.

The parameters' ``ds_id`` says whether ZeRO-3 partitioned them: deepspeed is imported only then.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


def partitioned(params: Iterable[Tensor | None]) -> bool:
    """Whether DeepSpeed ZeRO-3 partitioned any of ``params``."""
    return any(hasattr(p, "ds_id") for p in params if p is not None)


def saves_no_whole_model() -> bool:
    """Whether this run's DeepSpeed configuration (``accelerate launch --use_deepspeed``, read by
    ``TrainingArguments``) is ZeRO-3 without ``stage3_gather_16bit_weights_on_model_save``: the
    Trainer then saves a model's weights only as DeepSpeed's partitioned checkpoint."""
    from transformers.integrations.deepspeed import deepspeed_config, is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return False
    return not deepspeed_config().get("zero_optimization", {}).get("stage3_gather_16bit_weights_on_model_save", False)


def trains_partitioned(params: Iterable[Tensor | None]) -> bool:
    """Whether ZeRO-3 partitioned ``params`` and any of them is trained (requires grad)."""
    params = [p for p in params if p is not None]
    return partitioned(params) and any(p.requires_grad for p in params)


@contextlib.contextmanager
def gathered(params: Iterable[Tensor | None]) -> Iterator[None]:
    """``params`` whole inside the block and partitioned again after it; a no-op for parameters
    ZeRO-3 did not partition, or that are whole already. Every process must enter it (it is an
    all-gather): gathering a whole model holds all its weights on every process at once."""
    params = [p for p in params if p is not None and hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    # An enclosing gather (or the engine's forward) may hold some whole already: DeepSpeed refuses
    # to gather a parameter twice, and would partition it at this block's end under the other's feet.
    missing = [p for p in params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    with deepspeed.zero.GatheredParameters(missing, enabled=bool(missing)):
        yield


def whole_copies(*params: Tensor | None) -> tuple[Tensor | None, ...]:
    """``params`` themselves, or under ZeRO-3 detached whole copies of them.

    For a projection outside the forward whose backward needs the weight (for the hidden states'
    gradient) after the engine has partitioned it again. A copy cannot pass a gradient on to
    DeepSpeed's partitions, so a parameter that is trained, in a computation that records
    gradients, is refused rather than silently left untrained.
    """
    if not partitioned(params):
        return params
    if torch.is_grad_enabled() and trains_partitioned(params):
        raise RuntimeError("the chunked log-prob head cannot train an output head that DeepSpeed ZeRO-3 partitions: "
                           "its gradient would not reach the partitions. Pass --logprob-chunk-size 0 (full logits)")
    with gathered(params):
        return tuple(None if p is None else p.detach().clone() for p in params)


def inference_engine(model: torch.nn.Module, config: dict) -> torch.nn.Module:
    """``model`` (frozen, partitioned at load) in a DeepSpeed engine without optimizer, in eval mode:
    its hooks gather each module's weights for that module's forward, as the policy's engine does.

    ``config``: the run's DeepSpeed configuration; its optimizer and scheduler are left out, and so
    are values still ``"auto"`` (DeepSpeed's defaults instead). TRL prepares its reference the same way.
    """
    import deepspeed

    def settled(section: dict) -> dict:
        return {key: settled(value) if isinstance(value, dict) else value
                for key, value in section.items() if value != "auto"}

    config = settled(copy.deepcopy(config))
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
