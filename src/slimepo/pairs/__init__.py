"""Preference pairs from a model's own answers, and verifiable prompts to ask for them.

- :func:`~slimepo.pairs.run.make_pairs` (``slimepo pairs``): sample ``k`` answers per prompt
  with any engine (:mod:`slimepo.generation`), score them (:mod:`slimepo.pairs.scorers`), keep
  the best against the worst (:mod:`slimepo.pairs.build`); resumable (:mod:`slimepo.pairs.samples`).
- :func:`~slimepo.pairs.compose.make_prompts` (``slimepo make-prompts``): base requests with
  IFEval instructions attached, checkable by the official checkers.

Options: :class:`~slimepo.pairs.config.PairsConfig`, :class:`~slimepo.pairs.config.MakePromptsConfig`.
"""

from slimepo.pairs.config import MakePromptsConfig, PairsConfig

__all__ = ["MakePromptsConfig", "PairsConfig"]
