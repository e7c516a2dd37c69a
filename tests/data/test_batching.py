"""Token-budget batches: every pair exactly once per epoch, within budget, reproducible."""

import pytest

from slimepo.data.batching import TokenBudgetBatchSampler

LENGTHS = [5, 40, 12, 33, 7, 90, 18, 25, 3, 60, 44, 11]


def test_every_pair_appears_exactly_once_per_epoch_and_batches_fit_the_budget():
    sampler = TokenBudgetBatchSampler(LENGTHS, max_tokens=100, window=6)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    for b in batches:
        assert len(b) == 1 or max(LENGTHS[i] for i in b) * len(b) <= 100


def test_a_pair_longer_than_the_budget_is_a_batch_of_its_own():
    batches = list(TokenBudgetBatchSampler([10, 500, 20], max_tokens=100))
    assert [1] in batches


def test_order_is_fixed_by_seed_and_epoch_and_changes_between_epochs():
    a = TokenBudgetBatchSampler(LENGTHS, max_tokens=100, seed=3)
    b = TokenBudgetBatchSampler(LENGTHS, max_tokens=100, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert len(a) == len(list(a))


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_tokens_per_batch must be >= 1"):
        TokenBudgetBatchSampler(LENGTHS, max_tokens=0)
