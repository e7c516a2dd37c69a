"""``--bench ifbench``: IFBench's prompts, scored by the official IFBench checkers; *partial*, without
the prompts whose checkers need NLTK data no PyPI package ships (:mod:`slimepo.eval.ifeval`).

Its ``eval.json`` entry, ``ifbench``: :func:`~slimepo.eval.benchmarks.ifeval.answer_ifeval`'s result
with ``official: False`` and ``left_out``.
"""

from __future__ import annotations

from slimepo.eval.benchmarks.ifeval import instruction_benchmark

BENCHMARK = instruction_benchmark("ifbench", "IFBench (partial)")
