"""docs/pairs.md says what the code does: its option tables come from the option dataclasses,
and the README gives the four-command loop."""

from pathlib import Path

import pytest

from slimepo.options_doc import options_markdown
from slimepo.pairs.config import MakePromptsConfig, PairsConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("marker", "cls"), [("pairs-options", PairsConfig), ("make-prompts-options", MakePromptsConfig)])
def test_the_option_tables_of_docs_pairs_are_generated_from_the_config_dataclasses(marker, cls):
    text = (ROOT / "docs" / "pairs.md").read_text(encoding="utf-8")
    block = text.split(f"<!-- {marker}:start -->\n", 1)[1].split(f"<!-- {marker}:end -->", 1)[0]
    assert block == options_markdown(cls), f"replace the {marker} block of docs/pairs.md with:\n{options_markdown(cls)}"


def test_the_readme_and_docs_give_the_four_command_loop():
    for path in (ROOT / "README.md", ROOT / "docs" / "pairs.md"):
        text = path.read_text(encoding="utf-8")
        for command in ("slimepo make-prompts --out runs/prompts/ifeval-prompts.jsonl",
                        "slimepo pairs --prompts runs/prompts/ifeval-prompts.jsonl --scorer ifeval",
                        "slimepo train --dataset runs/pairs-ifeval/pairs.jsonl",
                        "slimepo eval --model runs/slime-onpolicy --bench ifeval"):
            assert command in text, (path.name, command)
