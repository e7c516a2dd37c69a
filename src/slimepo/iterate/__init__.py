"""``slimepo iterate``: rounds of sampling pairs from the current policy, training on them, and
evaluating, in one resumable folder (:mod:`slimepo.iterate.run`), with a report over rounds
(:mod:`slimepo.iterate.report`)."""

from slimepo.iterate.config import IterateConfig
from slimepo.iterate.run import IterateResult, iterate

__all__ = ["IterateConfig", "IterateResult", "iterate"]
