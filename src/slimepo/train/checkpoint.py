"""Crash-safe checkpoints: a checkpoint folder exists complete, or not at all.

``transformers.Trainer`` writes ``checkpoint-N/`` file by file in place; a crash in the
middle leaves a folder that ``get_last_checkpoint`` happily returns. Here every
checkpoint is written under ``<output_dir>/.checkpoint-staging/`` and published by

1. flushing every file to disk (``fsync``),
2. writing ``COMPLETE`` last: JSON ``{"step": N, "files": {relative path: bytes}}``,
3. renaming the folder to ``<output_dir>/checkpoint-N`` (atomic on one filesystem).

A folder counts as a checkpoint only when its ``COMPLETE`` names its own step and
every listed file exists with the listed size, so a half-copied or half-written folder
is never resumed from. Rotation (``save_total_limit``) counts complete checkpoints
only, by step, and never deletes the newest complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

#: Written last into a checkpoint folder; its presence (with matching files) = complete.
MARKER = "COMPLETE"
#: Where checkpoints are written before they are renamed into place.
STAGING_DIR = ".checkpoint-staging"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class IncompleteCheckpointError(ValueError):
    """A checkpoint folder that was not completely written (or is no checkpoint at all)."""


# --- reading: which folders are checkpoints ---------------------------------------------------

def checkpoint_step(path: str | Path) -> int | None:
    match = CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None when it is one."""
    path = Path(path)
    marker = path / MARKER
    if not marker.is_file():
        return f"it has no {MARKER} marker (interrupted while being written, or not a slimepo checkpoint)"
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
        step, files = int(manifest["step"]), dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as err:
        return f"its {MARKER} marker is unreadable ({err})"
    if checkpoint_step(path) not in (None, step):
        return f"its {MARKER} marker is for step {step}, not {checkpoint_step(path)}"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {MARKER} says {size}"
    return None


def require_complete(path: str | Path) -> Path:
    """``path`` if it is a complete checkpoint, else :class:`IncompleteCheckpointError`."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise IncompleteCheckpointError(
            f"{str(path)!r} is not a complete checkpoint: {problem}. "
            "Use --resume auto to continue from the newest complete checkpoint of the output folder."
        )
    return Path(path)


def manifest_step(path: str | Path) -> int:
    """The step recorded in a complete checkpoint's ``COMPLETE`` marker."""
    return int(json.loads((require_complete(path) / MARKER).read_text(encoding="utf-8"))["step"])


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        if checkpoint_step(path) is None or not path.is_dir():
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            found.append(path)
        else:
            logger.warning("ignoring %s: %s", path, problem)
    return sorted(found, key=checkpoint_step)


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


# --- writing: stage, flush, mark, rename ------------------------------------------------------

def staging_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / STAGING_DIR


def clear_staging(output_dir: str | Path) -> Path:
    """Remove what an interrupted save left behind; return the empty staging folder."""
    root = staging_root(output_dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, output_dir: str | Path, step: int) -> Path:
    """Flush ``staged``, write its ``COMPLETE`` marker, rename it to ``output_dir/checkpoint-<step>``."""
    files = sorted(p for p in staged.rglob("*") if p.is_file() and p.name != MARKER)
    for file in files:
        _fsync(file)
    manifest = {"step": step, "files": {str(p.relative_to(staged)): p.stat().st_size for p in files}}
    marker_tmp = staged / f"{MARKER}.tmp"
    marker_tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync(marker_tmp)
    os.replace(marker_tmp, staged / MARKER)
    _fsync(staged)

    final = Path(output_dir) / f"checkpoint-{step}"
    if final.exists():  # only when resuming from an older checkpoint than the newest one
        replaced = staged.parent / f"replaced-{final.name}"
        os.replace(final, replaced)
        os.replace(staged, final)
        shutil.rmtree(replaced)
    else:
        os.replace(staged, final)
    _fsync(final.parent)
    return final


@contextmanager
def staged_checkpoint(output_dir: str | Path, step: int, *, is_writer: bool, wait_for_everyone) -> Iterator[Path]:
    """Yield the folder to save ``checkpoint-<step>`` under; publish it once every process is done.

    If the body raises, nothing is published: the staging folder is cleared by the next save.
    """
    root = clear_staging(output_dir) if is_writer else staging_root(output_dir)
    wait_for_everyone()
    yield root
    wait_for_everyone()  # every process has written its files (e.g. rng_state_<rank>.pth)
    if is_writer:
        publish(root / f"checkpoint-{step}", output_dir, step)
        _remove_if_empty(root)
    wait_for_everyone()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


#: slimepo's own resumable state beside the Trainer's (the count of skipped steps).
RUN_STATE = "slimepo_state.json"


def write_run_state(folder: str | Path, state: dict) -> None:
    (Path(folder) / RUN_STATE).write_text(json.dumps(state), encoding="utf-8")


def read_run_state(folder: str | Path) -> dict:
    path = Path(folder) / RUN_STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# --- after a save, and on resume --------------------------------------------------------------

def rotate(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep``; the newest complete one always stays.

    Incomplete ``checkpoint-N`` folders (from another writer) are neither counted nor touched.
    """
    if not keep:
        return []
    found = complete_checkpoints(output_dir)
    doomed = found[: max(len(found) - max(keep, 1), 0)]
    trash = staging_root(output_dir)
    for path in doomed:
        logger.info("deleting %s (save_total_limit=%d)", path, keep)
        # Renamed out of sight first: a crash mid-delete must not leave a gutted checkpoint-N.
        trash.mkdir(exist_ok=True)
        os.replace(path, trash / f"deleted-{path.name}")
        shutil.rmtree(trash / f"deleted-{path.name}")
    _remove_if_empty(trash)
    return doomed


def trim_metrics(path: str | Path, step: int) -> int:
    """Drop metrics.jsonl lines written after checkpoint ``step``; return how many were dropped.

    Kept: every line before ``step``, and the lines of ``step`` itself that precede its
    checkpoint (train/eval/monitor; the end-of-run summary comes after it). A torn last
    line (killed mid-write) is dropped too.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            keep = record["step"] < step or (record["step"] == step and record.get("split") != "summary")
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped
