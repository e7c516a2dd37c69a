"""Generation as the benchmarks call it: :func:`chat_generator` wraps the batched
:func:`slimepo.generation.batched.generate` into MT-Bench's ``conversations -> texts``."""

from __future__ import annotations

from typing import Any

import torch

from slimepo.eval.mtbench import Generate, Message
from slimepo.generation.base import Decoding
from slimepo.generation.batched import chat_prompt_ids, generate


def chat_generator(model: torch.nn.Module, tokenizer: Any, decoding: Decoding, *, batch_size: int = 8) -> Generate:
    """A ``conversations -> texts`` function (``slimepo.eval.mtbench.Generate``) decoding with
    ``decoding``, ``batch_size`` prompts per :func:`generate` batch."""

    def answer(conversations: list[list[Message]]) -> list[str]:
        prompts = [chat_prompt_ids(tokenizer, conversation) for conversation in conversations]
        generations = generate(model, tokenizer, prompts, **decoding.to_dict(), batch_size=batch_size)
        return [generation.text for generation in generations]

    return answer
