"""What the pairwise benchmarks (Arena-Hard, AlpacaEval) share: a bootstrap interval of a mean."""

from __future__ import annotations

import random
from collections.abc import Sequence


def bootstrap_interval(values: Sequence[float], rounds: int = 200, seed: int = 123) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of ``rounds`` means of ``values`` resampled with
    replacement (``random.Random(seed)``): a 95% interval of their mean. ``values`` not empty."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]
