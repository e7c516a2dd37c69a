"""Evaluation building blocks: they read what training wrote and never reach into the trainer.

- :func:`preference_metrics` (defined in :mod:`slimepo.diagnostics`, which training shares):
  held-out accuracy, margin, chosen-likelihood drift, rejected-token collapse. Torch only.
- :mod:`~slimepo.eval.health`: formatting health of generations (end of turn, empty,
  repetition). Standard library only.
- :mod:`~slimepo.eval.mtbench`: MT-Bench questions and answers in FastChat's format.
- :mod:`~slimepo.eval.judge`: LLM-judge grading over an OpenAI-compatible API (urllib).
- :mod:`~slimepo.eval.ifeval`: IFEval answers scored by the official checkers.
- :mod:`~slimepo.eval.arena_hard`, :mod:`~slimepo.eval.alpacaeval`: answers judged
  pairwise against a baseline's (:mod:`~slimepo.eval.pairwise`: what they share).
- :mod:`~slimepo.eval.benchmarks`: the registry of benchmarks ``slimepo eval --bench`` answers,
  one module each (prompts, answering, scoring or judging, its key in ``eval.json``, its table rows).
"""

from slimepo.diagnostics import preference_metrics
from slimepo.eval.health import generation_health, summarize_health
from slimepo.eval.judge import JudgeClient, JudgeError, judge_answers, summarize_scores
from slimepo.eval.mtbench import answer_questions, find_questions, load_questions, write_answers

__all__ = [
    "JudgeClient",
    "JudgeError",
    "answer_questions",
    "find_questions",
    "generation_health",
    "judge_answers",
    "load_questions",
    "preference_metrics",
    "summarize_health",
    "summarize_scores",
    "write_answers",
]
