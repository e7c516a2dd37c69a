"""Shared fixtures: a tiny offline causal LM + tokenizer saved like a Hub checkpoint."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from slimepo.testing import save_tiny_model


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def load_script():
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package)."""
    loaded = []

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        loaded.append(name)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), kind="llama")


THINGS = ["river", "garden", "train", "letter", "forest", "window", "market", "bridge", "candle", "island",
          "kitchen", "mountain", "school", "harbor", "violin", "castle", "meadow", "tunnel", "basket", "lantern"]


def toy_rows(things: list[str]) -> list[dict]:
    """A learnable preference: the chosen answer says 'good', the rejected 'bad'."""
    return [
        {"prompt": f"What do you think of the {t}?", "chosen": f"The {t} is good.", "rejected": f"The {t} is bad."}
        for t in things
    ]


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("toy-data")
    paths = {}
    for split, things in (("train", THINGS[:14]), ("test", THINGS[14:])):
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in toy_rows(things)))
    return paths
