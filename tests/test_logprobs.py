"""Chunked log-probs equal exact ones, values and gradients, for every chunking."""

import math
from pathlib import Path

import pytest
import torch

from slimepo import logprobs
from slimepo.logprobs import chunked_token_logps, token_logps
from slimepo.testing import failing_checks, module_from_source, mutated


def setup_case(dtype=torch.float32, bias=True, seed=0, batch=3, tokens=11, hidden=16, vocab=37):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, tokens, hidden, generator=g, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g, dtype=dtype) * 0.5).requires_grad_(True)
    b = torch.randn(vocab, generator=g, dtype=dtype).requires_grad_(True) if bias else None
    labels = torch.randint(0, vocab, (batch, tokens), generator=g)
    mask = torch.rand(batch, tokens, generator=g) > 0.25
    labels[~mask] = -100  # garbage where masked
    return h, w, b, labels, mask


def exact(h, w, b, labels, mask, softcap=None):
    logits = h @ w.t() + (b if b is not None else 0)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return token_logps(logits, labels, mask)


def grads(out, weights, params):
    return torch.autograd.grad((out * weights).sum(), [p for p in params if p is not None])


def test_token_logps_matches_log_softmax_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[2, 1]])
    mask = torch.tensor([[True, True]])
    z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    expected = torch.tensor([[3.0 - z, -math.log(3.0)]])
    torch.testing.assert_close(token_logps(logits, labels, mask), expected)
    assert token_logps(logits, labels, torch.tensor([[True, False]]))[0, 1] == 0.0


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 24, 1000])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_chunked_equals_exact_values_and_gradients(chunk_size, bias, softcap):
    h, w, b, labels, mask = setup_case(bias=bias)
    upstream = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    ref = exact(h, w, b, labels, mask, softcap)
    got = chunked_token_logps(h, w, labels, mask, b, chunk_size=chunk_size, softcap=softcap)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g_ref, g_got in zip(grads(ref, upstream, (h, w, b)), grads(got, upstream, (h, w, b))):
        torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-5)


def test_chunked_passes_float64_gradcheck():
    h, w, b, labels, mask = setup_case(dtype=torch.float64, batch=2, tokens=5, hidden=4, vocab=7)
    assert torch.autograd.gradcheck(
        lambda hh, ww, bb: chunked_token_logps(hh, ww, labels, mask, bb, chunk_size=3, softcap=1.5), (h, w, b)
    )


def test_chunked_with_frozen_weight_only_returns_hidden_gradient():
    h, w, b, labels, mask = setup_case()
    w = w.detach()
    out = chunked_token_logps(h, w, labels, mask, None, chunk_size=4)
    out.sum().backward()
    ref_h = h.detach().clone().requires_grad_(True)
    exact(ref_h, w, None, labels, mask).sum().backward()
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-5, atol=1e-5)


def test_chunked_masked_positions_are_zero_and_get_no_gradient():
    h, w, b, labels, mask = setup_case()
    out = chunked_token_logps(h, w, labels, mask, b, chunk_size=4)
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    out.sum().backward()
    assert torch.equal(h.grad[~mask], torch.zeros_like(h.grad[~mask]))


def test_chunked_bf16_close_to_fp32():
    h, w, b, labels, mask = setup_case()
    ref = exact(h, w, b, labels, mask)
    got = chunked_token_logps(h.bfloat16(), w.bfloat16(), labels, mask, b.bfloat16(), chunk_size=5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=5e-2, atol=5e-2)


def test_chunked_rejects_nonpositive_chunk_size():
    h, w, b, labels, mask = setup_case()
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_token_logps(h, w, labels, mask, b, chunk_size=0)


# --- log Σ_v π(v)² (WPO's normalizer), computed by the chunked head on request ---


def full_log_sum_sq(h, w, b, mask, softcap=None):
    """``log Σ_v π(v)²`` from the full logits with torch.logsumexp: logsumexp(2z) − 2·logsumexp(z)."""
    logits = (h @ w.t() + (b if b is not None else 0)).detach()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    stat = torch.logsumexp(2 * logits, -1) - 2 * torch.logsumexp(logits, -1)
    return torch.where(mask, stat, torch.zeros_like(stat))


# Each check takes the module, so the mutants of logprobs.py below run through the same checks.

def check_log_sum_sq_equals_the_full_logits_for_every_chunking(module):
    # Chunks are rows of scored tokens (23 here, so every size but 1 leaves a shorter last chunk); each
    # chunk reduces the whole vocabulary (37).
    h, w, b, labels, mask = setup_case()
    assert int(mask.sum()) == 23
    for chunk_size in (1, 4, 7, 22, 1000):
        for softcap in (None, 2.0):
            _, got = module.chunked_token_logps(h, w, labels, mask, b, chunk_size=chunk_size, softcap=softcap,
                                                log_sum_sq=True)
            torch.testing.assert_close(got, full_log_sum_sq(h, w, b, mask, softcap), rtol=1e-5, atol=1e-5)


def check_log_sum_sq_by_hand(module):
    # z = (log 3, 0): π = (3/4, 1/4), Σ π² = 10/16;  z = (0, 0): π = (1/2, 1/2), Σ π² = 1/2
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    w = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    logps, got = module.chunked_token_logps(h, w, torch.tensor([[0, 1]]), torch.tensor([[True, True]]), chunk_size=1,
                                            log_sum_sq=True)
    assert got.tolist()[0] == pytest.approx([math.log(0.625), math.log(0.5)], rel=1e-6)
    assert logps.tolist()[0] == pytest.approx([math.log(0.75), math.log(0.5)], rel=1e-6)


CHECKS = [check_log_sum_sq_equals_the_full_logits_for_every_chunking, check_log_sum_sq_by_hand]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_log_sum_sq_of_the_chunked_head(check):
    check(logprobs)


def test_asking_for_log_sum_sq_leaves_the_log_probs_and_their_gradients_as_they_were():
    h, w, b, labels, mask = setup_case()
    upstream = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    plain = chunked_token_logps(h, w, labels, mask, b, chunk_size=5)
    logps, stat = chunked_token_logps(h, w, labels, mask, b, chunk_size=5, log_sum_sq=True)
    assert torch.equal(logps, plain) and not stat.requires_grad
    assert torch.equal(stat[~mask], torch.zeros_like(stat[~mask]))
    for g_plain, g_both in zip(grads(plain, upstream, (h, w, b)), grads(logps, upstream, (h, w, b))):
        assert torch.equal(g_both, g_plain)


SOURCE = Path(logprobs.__file__)
#: (what it breaks, text in logprobs.py, replacement)
MUTANTS = [
    ("log Σ π (= 0) instead of log Σ π²", "torch.logsumexp((z - lse.unsqueeze(-1)).mul_(2), dim=-1)",
     "torch.logsumexp(z - lse.unsqueeze(-1), dim=-1)"),
    ("logsumexp(2z) − logsumexp(z)", "(z - lse.unsqueeze(-1)).mul_(2)", "(2 * z - lse.unsqueeze(-1))"),
    ("logsumexp(2z) alone", "(z - lse.unsqueeze(-1)).mul_(2)", "z.mul(2)"),
    ("the log-probs returned as the statistic", "torch.zeros_like(out).masked_scatter(mask, sums)",
     "torch.zeros_like(out).masked_scatter(mask, logps)"),
]


@pytest.mark.parametrize(("label", "old", "new"), MUTANTS, ids=[m[0] for m in MUTANTS])
def test_every_mutant_of_the_statistic_fails_a_check(label, old, new):
    original = SOURCE.read_text(encoding="utf-8")
    for check in CHECKS:  # the unmutated source passes
        check(module_from_source(original, "slimepo_logprobs_copy"))
    module = module_from_source(mutated(original, old, new, SOURCE), "slimepo_logprobs_mutant")
    assert failing_checks(CHECKS, module), f"mutant '{label}' passes every check"
