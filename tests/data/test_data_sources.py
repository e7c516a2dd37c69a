"""slimepo.data.sources: every local source format reads the same rows, with origins."""

from __future__ import annotations

import json

import datasets
import pytest

from slimepo.data import DataError, Origin, Row, ValidationReport, load_rows, normalize_rows

STRING_ROWS = [
    {"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five."},
    {"prompt": "Name the capital of France.", "chosen": "Paris.", "rejected": "Rome, I think."},
    {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "No."},
]

CONVERSATION_ROWS = [
    {
        "chosen": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "content": "Four."},
        ],
        "rejected": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "content": "Five."},
        ],
        "score_chosen": 9.0,
    },
    {
        "chosen": [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello!"},
        ],
        "rejected": [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "No."},
        ],
        "score_chosen": 7.5,
    },
]

MEMORY_ROWS = [Row(data, Origin("memory", i)) for i, data in enumerate(STRING_ROWS, start=1)]


def _contents(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


@pytest.mark.parametrize(
    "name",
    [
        "rows.jsonl",
        "rows.jsonl.gz",
        "rows.json",
        "rows.parquet",
        "rows.csv",
        "saved_dataset",
        "saved_dataset_dict",
    ],
)
def test_every_source_format_loads_the_same_pairs(write_rows, name):
    path = write_rows(name, STRING_ROWS)
    rows = load_rows(path)
    assert _contents(normalize_rows(rows)) == _contents(normalize_rows(MEMORY_ROWS))
    assert [row.origin.row for row in rows] == [1, 2, 3]


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.parquet", "saved_dataset"])
def test_conversation_rows_load_the_same_from_nested_formats(write_rows, name):
    expected = _contents(
        normalize_rows(load_rows(write_rows("reference.jsonl", CONVERSATION_ROWS)))
    )
    assert _contents(normalize_rows(load_rows(write_rows(name, CONVERSATION_ROWS)))) == expected
    assert len(expected) == 2


def test_dataset_dict_split_is_picked_and_unknown_split_lists_available(write_rows):
    path = write_rows("saved_dataset_dict", STRING_ROWS)
    assert len(load_rows(path, split="test")) == 1
    assert load_rows(path, split="test")[0].origin == Origin(f"{path}[test]", 1)
    with pytest.raises(DataError, match=r"'validation'.*available splits: train, test"):
        load_rows(path, split="validation")


@pytest.mark.parametrize("name", ["missing.jsonl", "sub/dir/missing.parquet", "missing_folder/"])
def test_missing_path_raises_data_error_naming_it(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(DataError, match="no such file or folder") as caught:
        load_rows(str(path))
    assert str(path) in str(caught.value)


def test_relative_path_that_looks_like_a_file_is_not_sent_to_the_hub():
    with pytest.raises(DataError, match="no such file or folder: data/prefs.jsonl"):
        load_rows("data/prefs.jsonl")


def test_folder_that_is_not_a_saved_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        load_rows(tmp_path)


def test_unsupported_file_type_is_refused(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(path)


def test_jsonl_with_invalid_utf8_and_a_truncated_last_line_counts_them_by_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    good = json.dumps(STRING_ROWS[0]).encode()
    path.write_bytes(
        good
        + b"\n"  # line 1
        + b"\n"  # line 2: blank, skipped
        + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'  # line 3: latin-1 byte
        + good
        + b"\n"  # line 4
        + good[: len(good) // 2]  # line 5: cut off mid-object, no newline
    )
    rows = load_rows(path)
    assert [(row.origin.row, row.problem) for row in rows] == [
        (1, None),
        (3, "invalid_json"),
        (4, None),
        (5, "invalid_json"),
    ]
    report = ValidationReport()
    assert len(normalize_rows(rows, report)) == 2
    assert report.counts["invalid_json"] == 2
    assert report.examples["invalid_json"] == [Origin(str(path), 3), Origin(str(path), 5)]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("".join(json.dumps(row) + "\n" for row in STRING_ROWS))
    assert len(load_rows(path)) == 3


def test_json_file_with_split_key_uses_that_split(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"train": STRING_ROWS, "test": STRING_ROWS[:1]}))
    assert len(load_rows(path, split="test")) == 1


def test_broken_json_array_raises_data_error_naming_the_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(STRING_ROWS)[:-10])
    with pytest.raises(DataError, match="rows.json is not valid JSON"):
        load_rows(path)


def test_csv_record_with_invalid_utf8_is_counted_not_fatal(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"prompt,chosen,rejected\nHi,Hello,No\nHi,caf\xe9,No\nHi,Hey,Go away\n")
    rows = load_rows(path)
    assert [row.problem for row in rows] == [None, "invalid_csv", None]
    assert rows[1].origin == Origin(str(path), 2)


def test_csv_reads_fields_longer_than_the_csv_module_default_limit(write_rows):
    long_answer = "word " * 40_000
    path = write_rows("rows.csv", [{"prompt": "Talk.", "chosen": long_answer, "rejected": "No."}])
    assert load_rows(path)[0].data["chosen"] == long_answer


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.csv", "saved_dataset"])
def test_columns_remap_source_names_to_ours(write_rows, name):
    theirs = [
        {"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "prompt": "x"}
        for r in STRING_ROWS
    ]
    rows = load_rows(
        write_rows(name, theirs),
        columns={"prompt": "question", "chosen": "good", "rejected": "bad"},
    )
    assert _contents(normalize_rows(rows)) == _contents(normalize_rows(MEMORY_ROWS))


def test_columns_remap_to_a_missing_dataset_column_lists_the_columns(write_rows):
    path = write_rows("saved_dataset", STRING_ROWS)
    with pytest.raises(DataError, match="'question'.*columns are: prompt, chosen, rejected"):
        load_rows(path, columns={"prompt": "question"})


def test_columns_with_an_unknown_field_name_is_a_value_error(write_rows):
    path = write_rows("rows.jsonl", STRING_ROWS)
    with pytest.raises(ValueError, match="'question'"):
        load_rows(path, columns={"question": "prompt"})


def test_hub_id_goes_to_load_dataset_with_the_split(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(STRING_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_rows("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")]
    assert rows[0].origin == Origin("HuggingFaceH4/ultrafeedback_binarized[train_prefs]", 1)
    assert _contents(normalize_rows(rows)) == _contents(normalize_rows(MEMORY_ROWS))


def test_hub_loading_failure_is_a_data_error_naming_dataset_and_split(monkeypatch):
    def failing_load_dataset(name, split):
        raise ValueError("Unknown split \"validation\". Should be one of ['train'].")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    with pytest.raises(DataError, match="split 'validation' of Hub dataset 'org/prefs'.*Unknown"):
        load_rows("org/prefs", split="validation")
