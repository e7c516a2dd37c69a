"""Scorers of answers, one module each, built by name (:func:`make_scorer`):

- ``ifeval``: share of the row's IFEval instructions followed (:mod:`.ifeval`);
- ``constraints``: the row's slimepo constraint, 1 pass / 0 fail (:mod:`.constraints`);
- ``reward-model``: a sequence classifier's logit (:mod:`.reward_model`);
- ``judge``: an LLM judge's 1-10 rating (:mod:`.judge`).
"""

from __future__ import annotations

from typing import Any

from slimepo.pairs.scorers.base import Score, Scorer


def make_scorer(name: str, **settings: Any) -> Scorer:
    """The scorer ``name`` with its settings: ``ifeval`` (``mode``), ``reward-model`` (``model``,
    ``dtype``, ``trust_remote_code``, ``batch_size``), ``judge`` (``url``, ``model``, ``key_env``)."""
    if name == "ifeval":
        from slimepo.pairs.scorers.ifeval import IFEvalScorer

        return IFEvalScorer(**settings)
    if name == "constraints":
        from slimepo.pairs.scorers.constraints import ConstraintsScorer

        return ConstraintsScorer(**settings)
    if name == "reward-model":
        from slimepo.pairs.scorers.reward_model import RewardModelScorer

        return RewardModelScorer.load(**settings)
    if name == "judge":
        from slimepo.pairs.scorers.judge import JudgeScorer

        return JudgeScorer.connect(**settings)
    raise ValueError(f"unknown scorer {name!r}; scorers: ifeval, constraints, reward-model, judge")


__all__ = ["Score", "Scorer", "make_scorer"]
