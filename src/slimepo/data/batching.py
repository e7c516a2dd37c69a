"""Training batches: length-bucketed under a token budget (``--max-tokens-per-batch``), and
dealt to processes in whole rounds.

Under a token budget, pairs of similar length go together, so little compute is spent on
padding, and every batch costs about the same. The order is random but fixed by ``seed``
and the epoch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


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


class WholeRounds:
    """The batches of ``batch_sampler``, then empty batches until their number is a multiple
    of ``processes``.

    accelerate deals batch ``j`` to process ``j mod processes``: a round of batches is one
    micro-batch on every process. When an epoch ends mid-round, accelerate would fill the
    round with pairs from the start of the epoch, which the step then counts twice. Here the
    rounds are whole, and ``batch_size`` is None so that accelerate deals each batch as it
    comes, padding nothing; :class:`StandInCollator` turns an empty batch into one that
    weighs nothing.
    """

    batch_size = None

    def __init__(self, batch_sampler, processes: int):
        self.batch_sampler = batch_sampler
        self.processes = processes

    @property
    def sampler(self):
        """The wrapped sampler, read and replaced by accelerate (its seeded sampler) and set to each epoch."""
        return getattr(self.batch_sampler, "sampler", None)

    @sampler.setter
    def sampler(self, sampler) -> None:
        self.batch_sampler.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        count = 0
        for batch in self.batch_sampler:
            count += 1
            yield batch
        for _ in range(-count % self.processes):
            yield []

    def __len__(self) -> int:
        return -(-len(self.batch_sampler) // self.processes) * self.processes


@dataclass(frozen=True)
class StandInCollator:
    """``collate(pairs)``; an empty batch becomes ``stand_in`` collated alone, marked ``"stand_in": True``.

    A process whose batch is empty must still run forward and backward, since DDP and FSDP
    reduce gradients in backward and every process has to join; the trainer multiplies the
    stand-in's loss by 0 and leaves it out of the step's counts and metrics.
    """

    collate: Callable[[Sequence], dict[str, Any]]
    stand_in: Any

    def __call__(self, pairs: Sequence) -> dict[str, Any]:
        if pairs:
            return self.collate(pairs)
        return {**self.collate([self.stand_in]), "stand_in": True}
