"""Resumable, batched single-turn answers of a model to benchmark prompts (IFEval, Arena-Hard, AlpacaEval).

Each batch's answers are appended to a JSON-lines file as soon as they exist, one
``{"key", "prompt", "response", "health", "made_by"}`` per prompt (``health``:
:func:`slimepo.eval.health.generation_health`); a rerun answers only the keys not in it,
so a long benchmark interrupted at any point continues where it stopped.

``made_by`` is what produced the answer: ``weights_sha256`` (the model as loaded, adapter
included: :func:`slimepo.fingerprint.weights_sha256`), ``decoding`` (every setting of its
:class:`~slimepo.generation.base.Decoding`: budget, sampling, temperature, top-p, seed) and ``prompt_ids_sha256`` (the prompt as the model saw it: text,
chat template and tokenizer). An answer is kept only when all three equal this run's; a
file holding answers of another model, other decoding or another prompt for a key is
refused (:class:`AnswersMismatchError`), never mixed into a score.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from slimepo.atomic_io import write_text
from slimepo.eval.health import generation_health
from slimepo.fingerprint import token_ids_sha256, weights_sha256
from slimepo.generation.base import BENCH_MAX_NEW_TOKENS, Decoding, Engine, Sample
from slimepo.generation.batched import chat_prompt_ids, end_of_turn_ids, generate

#: How a benchmark prompt is answered unless said otherwise: greedy, up to ``BENCH_MAX_NEW_TOKENS``.
BENCH_DECODING = Decoding(max_new_tokens=BENCH_MAX_NEW_TOKENS)


class AnswersMismatchError(ValueError):
    """An answers file holds answers that this model and these settings did not produce."""


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
        if isinstance(answer, dict) and "key" in answer:
            answers[str(answer["key"])] = answer
    return answers


def check_made_by(path: Path, answers: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Any],
                  prompt_digests: Mapping[str, str]) -> None:
    """Refuse answers not made by ``expected`` (weights and decoding) or for another prompt text;
    the error counts them and names the first with what differs."""
    mismatched: list[tuple[str, list[str]]] = []
    for key, answer in answers.items():
        made_by = answer.get("made_by")
        if not isinstance(made_by, Mapping):
            raise AnswersMismatchError(
                f"{path}: the answer to {key!r} records no model or settings (written by an older slimepo), "
                "so it cannot be told apart from another model's; delete the file to answer afresh, or use another --out"
            )
        differences = [
            f"{name} {_short(made_by.get(name))} (file) vs {_short(value)} (now)"
            for name, value in expected.items() if made_by.get(name) != value
        ]
        if key in prompt_digests and made_by.get("prompt_ids_sha256") != prompt_digests[key]:
            differences.append("the prompt as the model sees it (text, chat template or tokenizer)")
        if differences:
            mismatched.append((key, differences))
    if mismatched:
        key, differences = mismatched[0]
        raise AnswersMismatchError(
            f"{path}: {len(mismatched)} of {len(answers)} answers were made by another model or settings (the "
            f"answer to {key!r}: {'; '.join(differences)}). Keeping them would put another model's answers under "
            "this one's score: use another --out, or delete the file to answer afresh"
        )


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return json.dumps(value, sort_keys=True) if isinstance(value, Mapping) else repr(value)


def answer_prompts(
    model: torch.nn.Module | None,
    tokenizer: Any,
    path: str | os.PathLike[str],
    prompts: Mapping[str, str],
    decoding: Decoding = BENCH_DECODING,
    *,
    batch_size: int = 8,
    desc: str = "answers",
    weights: str | None = None,
    engine: Engine | None = None,
) -> dict[str, dict[str, Any]]:
    """Answer every ``key -> user prompt`` not yet in ``path`` with ``decoding``, ``batch_size``
    prompts per batch; return all answers by key.

    ``weights``: the model's
    :func:`~slimepo.fingerprint.weights_sha256` when the caller has it (computed otherwise).
    ``engine``: answer with this generation engine (``slimepo eval --engine vllm|openai``)
    instead of ``model`` and ``tokenizer`` in this process; ``made_by`` then records its
    identity, and the prompt as it sees it.
    Raises :class:`AnswersMismatchError` when ``path`` holds answers another model,
    other decoding or another prompt text produced. Shows a progress bar of prompts.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine is None:
        made_by = {"weights_sha256": weights or weights_sha256(model), "decoding": decoding.to_dict()}
        prompt_ids = {key: chat_prompt_ids(tokenizer, [{"role": "user", "content": text}])
                      for key, text in prompts.items()}
        digests = {key: token_ids_sha256(ids) for key, ids in prompt_ids.items()}
        lengths = {key: len(ids) for key, ids in prompt_ids.items()}
        eot_ids = end_of_turn_ids(tokenizer)

        def answer(keys: list[str]) -> list[tuple[str, dict[str, Any]]]:
            generations = generate(
                model, tokenizer, [prompt_ids[key] for key in keys], **decoding.to_dict(), batch_size=batch_size,
            )
            return [(g.text, generation_health(g.text, g.token_ids, eot_ids, decoding.max_new_tokens))
                    for g in generations]
    else:
        made_by = {**engine.identity(), "decoding": decoding.to_dict()}
        conversations = {key: [{"role": "user", "content": text}] for key, text in prompts.items()}
        digests = {key: engine.prompt_digest(conversation) for key, conversation in conversations.items()}
        lengths = {key: len(text) for key, text in prompts.items()}

        def answer(keys: list[str]) -> list[tuple[str, dict[str, Any]]]:
            samples = engine.generate([conversations[key] for key in keys], decoding, 1)
            return [(sample.text, sample_health(sample)) for (sample,) in samples]

    answers = read_answers(path)
    check_made_by(path, answers, made_by, digests)
    # Rewritten first: a line torn by a kill must not swallow the next answer appended.
    write_text(path, "".join(json.dumps(a) + "\n" for a in answers.values()))
    todo = [key for key in prompts if key not in answers]
    todo.sort(key=lambda key: -lengths[key])  # similar lengths share a batch
    with path.open("a", encoding="utf-8") as f, tqdm(
        total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="prompt"
    ) as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for key, (text, health) in zip(batch, answer(batch), strict=True):
                answers[key] = {"key": key, "prompt": prompts[key], "response": text, "health": health,
                                "made_by": {**made_by, "prompt_ids_sha256": digests[key]}}
                f.write(json.dumps(answers[key]) + "\n")
            f.flush()
            progress.update(len(batch))
    return answers


def sample_health(sample: Sample) -> dict[str, Any]:
    """:func:`~slimepo.eval.health.generation_health` of an engine's answer, from what the engine
    says of it: ``ended`` (its end-of-turn token came within the budget; for a server, a finish
    reason of ``stop``) and ``length`` (tokens up to and including it)."""
    health = generation_health(sample.text, None, set(), 1)
    return {"ended": sample.ended, "empty": health["empty"], "repetition": health["repetition"],
            "degenerate": health["degenerate"], "length_tokens": sample.length}
