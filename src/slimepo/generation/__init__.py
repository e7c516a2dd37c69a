"""Generation engines behind one interface (:class:`~slimepo.generation.base.Engine`).

- ``hf``: a transformers model (+ PEFT adapter) in this process (:mod:`~slimepo.generation.hf`);
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` server (:mod:`~slimepo.generation.openai_api`);
- ``vllm``: vLLM's offline engine in this process (:mod:`~slimepo.generation.vllm_engine`), from the venv
  ``make vllm-env`` builds (vLLM is not a slimepo requirement).

``make_engine(name, ...)`` builds one by name, as ``slimepo pairs --engine`` does.
"""

from __future__ import annotations

import os

from slimepo.generation.base import (
    ENGINES,
    VLLM_SETUP,
    Decoding,
    Engine,
    Message,
    Sample,
    vllm_installed,
)


class EngineUnavailable(ValueError):
    """An engine that cannot run here; the message says what to use instead."""


def make_engine(
    name: str, *, model: str | os.PathLike[str] = "default", adapter: str | os.PathLike[str] | None = None,
    dtype: str = "auto", trust_remote_code: bool = False, batch_size: int = 8, url: str | None = None,
    served_model: str | None = None, key_env: str = "OPENAI_API_KEY",
) -> Engine:
    """The engine ``name`` (:data:`ENGINES`): ``hf`` loads ``model`` (+ ``adapter``); ``openai`` asks
    ``url`` for ``served_model`` (default: ``model``); ``vllm`` loads ``model`` (+ ``adapter``) into vLLM, or
    raises :class:`EngineUnavailable` saying how to install it (:data:`VLLM_SETUP`)."""
    if name == "hf":
        from slimepo.generation.hf import HFEngine

        return HFEngine.load(model, adapter, dtype=dtype, trust_remote_code=trust_remote_code, batch_size=batch_size)
    if name == "openai":
        from slimepo.generation.openai_api import OpenAIEngine

        if not url:
            raise EngineUnavailable("the openai engine needs --engine-url, e.g. http://localhost:8000/v1")
        return OpenAIEngine(url, served_model or str(model), key_env)
    if name == "vllm":
        from slimepo.generation.vllm_engine import VLLMEngine

        return VLLMEngine.load(model, adapter, dtype=dtype, trust_remote_code=trust_remote_code)
    raise EngineUnavailable(f"unknown engine {name!r}; engines: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "VLLM_SETUP", "Decoding", "Engine", "EngineUnavailable", "Message", "Sample", "make_engine", "vllm_installed"]
