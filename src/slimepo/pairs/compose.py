"""Verifiable training prompts from IFEval's taxonomy (``slimepo make-prompts``).

A base request (any dataset's prompts; by default the shipped demo's, without their
constraint sentence) gets 1-3 instructions of IFEval's types (Zhou et al. 2023), drawn
without the pairs IFEval lists as conflicting. Each instruction's kwargs and its wording are
the official instruction class's own: ``build_description()`` draws them at random as the
benchmark's generator does (keywords from its word list, counts in its ranges), here under a
seed derived from ``--seed``, the request's text and the copy's number, so a prompt does not
change when other requests are added. Every instruction is checked by the official checker
built from the recorded kwargs (:func:`slimepo.ifeval_checkers.build_checker`). Two
deviations, both so that every prompt can be obeyed:

- ``length_constraints:nth_paragraph_first_word``: IFEval's generator may ask for paragraph
  ``n + 1`` of ``n``, which no answer has; such a draw is drawn again;
- ``combination:repeat_prompt``: the request to repeat is the base request (IFEval's kwargs
  hold it too; its generator cannot make one without it).

A prompt is ``request + " " + the instructions' descriptions``, written as
``{key, prompt, instruction_id_list, kwargs, request}`` (IFEval's ``input_data.jsonl`` fields
plus the request), which ``slimepo pairs --scorer ifeval`` reads. A request that occurs,
after :func:`normalize`, inside any IFEval or IFBench test prompt is left out and counted,
so that training prompts never hold a benchmark's request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from slimepo.atomic_io import write_json, write_text
from slimepo.constraints import Constraint, instruction
from slimepo.ifeval_checkers import registry, seeded_random
from slimepo.pairs.config import MakePromptsConfig
from slimepo.pairs.prompts import PromptRecord, read_prompts

#: The draw of each instruction is retried at most this often when it cannot be obeyed.
MAX_DRAWS = 100


def normalize(text: str) -> str:
    """Lowercase words separated by single spaces: punctuation and spacing do not hide a match."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def request_of(record: PromptRecord) -> str:
    """The base request of a prompt: its last user turn, without the slimepo constraint sentence
    that ends it when the row carries that ``constraint`` (as the demo rows do)."""
    text = record.request.strip()
    raw = record.data.get("constraint")
    if isinstance(raw, Mapping):
        sentence = instruction(Constraint.from_dict(raw))
        if text.endswith(sentence):
            text = text[: -len(sentence)].strip()
    return text


def benchmark_requests() -> list[str]:
    """The normalized prompts of IFEval (541) and IFBench's test set (300)."""
    from slimepo.eval.ifeval import load_prompts

    return [normalize(record["prompt"]) for benchmark in ("ifeval", "ifbench")
            for record in load_prompts(benchmark=benchmark)]


def base_requests(records: Iterable[PromptRecord], benchmark: Sequence[str] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The distinct requests of ``records`` (first occurrence kept) not found in any ``benchmark``
    prompt (normalized; default :func:`benchmark_requests`), and what was left out."""
    benchmark = benchmark_requests() if benchmark is None else benchmark
    requests, seen = [], set()
    report: dict[str, Any] = {"read": 0, "duplicates": 0, "in_a_benchmark": []}
    for record in records:
        report["read"] += 1
        text = request_of(record)
        key = normalize(text)
        if key in seen:
            report["duplicates"] += 1
            continue
        seen.add(key)
        if any(key in prompt for prompt in benchmark):
            report["in_a_benchmark"].append(text)
            continue
        requests.append(text)
    return requests, report


def conflicts() -> dict[str, set[str]]:
    """IFEval's conflicting instruction types, made symmetric (as its own ``conflict_make`` does)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    table = {key: set(values) | {key} for key, values in INSTRUCTION_CONFLICTS.items()}
    for key, values in INSTRUCTION_CONFLICTS.items():
        for other in values:
            table.setdefault(other, {other}).add(key)
    return table


def compose_prompt(request: str, rng: random.Random, types: Sequence[str], count: int,
                   table: Mapping[str, set[str]]) -> dict[str, Any]:
    """``request`` with ``count`` instructions (fewer when the types left all conflict) drawn by ``rng``."""
    chosen: list[str] = []
    for instruction_id in rng.sample(sorted(types), len(types)):
        if len(chosen) == count:
            break
        if not any(instruction_id in table.get(other, ()) or other in table.get(instruction_id, ()) for other in chosen):
            chosen.append(instruction_id)
    descriptions, kwargs = [], []
    for instruction_id in chosen:
        description, args = _draw(instruction_id, request, rng)
        descriptions.append(description)
        kwargs.append(args)
    prompt = f"{request} {' '.join(descriptions)}"
    return {"key": "if-" + hashlib.sha256(prompt.encode()).hexdigest()[:12], "prompt": prompt,
            "instruction_id_list": chosen, "kwargs": kwargs, "request": request}


def _draw(instruction_id: str, request: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The official class's description and kwargs, drawn under a seed from ``rng``."""
    given = {"prompt_to_repeat": request} if instruction_id == "combination:repeat_prompt" else {}
    for _ in range(MAX_DRAWS):
        checker = registry("ifeval")[instruction_id](instruction_id)
        with seeded_random(rng.randrange(2**32)):
            description = checker.build_description(**given)
        args = dict(checker.get_instruction_args() or {})
        if args.get("nth_paragraph", 0) <= args.get("num_paragraphs", 0):
            return description, args
    raise RuntimeError(f"{instruction_id}: no draw that can be obeyed in {MAX_DRAWS} tries")


def compose_prompts(
    requests: Sequence[str], *, seed: int = 0, per_request: int = 1, min_instructions: int = 1,
    max_instructions: int = 3, instruction_types: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``per_request`` prompts per request, each with ``min_instructions``..``max_instructions``
    IFEval instructions of ``instruction_types`` (default: all of IFEval's)."""
    if not 1 <= min_instructions <= max_instructions:
        raise ValueError(f"need 1 <= min_instructions <= max_instructions, got {min_instructions}, {max_instructions}")
    types = list(instruction_types) or sorted(registry("ifeval"))
    table = conflicts()
    rows: dict[str, dict[str, Any]] = {}
    for request in requests:
        for copy in range(per_request):
            rng = random.Random(f"{seed}/{copy}/{request}")
            row = compose_prompt(request, rng, types, rng.randint(min_instructions, max_instructions), table)
            rows.setdefault(row["key"], row)  # two copies drawn alike are one prompt
    return list(rows.values())


def make_prompts(config: MakePromptsConfig) -> dict[str, Any]:
    """Compose the prompts ``config`` asks for into ``config.out`` (JSONL) and write what made them
    beside it (``<out>.provenance.json``); return that record."""
    config.validate()
    records, bad = read_prompts(config.requests, config.split, config.columns or None)
    requests, report = base_requests(records)
    rows = compose_prompts(requests, seed=config.seed, per_request=config.per_request,
                           min_instructions=config.min_instructions, max_instructions=config.max_instructions,
                           instruction_types=config.instruction_types)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, "".join(json.dumps(row) + "\n" for row in rows))
    provenance = {
        "command": "slimepo make-prompts", "config": dataclasses.asdict(config),
        "requests": {**report, "used": len(requests), "bad_rows": [b.to_dict() for b in bad]},
        "prompts": len(rows),
        "instructions": dict(sorted(Counter(i for row in rows for i in row["instruction_id_list"]).items())),
    }
    write_json(out.with_name(out.name + ".provenance.json"), provenance)
    return provenance
