"""``metrics.jsonl``, a run's training log: one JSON object per line.

Each line is ``{"step", "split", "epoch", <metric>: <number>...}`` with ``split`` one of
:data:`SPLITS` (curves) or ``"summary"`` (the trainer's end-of-run totals). Training writes
it (the trainer's logs, the stability monitor) through :func:`append_record`; checkpoint
resume and reports read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPLITS = ("train", "eval", "monitor")


def append_record(path: str | Path, step: int, split: str, epoch: float | None, metrics: Mapping[str, Any]) -> None:
    """Append ``{"step", "split", "epoch", **metrics}`` as one line of ``path``."""
    record = {"step": step, "split": split, "epoch": epoch, **metrics}
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
