"""Length-bucketed batches under a token budget (``--max-tokens-per-batch``).

Pairs of similar length go together, so little compute is spent on padding, and every
batch costs about the same. The order is random but fixed by ``seed`` and the epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


def pair_tokens(pair) -> int:
    """Tokens of a pair once its prompt is shared: prompt + chosen + rejected."""
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


class TokenBudgetBatchSampler:
    """Yields lists of indices whose padded cost, ``len(batch) × longest``, stays within
    ``max_tokens``. A pair longer than the budget forms a batch of its own.

    Each epoch: shuffle (seed + epoch), sort windows of ``window`` pairs by length, cut
    them greedily into batches, then shuffle the batches.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, seed: int = 0, window: int = 256):
        if max_tokens < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens}")
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.seed = seed
        self.window = window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=self.lengths.__getitem__)
            batch: list[int] = []
            longest = 0
            for index in window:
                candidate = max(longest, self.lengths[index])
                if batch and candidate * (len(batch) + 1) > self.max_tokens:
                    batches.append(batch)
                    batch, candidate = [], self.lengths[index]
                batch.append(index)
                longest = candidate
            if batch:
                batches.append(batch)
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
