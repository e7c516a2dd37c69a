"""Read raw preference rows from wherever they live.

A source is a Hugging Face Hub dataset id, a folder written by ``datasets``'
``save_to_disk``, or a local ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` file
(``.json``, ``.jsonl`` and ``.csv`` may be gzipped). Every row keeps its origin (file and
1-based row number) so that a bad row can be reported where the user can find it.

A line or record that cannot even be decoded does not stop the read: it becomes a
``Row`` whose ``problem`` names the reason, and validation counts it like any other
bad row.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PAIR_FIELDS = ("prompt", "chosen", "rejected")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_GZIPPABLE = (".jsonl", ".json", ".csv")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# Python's csv module refuses fields over 128 KiB by default; long responses exceed that.
_CSV_FIELD_LIMIT = 2**31 - 1


class DataError(ValueError):
    """The data cannot be used as given; the message says where and why."""


@dataclass(frozen=True)
class Origin:
    """Where a row came from: a file, folder or dataset id, and a 1-based row number.

    For JSONL the row number is the line number; otherwise it is the record's position.
    """

    file: str
    row: int

    def __str__(self) -> str:
        return f"{self.file}:{self.row}"


@dataclass(frozen=True)
class Row:
    """One raw record as read, before any validation.

    ``data`` is usually a dict but may be anything a file holds (a number, a list, None).
    ``problem`` is set (e.g. ``"invalid_json"``) when the record could not be decoded.
    """

    data: Any
    origin: Origin
    problem: str | None = None


def load_rows(
    source: str | os.PathLike[str],
    split: str = "train",
    columns: Mapping[str, str] | None = None,
) -> list[Row]:
    """Read every row of ``source``.

    ``columns`` maps our field names to the source's column names, e.g.
    ``{"prompt": "question", "chosen": "good", "rejected": "bad"}``.
    Raises ``DataError`` when the source itself is missing or unreadable.
    """
    mapping = _check_mapping(columns)
    path = Path(source).expanduser()
    if path.is_dir():
        rows = _read_saved_dataset(path, split, mapping)
    elif path.is_file():
        rows = _read_file(path, split)
    elif isinstance(source, os.PathLike) or not _looks_like_hub_id(str(source)):
        raise DataError(f"no such file or folder: {path}")
    else:
        rows = _read_hub_dataset(str(source), split, mapping)
    if mapping:
        rows = [_remap(row, mapping) for row in rows]
    return rows


def _check_mapping(columns: Mapping[str, str] | None) -> dict[str, str]:
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - set(PAIR_FIELDS))
    if unknown:
        raise ValueError(
            f"columns maps our field names to yours; ours are {', '.join(PAIR_FIELDS)}, "
            f"got {', '.join(map(repr, unknown))}"
        )
    for ours, theirs in mapping.items():
        if not isinstance(theirs, str):
            raise ValueError(f"columns[{ours!r}] must be a column name, got {theirs!r}")
    return mapping


def _looks_like_hub_id(source: str) -> bool:
    lowered = source.lower().removesuffix(".gz")
    return bool(_HUB_ID.fullmatch(source)) and not lowered.endswith(FILE_SUFFIXES)


def _remap(row: Row, mapping: dict[str, str]) -> Row:
    if not isinstance(row.data, dict):
        return row
    data = {key: value for key, value in row.data.items() if key not in mapping}
    for ours, theirs in mapping.items():
        if theirs in row.data:
            data[ours] = row.data[theirs]
    return Row(data, row.origin, row.problem)


# --- datasets: Hub ids and save_to_disk folders -------------------------------------


def _read_hub_dataset(name: str, split: str, mapping: dict[str, str]) -> list[Row]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # network, missing dataset, unknown split: all the user's to fix
        raise DataError(f"cannot load split {split!r} of Hub dataset {name!r}: {err}") from err
    return _rows_of_dataset(dataset, f"{name}[{split}]", mapping)


def _read_saved_dataset(path: Path, split: str, mapping: dict[str, str]) -> list[Row]:
    import datasets

    markers = ("dataset_dict.json", "state.json")
    if not any((path / marker).is_file() for marker in markers):
        raise DataError(
            f"{path} is a folder but not one written by datasets' save_to_disk "
            f"(it has neither {' nor '.join(markers)})"
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged folder; say which one
        raise DataError(f"cannot read the saved dataset in {path}: {err}") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"split {split!r} is not in {path}; available splits: {', '.join(loaded)}"
            )
        return _rows_of_dataset(loaded[split], f"{path}[{split}]", mapping)
    return _rows_of_dataset(loaded, str(path), mapping)


def _rows_of_dataset(dataset: Any, name: str, mapping: dict[str, str]) -> list[Row]:
    for ours, theirs in mapping.items():
        if theirs not in dataset.column_names:
            raise DataError(
                f"column {theirs!r} (given for {ours!r}) is not in {name}; "
                f"its columns are: {', '.join(dataset.column_names)}"
            )
    return [Row(record, Origin(name, index)) for index, record in enumerate(dataset, start=1)]


# --- local files ---------------------------------------------------------------------


def _read_file(path: Path, split: str) -> list[Row]:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name.removesuffix(".gz")
        if not name.endswith(_GZIPPABLE):
            raise DataError(f"{path}: only .json, .jsonl and .csv files may be gzipped")
    try:
        if name.endswith(".jsonl"):
            return _read_jsonl(path)
        if name.endswith(".json"):
            return _read_json(path, split)
        if name.endswith(".csv"):
            return _read_csv(path)
        if name.endswith(".parquet"):
            return _read_parquet(path)
    except (OSError, EOFError) as err:  # unreadable or truncated (e.g. a cut-off .gz)
        raise DataError(f"cannot read {path}: {err}") from err
    raise DataError(
        f"{path}: unsupported file type; use .json, .jsonl, .parquet or .csv "
        "(or a folder written by save_to_disk, or a Hub dataset id)"
    )


def _open(path: Path, mode: str, **kwargs: Any) -> IO[Any]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, mode if "b" in mode else mode + "t", **kwargs)
    return open(path, mode, **kwargs)  # noqa: SIM115 (the caller closes it)


def _parse_json_line(raw: bytes) -> Any:
    """Decode one JSON value; raises ValueError for bad UTF-8, bad JSON or absurd nesting."""
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except RecursionError as err:
        raise ValueError("nested too deeply") from err


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with _open(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            origin = Origin(str(path), line_number)
            try:
                rows.append(Row(_parse_json_line(raw), origin))
            except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
                rows.append(Row(None, origin, problem="invalid_json"))
    return rows


def _read_json(path: Path, split: str) -> list[Row]:
    with _open(path, "rb") as file:
        raw = file.read()
    try:
        data = _parse_json_line(raw)
    except ValueError as err:
        # A .json file that is not one JSON document is most often JSON Lines (the
        # datasets library reads those too); a broken array is reported as what it is.
        if raw.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            raise DataError(f"{path} is not valid JSON: {err}") from err
        return _read_jsonl(path)
    if isinstance(data, dict) and isinstance(data.get(split), list):
        data = data[split]
    if not isinstance(data, list):
        raise DataError(
            f"{path} must hold a list of objects (or {{{split!r}: [...]}}), "
            f"not a JSON {type(data).__name__}"
        )
    return [Row(record, Origin(str(path), index)) for index, record in enumerate(data, start=1)]


def _read_csv(path: Path) -> list[Row]:
    previous_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        # surrogateescape keeps undecodable bytes so the record can be flagged, not lost.
        with _open(path, "r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f)
            try:
                return [
                    _csv_row(record, Origin(str(path), index))
                    for index, record in enumerate(reader, start=1)
                ]
            except csv.Error as err:
                raise DataError(f"{path}, line {reader.line_num}: {err}") from err
    finally:
        csv.field_size_limit(previous_limit)


def _csv_row(record: dict[str, Any], origin: Origin) -> Row:
    if any(isinstance(value, str) and not _is_utf8(value) for value in record.values()):
        return Row(None, origin, problem="invalid_csv")
    return Row(record, origin)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as err:
        raise DataError(f"cannot read Parquet file {path}: {err}") from err
    records = table.to_pylist()
    return [Row(record, Origin(str(path), index)) for index, record in enumerate(records, start=1)]
