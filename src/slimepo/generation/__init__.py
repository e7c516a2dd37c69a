"""Generation engines behind one interface (:class:`~slimepo.generation.base.Engine`).

- ``hf``: a transformers model (+ PEFT adapter) in this process (:mod:`~slimepo.generation.hf`);
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` server (:mod:`~slimepo.generation.openai_api`);
- ``vllm``: not built in (see :data:`VLLM_HELP`); serve the model with ``vllm serve`` and use ``openai``.

``make_engine(name, ...)`` builds one by name, as ``slimepo pairs --engine`` does.
"""

from __future__ import annotations

import os

from slimepo.generation.base import Decoding, Engine, Message, Sample

ENGINES = ("hf", "openai", "vllm")

VLLM_HELP = (
    "the vllm engine is not built into slimepo: vLLM's CPU build pins an older transformers than slimepo needs, "
    "so the two do not install together. Serve the model with vLLM in its own environment and point the openai "
    "engine at it: `vllm serve MODEL --port 8000` (add `--enable-lora --lora-modules NAME=ADAPTER` for an adapter), "
    "then `--engine openai --engine-url http://localhost:8000/v1 --engine-model MODEL` (or NAME)"
)


class EngineUnavailable(ValueError):
    """An engine that cannot run here; the message says what to use instead."""


def make_engine(
    name: str, *, model: str | os.PathLike[str] = "default", adapter: str | os.PathLike[str] | None = None,
    dtype: str = "auto", trust_remote_code: bool = False, batch_size: int = 8, url: str | None = None,
    served_model: str | None = None, key_env: str = "OPENAI_API_KEY",
) -> Engine:
    """The engine ``name`` (:data:`ENGINES`): ``hf`` loads ``model`` (+ ``adapter``); ``openai`` asks
    ``url`` for ``served_model`` (default: ``model``); ``vllm`` raises :class:`EngineUnavailable`."""
    if name == "hf":
        from slimepo.generation.hf import HFEngine

        return HFEngine.load(model, adapter, dtype=dtype, trust_remote_code=trust_remote_code, batch_size=batch_size)
    if name == "openai":
        from slimepo.generation.openai_api import OpenAIEngine

        if not url:
            raise EngineUnavailable("the openai engine needs --engine-url, e.g. http://localhost:8000/v1")
        return OpenAIEngine(url, served_model or str(model), key_env)
    if name == "vllm":
        raise EngineUnavailable(VLLM_HELP)
    raise EngineUnavailable(f"unknown engine {name!r}; engines: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Decoding", "Engine", "EngineUnavailable", "Message", "Sample", "make_engine"]
