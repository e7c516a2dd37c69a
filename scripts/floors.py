"""Print ``name==floor`` for every ``name>=floor`` dependency of pyproject.toml, torch excepted.

``make test-floors`` installs these to check the floors are true; torch stays at the pinned
dev version (requirements-dev.txt), the only CPU wheel this machine has offline.
"""

import re
import sys
import tomllib
from pathlib import Path


def floors(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = []
    for dependency in dependencies:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", dependency)
        if match is None:
            raise SystemExit(f"pyproject.toml: dependency {dependency!r} has no '>=' floor")
        if match[1] != "torch":
            pins.append(f"{match[1]}=={match[2]}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("\n".join(floors(root / "pyproject.toml")), file=sys.stdout)
