"""What identifies the numbers a model produces: digests of its weights and of its inputs.

An answer kept from an earlier run is only reused when these match exactly
(:mod:`slimepo.eval.answers`), so that a score never belongs to another model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from slimepo import zero3


def weights_sha256(model: torch.nn.Module, skip: Callable[[str], bool] | None = None) -> str:
    """sha256 over every parameter and buffer of ``model`` as loaded: names, dtypes, shapes, bytes.

    A LoRA adapter's weights are among its parameters, so base + adapter hash as one model;
    the same weights in another dtype hash differently (they give other numbers). Tensors
    tied to one storage (an output projection tied to the embedding) count once per name.
    ``skip``: names left out.
    """
    digest = hashlib.sha256()
    with zero3.gathered(model.parameters()):  # DeepSpeed ZeRO-3 leaves each process an empty partition
        for name, tensor in sorted(model.state_dict(keep_vars=False).items()):
            if skip is not None and skip(name):
                continue
            tensor = tensor.detach()
            if isinstance(tensor, DTensor):  # sharded (FSDP2): every process gathers the same whole tensor
                tensor = tensor.full_tensor()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            if tensor.numel():
                digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def token_ids_sha256(ids: Iterable[int]) -> str:
    """sha256 of a token-id sequence (a prompt as the model sees it: text, template and tokenizer)."""
    return hashlib.sha256(json.dumps([int(i) for i in ids]).encode()).hexdigest()


def files_sha256(files: Iterable[Path], salt: str = "") -> str:
    """sha256 over ``files`` (names, sizes and bytes, in the order given) and ``salt`` (e.g. the dtype
    they are loaded in): the weights of an engine that loads them in another process."""
    digest = hashlib.sha256(f"{salt}\n".encode())
    for path in files:
        digest.update(f"{Path(path).name}|{Path(path).stat().st_size}\n".encode())
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
