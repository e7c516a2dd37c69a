"""Chunked log-probs equal exact ones, values and gradients, for every chunking."""

import pytest
import torch

from slimepo.logprobs import chunked_token_logps, token_logps


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
    import math

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
