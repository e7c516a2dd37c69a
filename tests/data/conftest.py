"""Fixtures for slimepo.data tests: the offline tiny tokenizer and a writer for every
source format the loader accepts."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pyarrow
import pyarrow.parquet
import pytest

from slimepo.testing import tiny_tokenizer


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    name = path.name
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif name.endswith(".parquet"):
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    elif name.endswith(".csv"):
        with open(path, "w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif name.endswith("_dataset"):
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    elif name.endswith("_dataset_dict"):
        datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_list(rows),
                "test": datasets.Dataset.from_list(rows[:1]),
            }
        ).save_to_disk(str(path))
    else:
        raise AssertionError(f"no writer for {name}")
    return path


@pytest.fixture
def write_rows(tmp_path: Path) -> Callable[[str, list[dict[str, Any]]], Path]:
    """``write_rows("x.parquet", rows)`` writes ``rows`` in the format the name implies
    (``*_dataset`` / ``*_dataset_dict``: a save_to_disk folder) and returns the path."""
    return lambda name, rows: _write(tmp_path / name, rows)
