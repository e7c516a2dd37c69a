"""The README and docs say what the code does: generated option table, every loss documented."""

from pathlib import Path

from slimepo.losses import LOSSES
from slimepo.options_doc import render

ROOT = Path(__file__).resolve().parents[1]


def test_readme_option_reference_is_generated_from_the_config_dataclass():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render(readme) == readme, "run: python -m slimepo.options_doc README.md"


def test_every_registered_loss_and_preset_is_documented():
    docs = (ROOT / "docs" / "losses.md").read_text(encoding="utf-8")
    for name in LOSSES:
        assert f"`{name}`" in docs, name


def test_readme_gives_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
