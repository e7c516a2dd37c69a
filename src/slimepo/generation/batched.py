"""Batched generation for chat prompts, as a user of the model would see it.

Prompts are token ids (``TokenizedPair.prompt_ids``: the chat template with the
generation prompt, exactly what the model was trained to continue), left-padded so that
every row's last prompt token sits at the same position and the next token is generated
from it. With an attention mask and position ids counted from each row's first real
token, a batch gives the same greedy tokens as one prompt at a time.

Decoding stops at any end-of-turn id (:func:`end_of_turn_ids`) or after
``max_new_tokens``; a :class:`Generation` keeps the new ids up to and including the first
end-of-turn id, which is what :func:`slimepo.eval.health.generation_health` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import set_seed

from slimepo.generation.base import Decoding, Message

#: End-of-turn tokens of common chat templates: ChatML, Llama 3, Gemma.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")


@dataclass(frozen=True)
class Generation:
    """One response: ``text`` decoded without special tokens and stripped; ``token_ids``
    the new tokens up to and including the first end-of-turn id (all of them if none)."""

    text: str
    token_ids: list[int]


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's EOS plus those of :data:`END_OF_TURN_TOKENS` in its vocabulary."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[token] for token in END_OF_TURN_TOKENS if token in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = Decoding.max_new_tokens,
    sampling: bool = Decoding.sampling,
    temperature: float = Decoding.temperature,
    top_p: float = Decoding.top_p,
    seed: int = Decoding.seed,
    batch_size: int = 8,
) -> list[Generation]:
    """Continue every prompt (token ids) in left-padded batches; one result per prompt.

    The decoding settings are :class:`~slimepo.generation.base.Decoding`'s, spelled out
    (``**decoding.to_dict()``) so that an engine can draw each sample under its own seed.
    Greedy unless ``sampling``; sampling draws from ``softmax(logits / temperature)``
    restricted to the top-``top_p`` nucleus (no top-k cut), seeded by ``seed`` once
    before the first batch, so a run is reproducible for a given ``batch_size``.
    """
    Decoding(max_new_tokens, sampling, temperature, top_p, seed)  # refuses what cannot be decoded
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    eot_ids = end_of_turn_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eot_ids)
    options: dict[str, Any] = {"do_sample": sampling, "max_new_tokens": max_new_tokens}
    if sampling:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    set_seed(seed)
    # Longest first: rows of similar length share a batch and little padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, width - len(prompts[i]) :] = torch.tensor(list(prompts[i]))
                attention_mask[row, width - len(prompts[i]) :] = 1
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                eos_token_id=sorted(eot_ids),
                pad_token_id=pad_id,
                use_cache=True,
                **options,
            )
            for row, i in enumerate(batch):
                new_ids = output[row, width:].tolist()
                first_eot = next((k for k, t in enumerate(new_ids) if t in eot_ids), None)
                token_ids = new_ids if first_eot is None else new_ids[: first_eot + 1]
                text = tokenizer.decode(token_ids, skip_special_tokens=True).strip()
                results[i] = Generation(text, token_ids)
    finally:
        model.train(was_training)
    return [result for result in results if result is not None]


def chat_prompt_ids(tokenizer: Any, conversation: list[Message]) -> list[int]:
    """Token ids the model continues to answer ``conversation`` (its last turn is the user's).

    With a chat template: the template with the generation prompt, tokenized without
    added special tokens (as ``slimepo.data`` tokenizes training prompts). Without one:
    the turns' texts separated by blank lines, after BOS when the tokenizer adds it.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(message["content"] for message in conversation)
    return list(tokenizer(text)["input_ids"])
