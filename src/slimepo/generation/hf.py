"""The ``hf`` engine: a transformers model in this process, decoded by
:func:`slimepo.generation.batched.generate` (left-padded batches, stop at any end-of-turn token).

Sample ``i`` of every prompt in a call comes from one :func:`~slimepo.generation.batched.generate`
over all the call's prompts, seeded with :func:`~slimepo.generation.base.sample_seed` of
``decoding.seed + i`` and the call's prompt ids; a run is therefore reproducible for the same
prompts in the same batches, and no two batches share their random draws.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from slimepo.fingerprint import token_ids_sha256, weights_sha256
from slimepo.generation.base import Decoding, Message, Sample, sample_seed
from slimepo.generation.batched import chat_prompt_ids, end_of_turn_ids, generate


class HFEngine:
    """``model`` and ``tokenizer`` already loaded (:meth:`load` loads them); ``batch_size``:
    prompts per ``model.generate`` call."""

    name = "hf"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._weights: str | None = None
        self._eot_ids = end_of_turn_ids(tokenizer)

    @classmethod
    def load(cls, model: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None, *,
             dtype: str = "auto", trust_remote_code: bool = False, batch_size: int = 8) -> HFEngine:
        """``model`` (+ PEFT ``adapter``) loaded as ``slimepo eval`` loads it (a run folder's adapter included)."""
        from slimepo.model import load_model

        policy, tokenizer, _ = load_model(model, adapter, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(policy, tokenizer, batch_size)

    def generate(self, conversations: Sequence[list[Message]], decoding: Decoding, n: int) -> list[list[Sample]]:
        decoding.check_samples(n)
        prompts = [chat_prompt_ids(self.tokenizer, conversation) for conversation in conversations]
        samples: list[list[Sample]] = [[] for _ in prompts]
        batch_digest = token_ids_sha256([t for prompt in prompts for t in [-1, *prompt]])
        for i in range(n):
            generations = generate(
                self.model, self.tokenizer, prompts, max_new_tokens=decoding.max_new_tokens,
                sampling=decoding.sampling, temperature=decoding.temperature, top_p=decoding.top_p,
                seed=sample_seed(decoding.seed + i, batch_digest), batch_size=self.batch_size,
            )
            for answers, generation in zip(samples, generations, strict=True):
                ids = generation.token_ids
                answers.append(Sample(generation.text, ids, bool(ids) and ids[-1] in self._eot_ids, len(ids)))
        return samples

    def identity(self) -> dict[str, Any]:
        if self._weights is None:
            self._weights = weights_sha256(self.model)
        return {"engine": self.name, "weights_sha256": self._weights}

    def prompt_digest(self, conversation: list[Message]) -> str:
        """sha256 of the prompt's token ids: text, chat template and tokenizer."""
        return token_ids_sha256(chat_prompt_ids(self.tokenizer, conversation))
