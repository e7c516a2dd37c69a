"""``samples.jsonl``: every sampled answer with its score and what made it, appended batch by batch.

One line per answer: ``{"key", "row", "sample", "prompt", "response", "token_ids", "ended",
"length", "score", "score_detail", "score_error", "made_by", "scored_by"}``.

- ``made_by``: the engine's identity (``engine`` and ``weights_sha256`` of the model as loaded,
  adapter included; or the server's ``url`` and ``model``), ``decoding`` and
  ``prompt_ids_sha256`` (the prompt as the model sees it). Kept only when all equal this
  run's; a file holding another model's, decoding's or prompt's answers is refused
  (:func:`slimepo.eval.answers.check_made_by`), never mixed in.
- ``scored_by``: the scorer and its settings. Answers scored by another scorer, or whose
  scoring failed, are scored again (scoring is cheap next to sampling), so one set of samples
  can be scored several ways.

A prompt counts as sampled when its answers ``0 .. k-1`` are all in the file; the lines of a
prompt cut short by a kill are dropped when the file is read, and the prompt is sampled again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from slimepo.atomic_io import write_text
from slimepo.eval.answers import check_made_by

SAMPLES_FILE = "samples.jsonl"


def sample_id(key: str, index: int) -> str:
    return f"{key}#{index}"


def read_samples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The sample lines of ``path`` (none if absent); lines torn by a kill are ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    samples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            sample = json.loads(line)
        except ValueError:
            continue
        if isinstance(sample, dict) and {"key", "sample", "made_by"} <= set(sample):
            samples.append(sample)
    return samples


def sampled_prompts(path: Path, samples: Iterable[Mapping[str, Any]], k: int, made_by: Mapping[str, Any],
                    digests: Mapping[str, str]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """``(sampled, kept)``: the answers ``0 .. k-1`` of every prompt of ``digests`` fully sampled, by
    key; and the lines to keep in the file: all but the answers of this run's prompts cut short
    (they are sampled again), each answer once.

    ``made_by``: this run's engine identity and decoding; ``digests``: prompt digest by key.
    Raises :class:`slimepo.eval.answers.AnswersMismatchError` when any sample was made otherwise.
    """
    by_id = {sample_id(str(s["key"]), int(s["sample"])): dict(s) for s in samples}
    prompt_digests = {sid: digests[str(s["key"])] for sid, s in by_id.items() if str(s["key"]) in digests}
    check_made_by(path, by_id, made_by, prompt_digests)
    by_key: dict[str, dict[int, dict[str, Any]]] = {}
    for sample in by_id.values():
        by_key.setdefault(str(sample["key"]), {})[int(sample["sample"])] = sample
    sampled = {key: [answers[i] for i in range(k)] for key, answers in by_key.items()
               if key in digests and all(i in answers for i in range(k))}
    kept = [s for key, answers in by_key.items() if key in sampled or key not in digests for s in answers.values()]
    return sampled, kept


def write_samples(path: Path, samples: Iterable[Mapping[str, Any]]) -> None:
    """Rewrite ``path`` with exactly ``samples`` (atomically: a kill leaves the old file)."""
    write_text(path, "".join(json.dumps(s) + "\n" for s in samples))
