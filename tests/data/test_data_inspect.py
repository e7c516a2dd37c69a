"""slimepo.data.inspect and ``slimepo inspect-data``: token boundaries, trained spans and
truncation counts, checked by hand against the tiny ChatML tokenizer."""

from __future__ import annotations

import json

import pytest

from slimepo.cli import main
from slimepo.data import DataError, demo_file
from slimepo.data.inspect import inspect_pairs
from slimepo.testing import tiny_tokenizer

ROW = {"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five, I think."}
PROMPT_TOKENS = (
    "[<|im_start|>][us][er][\\n][What][ is][ two][ plus][ two][?][<|im_end|>][\\n][<|im_start|>][a][ss][istant][\\n]"
)


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tokenizer_folder(tmp_path):
    folder = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_cli_prints_prompt_and_trained_response_tokens_with_counts(pairs_file, tokenizer_folder, capsys):
    assert main(["inspect-data", "--model", str(tokenizer_folder), "--dataset", str(pairs_file)]) == 0
    assert capsys.readouterr().out == "\n".join([
        f"{pairs_file}: 1 rows, 1 kept, 0 skipped (0.0%)",
        "max_length 1024, max_prompt_length 512",
        "",
        f"pair 1 ({pairs_file}:1): prompt 17 tokens, chosen 5 tokens, rejected 10 tokens",
        "  prompt (not trained):",
        "    " + PROMPT_TOKENS,
        "  chosen (trained):",
        "    [F][ou][r][.][<|im_end|>]",
        "  rejected (trained):",
        "    [F][iv][e][,][ I][ th][in][k][.][<|im_end|>]",
        "",
    ])


def test_cli_reports_what_truncation_cut_from_each_part(pairs_file, tokenizer_folder, capsys):
    argv = ["inspect-data", "--model", str(tokenizer_folder), "--dataset", str(pairs_file),
            "--max-length", "14", "--max-prompt-length", "12"]
    assert main(argv) == 0
    # 17 prompt tokens keep their last 12; each response keeps 14 - 12 = 2 of 5 and 10.
    assert capsys.readouterr().out.splitlines()[3:] == [
        f"pair 1 ({pairs_file}:1): prompt 12 tokens, chosen 2 tokens, rejected 2 tokens",
        "  prompt (not trained; 5 cut by --max-prompt-length, from the left):",
        "    [ is][ two][ plus][ two][?][<|im_end|>][\\n][<|im_start|>][a][ss][istant][\\n]",
        "  chosen (trained; 3 cut by --max-length, from the right):",
        "    [F][ou]",
        "  rejected (trained; 8 cut by --max-length, from the right):",
        "    [F][iv]",
    ]


def test_cli_takes_the_data_options_of_a_training_config_file(pairs_file, tokenizer_folder, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tokenizer_folder}\ndataset: {pairs_file}\nmax_length: 14\nmax_prompt_length: 12\n"
        "loss: simpo\nlearning_rate: 5.0e-5\n",
        encoding="utf-8",
    )
    assert main(["inspect-data", "--config", str(config), "--max-prompt-length", "10"]) == 0
    out = capsys.readouterr().out
    assert "max_length 14, max_prompt_length 10" in out
    assert f"pair 1 ({pairs_file}:1): prompt 10 tokens, chosen 4 tokens, rejected 4 tokens" in out


def test_demo_data_shows_the_first_n_pairs_in_file_order():
    text = inspect_pairs("demo", tiny_tokenizer(), n=2)
    headers = [line for line in text.splitlines() if line.startswith("pair ")]
    assert [h.split(": ")[0] for h in headers] == [
        f"pair 1 ({demo_file('train')}:1)", f"pair 2 ({demo_file('train')}:2)",
    ]
    lines = text.splitlines()
    # Row 1: "... Answer in at most 30 words." / chosen ends "... soon after you wake."
    prompt_line = lines[lines.index("  prompt (not trained):") + 1]
    assert prompt_line.startswith("    [<|im_start|>][us][er][\\n][H][i][!]")
    assert prompt_line.endswith("[ w][or][d][s][.][<|im_end|>][\\n][<|im_start|>][a][ss][istant][\\n]")
    assert lines[lines.index("  chosen (trained):") + 1].endswith("[ w][a][k][e][.][<|im_end|>]")


def test_demo_test_split_is_the_shipped_test_file():
    assert f"({demo_file('test')}:1)" in inspect_pairs("demo", tiny_tokenizer(), n=1, split="test")


def test_a_pair_whose_template_breaks_the_prompt_prefix_says_so(pairs_file):
    # The generation prompt adds a newline that the rendered conversation lacks.
    not_a_prefix = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '\\n<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.warns(UserWarning, match="chat template mismatch in 1 pairs") as caught:
        text = inspect_pairs(pairs_file, tiny_tokenizer(), chat_template=not_a_prefix)
    assert len(caught) == 1
    assert text.splitlines()[-1] == (
        "  chat template mismatch: prompt and responses were tokenized apart (see the warning)"
    )


def test_rows_that_cannot_be_used_are_skipped_and_counted(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "Hi."}\n' + json.dumps(ROW) + "\n", encoding="utf-8")
    text = inspect_pairs(path, tiny_tokenizer())
    assert f"{path}: 2 rows, 1 kept, 1 skipped (50.0%)" in text
    assert f"pair 1 ({path}:2)" in text
    assert "pair 2" not in text


def test_a_file_without_one_usable_pair_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "Hi."}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"no usable preference pairs in {path}"):
        inspect_pairs(path, tiny_tokenizer())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "missing.jsonl"], "dataset: path 'missing.jsonl' does not exist"),
        (["--chat-template", "nosuch.jinja"], "chat_template must be 'auto', 'none', a Jinja template or a path"),
        (["-n", "0"], "num_pairs: must be >= 1, got 0"),
        (["--max-length", "8", "--max-prompt-length", "8"], "max_prompt_length (8) must be < max_length (8)"),
    ],
)
def test_cli_bad_input_is_one_error_line_naming_the_option(pairs_file, tokenizer_folder, flags, message, capsys):
    argv = ["inspect-data", "--model", str(tokenizer_folder), "--dataset", str(pairs_file), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"slimepo: error: {message}" in err
    assert "Traceback" not in err
