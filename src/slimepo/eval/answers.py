"""Resumable, batched single-turn answers of a model to benchmark prompts (IFEval, Arena-Hard).

Each batch's answers are appended to a JSON-lines file as soon as they exist, one
``{"key", "prompt", "response", "health"}`` per prompt (``health``:
:func:`slimepo.eval.health.generation_health`); a rerun answers only the keys not in it,
so a long benchmark interrupted at any point continues where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from slimepo.eval.generate import chat_prompt_ids, end_of_turn_ids, generate
from slimepo.eval.health import generation_health


def read_answers(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Answers written so far, by key; lines that are not JSON (torn by a kill) are ignored."""
    path = Path(path)
    answers: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return answers
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        answers[str(answer["key"])] = answer
    return answers


def answer_prompts(
    model: torch.nn.Module,
    tokenizer: Any,
    path: str | os.PathLike[str],
    prompts: Mapping[str, str],
    *,
    max_new_tokens: int = 1024,
    batch_size: int = 8,
    desc: str = "answers",
    **decoding: Any,
) -> dict[str, dict[str, Any]]:
    """Answer every ``key -> user prompt`` not yet in ``path``; return all answers by key.

    ``decoding``: ``sampling``, ``temperature``, ``top_p``, ``seed`` of
    :func:`slimepo.eval.generate.generate`. Shows a progress bar of prompts.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    answers = read_answers(path)
    # Rewritten first: a line torn by a kill must not swallow the next answer appended.
    path.write_text("".join(json.dumps(a) + "\n" for a in answers.values()), encoding="utf-8")
    todo = [key for key in prompts if key not in answers]
    prompt_ids = {key: chat_prompt_ids(tokenizer, [{"role": "user", "content": prompts[key]}]) for key in todo}
    todo.sort(key=lambda key: -len(prompt_ids[key]))  # similar lengths share a batch
    eot_ids = end_of_turn_ids(tokenizer)
    with path.open("a", encoding="utf-8") as f, tqdm(
        total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="prompt"
    ) as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            generations = generate(
                model, tokenizer, [prompt_ids[key] for key in batch],
                max_new_tokens=max_new_tokens, batch_size=batch_size, **decoding,
            )
            for key, generation in zip(batch, generations, strict=True):
                health = generation_health(generation.text, generation.token_ids, eot_ids, max_new_tokens)
                answers[key] = {"key": key, "prompt": prompts[key], "response": generation.text, "health": health}
                f.write(json.dumps(answers[key]) + "\n")
            f.flush()
            progress.update(len(batch))
    return answers
