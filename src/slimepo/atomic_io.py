"""Files that exist whole or not at all: written beside their target, then renamed over it.

A kill in the middle of a plain ``write_text`` leaves a truncated ``eval.json`` or
``config.yaml`` that a later reader takes for the real one; ``os.replace`` on one
filesystem is atomic, so a reader sees the old file or the new one, never half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    path = Path(path)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike[str], value: Any) -> Path:
    """``value`` as indented JSON, written atomically."""
    return write_text(path, json.dumps(value, indent=2))
