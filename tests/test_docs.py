"""The README and docs say what the code does: generated option tables, every loss documented, links that resolve."""

import re
from pathlib import Path

from slimepo.losses import LOSSES
from slimepo.options_doc import DEFAULT_TARGET, render

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_option_reference_is_generated_from_the_config_dataclasses():
    page = (ROOT / DEFAULT_TARGET).read_text(encoding="utf-8")
    assert "<!-- options:start" in page and "<!-- eval-options:start" in page
    assert render(page) == page, "run: python -m slimepo.options_doc"


def test_every_registered_loss_and_preset_is_documented():
    docs = (ROOT / "docs" / "losses.md").read_text(encoding="utf-8")
    for name in LOSSES:
        assert f"`{name}`" in docs, name


def test_readme_gives_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme


def test_every_relative_link_in_readme_and_docs_points_to_an_existing_file_and_heading():
    broken = []
    for page in PAGES:
        for target in _relative_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
