"""The ``openai`` engine: any OpenAI-compatible ``/v1/chat/completions`` server (``vllm serve``,
SGLang, llama.cpp's server, a hosted API) answers the prompts.

One request per sample: sample ``i`` is requested with ``"n": 1`` and the seed
:func:`~slimepo.generation.base.sample_seed` of ``decoding.seed + i`` and the prompt's
digest, so each sample's length (``usage.completion_tokens``) and end (``finish_reason ==
"stop"``) are known, and a server that honours seeds repeats it.
Greedy decoding is sent as temperature 0. The server applies its own chat template, so a
prompt's digest is that of its messages.

The URL follows the judge's rules (:func:`slimepo.endpoints.check_api_url`: ``http(s)``,
no ``user:password@``), the key comes only from the environment variable named by
``key_env`` and no redirect is ever followed. Network errors, timeouts, HTTP 408/429/5xx
and malformed replies are retried with exponential back-off; requests run ``workers`` at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slimepo.endpoints import (
    RefusedError,
    RetryableError,
    check_api_url,
    no_redirects_opener,
    post_json,
)
from slimepo.generation.base import Decoding, Message, Sample, sample_seed


class EngineError(RuntimeError):
    """The server gave no usable answer."""


class _Retryable(Exception):
    """A failure a later attempt may not repeat."""


class OpenAIEngine:
    """Args:
        url: the API base (``http://host:8000/v1``) or the full ``.../chat/completions`` URL.
        model: the model name sent in each request (as the server knows it).
        key_env: environment variable holding the API key; no ``Authorization`` header when unset.
        max_retries, backoff, timeout: retries after the first attempt, seconds before the first
            retry (doubled before each next), seconds per request.
        workers: requests in flight at once.
    """

    name = "openai"

    def __init__(self, url: str, model: str, key_env: str = "OPENAI_API_KEY", *, max_retries: int = 5,
                 backoff: float = 1.0, timeout: float = 300, workers: int = 4) -> None:
        if max_retries < 0 or backoff < 0 or timeout <= 0 or workers < 1:
            raise ValueError("max_retries and backoff must be >= 0, timeout > 0 and workers >= 1")
        check_api_url(url, "engine_url")
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.max_retries, self.backoff, self.timeout, self.workers = max_retries, backoff, timeout, workers
        self._api_key = os.environ.get(key_env)
        self._opener = no_redirects_opener()

    def generate(self, conversations: Sequence[list[Message]], decoding: Decoding, n: int) -> list[list[Sample]]:
        decoding.check_samples(n)
        jobs = [(conversation, sample_seed(decoding.seed + i, self.prompt_digest(conversation)))
                for conversation in conversations for i in range(n)]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            samples = list(pool.map(lambda job: self._sample(job[0], decoding, job[1]), jobs))
        return [samples[row * n : (row + 1) * n] for row in range(len(conversations))]

    def identity(self) -> dict[str, Any]:
        return {"engine": self.name, "url": self.url, "model": self.model}

    def prompt_digest(self, conversation: list[Message]) -> str:
        """sha256 of the messages (the server applies its own template)."""
        return hashlib.sha256(json.dumps(conversation, sort_keys=True).encode()).hexdigest()

    def _sample(self, conversation: list[Message], decoding: Decoding, seed: int) -> Sample:
        body = {
            "model": self.model, "messages": conversation, "max_tokens": decoding.max_new_tokens, "n": 1, "seed": seed,
            "temperature": decoding.temperature if decoding.sampling else 0.0,
            "top_p": decoding.top_p if decoding.sampling else 1.0,
        }
        payload = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._post(payload)
            except _Retryable as error:
                last_error = error
        raise EngineError(f"{self.url}: no usable reply after {self.max_retries + 1} attempts: {last_error}")

    def _post(self, payload: bytes) -> Sample:
        try:
            raw = post_json(self._opener, self.url, payload, self._api_key, self.timeout, key="key", flag="--engine-url")
        except RetryableError as error:
            raise _Retryable(str(error)) from error
        except RefusedError as error:
            raise EngineError(f"{self.url}: {error}") from error
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise _Retryable(f"malformed reply: {raw[:200]!r}") from error
        if not isinstance(text, str):
            raise _Retryable(f"reply content is not text: {text!r}")
        usage = reply.get("usage") if isinstance(reply, dict) else None
        length = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return Sample(text.strip(), None, choice.get("finish_reason") == "stop", length if isinstance(length, int) else None)
