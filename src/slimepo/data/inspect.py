"""What training sees of the first pairs of a dataset: tokens, trained spans, truncation.

    print(inspect_pairs("demo", "default", n=3))

Each pair shows its prompt tokens, then each response's tokens (all of them are trained
on; the prompt is not), one ``[token]`` per token with special tokens as written and
``\\n``, ``\\t``, ``\\r`` escaped, and how many tokens truncation cut from each part.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from slimepo.data import demo_file
from slimepo.data.formats import ValidationReport, normalize_rows
from slimepo.data.sources import DataError, load_rows
from slimepo.data.tokenize import TokenizedPair, check_lengths, tokenize_pairs

DEMO = "demo"  # as --dataset demo of the CLI
_UNLIMITED = 2**62


def inspect_pairs(
    source: str | os.PathLike[str],
    tokenizer: Any,
    *,
    n: int = 3,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    chat_template: str | os.PathLike[str] = "auto",
    max_length: int = 1024,
    max_prompt_length: int = 512,
) -> str:
    """The first ``n`` usable pairs of ``source`` as training tokenizes them, as text.

    ``source``: as for :func:`slimepo.data.prepare_pairs`, or ``"demo"`` (the shipped set's
    ``split``). ``tokenizer``: a tokenizer, or a model name / path to load one from.
    """
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    check_lengths(max_length, max_prompt_length)
    if isinstance(tokenizer, (str, os.PathLike)):
        from slimepo.model import load_tokenizer

        tokenizer = load_tokenizer(str(tokenizer))
    if str(source) == DEMO:
        source, split = demo_file(split), "train"
    report = ValidationReport()
    pairs = normalize_rows(load_rows(source, split=split, columns=columns), report)
    lines = [str(report), f"max_length {max_length}, max_prompt_length {max_prompt_length}"]
    shown = 0
    for pair in pairs:
        mismatches = report.template_mismatches
        kept = tokenize_pairs([pair], tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                              chat_template=chat_template, report=report)
        if not kept:
            continue
        with warnings.catch_warnings():  # the call above warned already
            warnings.simplefilter("ignore")
            (whole,) = tokenize_pairs([pair], tokenizer, max_length=_UNLIMITED, max_prompt_length=_UNLIMITED - 1,
                                      chat_template=chat_template)
        shown += 1
        lines += ["", *_pair_lines(shown, kept[0], whole, tokenizer)]
        if report.template_mismatches > mismatches:
            lines.append("  chat template mismatch: prompt and responses were tokenized apart (see the warning)")
        if shown == n:
            break
    if not shown:
        raise DataError(f"no usable preference pairs in {source}\n{report}")
    return "\n".join(lines)


def _pair_lines(number: int, pair: TokenizedPair, untruncated: TokenizedPair, tokenizer: Any) -> list[str]:
    lengths = {part: len(getattr(pair, f"{part}_ids")) for part in ("prompt", "chosen", "rejected")}
    lines = [f"pair {number} ({pair.origin}): " + ", ".join(f"{part} {count} tokens" for part, count in lengths.items())]
    for part, how in (("prompt", "not trained"), ("chosen", "trained"), ("rejected", "trained")):
        cut = len(getattr(untruncated, f"{part}_ids")) - lengths[part]
        where = "--max-prompt-length, from the left" if part == "prompt" else "--max-length, from the right"
        note = f"; {cut} cut by {where}" if cut else ""
        lines += [f"  {part} ({how}{note}):", "    " + _shown(tokenizer, getattr(pair, f"{part}_ids"))]
    return lines


def _shown(tokenizer: Any, token_ids: list[int]) -> str:
    """``[token]`` per token, whitespace control characters escaped."""
    texts = (tokenizer.decode([token_id]) for token_id in token_ids)
    return "".join("[" + t.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + "]" for t in texts)
