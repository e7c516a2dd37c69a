"""Per-token log-probabilities of labels under a causal LM's output distribution.

Two ways to the same numbers:

- :func:`token_logps` from materialized logits (exact, simple, ``[batch, tokens, vocab]``
  in memory);
- :func:`chunked_token_logps` from the final hidden states and the output projection
  ``W`` (``[vocab, hidden]``), ``b``: only valid tokens are projected, in chunks of
  ``chunk_size`` rows, and backward recomputes each chunk's logits instead of keeping
  them, so at most one ``[chunk_size, vocab]`` block lives at a time.

For a token with hidden state ``h`` and label ``y``: ``z = W h + b`` (optionally
soft-capped, ``z ← c·tanh(z/c)``), ``ℓ = z_y − logsumexp(z)``, and
``∂ℓ/∂z = onehot(y) − softmax(z)``.

On request (``log_sum_sq=True``) both ways also return, per token and without gradient,
``log Σ_v π(v)² = logsumexp(2·(z − logsumexp(z)))``, the log of the probability that two
draws from the token's distribution agree (WPO's normalizer, :mod:`slimepo.losses.wpo`):
one more reduction over the vocabulary of each chunk's logits, in the forward only.

This module knows nothing about losses. Masked-out positions come back as 0.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from slimepo import attention, zero3

DEFAULT_CHUNK_SIZE = 512


def _accumulation_dtype(tensor: Tensor) -> torch.dtype:
    """fp32 for half-precision inputs; fp64 inputs stay fp64 (for gradcheck)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def token_logps(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Exact per-token log-probs, ``[batch, tokens]``, in fp32.

    ``logits``: ``[batch, tokens, vocab]`` where ``logits[:, t]`` scores ``labels[:, t]``
    (already aligned: shift before calling for next-token prediction); ``labels``:
    ``[batch, tokens]`` int, any value where ``mask`` is False; ``mask``: bool.
    """
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    logps = torch.log_softmax(logits.to(_accumulation_dtype(logits)), dim=-1)
    picked = logps.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, torch.zeros_like(picked))


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None):
    """fp32 logits of one chunk, and tanh(z/c) when soft-capping (for the backward)."""
    dtype = _accumulation_dtype(hidden)
    z = (hidden.to(weight.dtype) @ weight.t()).to(dtype)
    if bias is not None:
        z = z + bias.to(dtype)
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return softcap * t, t


class _ChunkedLogps(torch.autograd.Function):
    # Autocast is off inside: the projection runs in the weights' dtype (fp32 master weights stay fp32),
    # and forward and backward recompute the same logits.
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, softcap, log_sum_sq=False):
        out = torch.empty(hidden.shape[0], dtype=_accumulation_dtype(hidden), device=hidden.device)
        sums = torch.empty_like(out) if log_sum_sq else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_size):
                stop = start + chunk_size
                z, _ = _chunk_logits(hidden[start:stop], weight, bias, softcap)
                picked = z.gather(-1, labels[start:stop].unsqueeze(-1)).squeeze(-1)
                lse = torch.logsumexp(z, dim=-1)
                out[start:stop] = picked - lse
                if log_sum_sq:
                    sums[start:stop] = torch.logsumexp((z - lse.unsqueeze(-1)).mul_(2), dim=-1)
        ctx.save_for_backward(hidden, weight, bias, labels)
        ctx.chunk_size, ctx.softcap = chunk_size, softcap
        if not log_sum_sq:
            return out
        ctx.mark_non_differentiable(sums)
        return out, sums

    @staticmethod
    def backward(ctx, grad_out, *_):  # no gradient flows through log Σ_v π(v)²
        with torch.autocast(grad_out.device.type, enabled=False):
            return _ChunkedLogps._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        hidden, weight, bias, labels = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        dtype = _accumulation_dtype(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_bias else None
        grad_out = grad_out.to(dtype)
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            h = hidden[start:stop]
            z, t = _chunk_logits(h, weight, bias, ctx.softcap)
            g = grad_out[start:stop].unsqueeze(-1)
            grad_z = -g * torch.softmax(z, dim=-1)
            grad_z.scatter_add_(-1, labels[start:stop].unsqueeze(-1), g)
            if t is not None:
                grad_z = grad_z * (1 - t * t)
            if need_hidden:
                grad_hidden[start:stop] = (grad_z.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_weight:
                grad_weight += grad_z.t() @ h.to(dtype)
            if need_bias:
                grad_bias += grad_z.sum(0)
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        if need_bias:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def chunked_token_logps(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    mask: Tensor,
    bias: Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
    log_sum_sq: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token log-probs ``[batch, tokens]`` (fp32) without materializing all logits.

    ``hidden``: ``[batch, tokens, hidden]`` final hidden states aligned with ``labels``
    (``hidden[:, t]`` predicts ``labels[:, t]``); ``weight``: ``[vocab, hidden]``;
    ``bias``: ``[vocab]`` or None; ``mask``: bool ``[batch, tokens]``, only True
    positions are projected; ``softcap``: final logit soft-capping (Gemma-2/3).
    Values and gradients equal :func:`token_logps` on ``hidden @ weight.T + bias``.
    With ``log_sum_sq``: ``(logps, log_sum_sq_probs)``, the second ``[batch, tokens]`` fp32
    ``log Σ_v π(v)²`` of each position's distribution, detached, 0 where masked.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = torch.zeros(mask.shape, dtype=_accumulation_dtype(hidden), device=hidden.device)
    if not bool(mask.any()):
        return (out, out.clone()) if log_sum_sq else out
    selected = _ChunkedLogps.apply(hidden[mask], weight, bias, labels[mask], chunk_size, softcap, log_sum_sq)
    if not log_sum_sq:
        return out.masked_scatter(mask, selected)
    logps, sums = selected
    return out.masked_scatter(mask, logps), torch.zeros_like(out).masked_scatter(mask, sums)


def output_projection(model: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """The (weight, bias) producing logits from final hidden states, or None.

    Handles a plain ``nn.Linear`` head (tied or not) and PEFT's ``ModulesToSaveWrapper``
    (``modules_to_save=["lm_head"]``), honouring disabled adapters. Any other head (LoRA
    on the head, custom scaling) returns None and callers use the exact path.
    """
    head = _base_model(model).get_output_embeddings()
    if type(head).__name__ == "ModulesToSaveWrapper":
        active = head.active_adapters if hasattr(head, "active_adapters") else [head.active_adapter]
        if getattr(head, "disable_adapters", False) or not active or active[0] not in head.modules_to_save:
            head = head.original_module
        else:
            head = head.modules_to_save[active[0]]
    if type(head) is not nn.Linear:
        return None
    return head.weight, head.bias


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside DDP/compile and PEFT wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def uses_flex_attention(model: nn.Module) -> bool:
    return getattr(_base_model(model).config, "_attn_implementation", None) == "flex_attention"


def _text_config(model: nn.Module):
    config = _base_model(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layer_windows(model: nn.Module) -> dict[str, int | None]:
    """Each attention layer type of ``model`` and its window in positions (None: full causal).

    What the ``shared`` and ``packed`` masks must reproduce, layer type by layer type. Raises
    ValueError for attention they cannot express, rather than computing something else.
    Computed once per distinct configuration (:func:`_windows_of` is cached on the fields read).
    """
    config = _text_config(model)
    return dict(_windows_of(
        getattr(config, "_attn_implementation", None), bool(getattr(config, "use_bidirectional_attention", False)),
        getattr(config, "sliding_window", None), tuple(getattr(config, "layer_types", None) or ()),
    ))


@functools.lru_cache(maxsize=64)
def _windows_of(
    implementation: str | None, bidirectional: bool, window: int | None, layer_types: tuple[str, ...]
) -> tuple[tuple[str, int | None], ...]:
    """:func:`layer_windows` from the config's fields, keyed on their values (not on the config
    object, which a model may change in place, e.g. ``set_attn_implementation``)."""
    refuse = "--layout shared and packed replace the model's attention mask, but "
    if implementation not in ("eager", "sdpa", "flex_attention"):
        raise ValueError(refuse + f"attn_implementation {implementation} takes no such mask; use --layout separate")
    if bidirectional:
        raise ValueError(refuse + "this model attends bidirectionally (use_bidirectional_attention); use --layout separate")
    # Models without layer_types (Mistral) slide every layer when sliding_window is set.
    layer_types = layer_types or ("sliding_attention" if window else "full_attention",)
    unknown = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise ValueError(refuse + f"they cannot express layer types {', '.join(unknown)}; use --layout separate")
    return tuple((kind, window if kind == "sliding_attention" else None) for kind in dict.fromkeys(layer_types))


def attention_mask(model: nn.Module, batch: dict[str, Tensor]):
    """The mask to call ``model`` with.

    ``separate`` rows: the batch's own padding mask. ``shared`` and ``packed`` rows: one mask per
    layer type of :func:`layer_windows` (a FlexAttention BlockMask for a flex model, else a dense
    ``[R, 1, T, T]`` mask, the batch's own for full attention when the collator built it); a dict
    ``{layer_type: mask}`` when the model mixes types (transformers models with ``layer_types``
    take it as is), else the one mask.
    """
    if "pair_ids" not in batch:
        return batch["attention_mask"]
    ids = batch["pair_ids"], batch["part_ids"], batch["position_ids"]
    masks = {}
    for kind, window in layer_windows(model).items():
        if uses_flex_attention(model):
            masks[kind] = attention.flex_block_mask(*ids, window)
        elif window is None and "attention_mask" in batch:
            masks[kind] = batch["attention_mask"]
        else:
            masks[kind] = attention.dense_mask(*ids, window)
    return masks if len(masks) > 1 else next(iter(masks.values()))


def final_logit_softcap(model: nn.Module) -> float | None:
    return getattr(_text_config(model), "final_logit_softcapping", None)


def pair_token_logps(
    model: nn.Module, batch: dict[str, Tensor], *, chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    log_sum_sq: bool = False,
) -> tuple[Tensor, ...]:
    """Per-token log-probs of each pair's chosen and rejected responses.

    ``batch`` comes from :class:`slimepo.data.collate.PairCollator` (any layout). Returns
    ``(chosen_logps [B, Lc], rejected_logps [B, Lr])``, fp32, 0 where
    ``batch["chosen_mask"]``/``batch["rejected_mask"]`` are False. With ``log_sum_sq``, also
    ``(chosen_log_sum_sq [B, Lc], rejected_log_sum_sq [B, Lr])``: ``log Σ_v π(v)²`` at each
    response token's position, detached, from the same forward.

    The model is always called through its own ``forward`` (so DDP and FSDP wrappers see
    the call). With ``chunk_size``, it is asked for the final hidden states and for the
    logits of the last position only (``logits_to_keep=1``); the scored tokens are then
    projected here in chunks. With ``chunk_size`` None, or a head that
    :func:`output_projection` cannot read, the full logits are materialized.
    """
    chosen_mask, rejected_mask = batch["chosen_mask"], batch["rejected_mask"]
    source = torch.cat([batch["chosen_source"][chosen_mask], batch["rejected_source"][rejected_mask]])
    target = torch.cat([batch["chosen_target"][chosen_mask], batch["rejected_target"][rejected_mask]])
    labels = batch["input_ids"].reshape(-1)[target]
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": attention_mask(model, batch),
        "position_ids": batch.get("position_ids"),
        "use_cache": False,
    }
    sums = None  # log Σ_v π(v)² of each scored token, when asked for
    if not chunk_size or output_projection(model) is None:
        logits = model(**inputs).logits
        selected = logits.reshape(-1, logits.shape[-1])[source]
        all_logps = torch.log_softmax(selected.to(_accumulation_dtype(selected)), -1)
        logps = all_logps.gather(-1, labels[:, None])[:, 0]
        if log_sum_sq:
            sums = torch.logsumexp(2 * all_logps.detach(), -1)
    else:
        hidden = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        # Read after the forward: FSDP2 gathers the root module's weights (the head among them) in
        # its forward and keeps them unsharded until backward, which then reduce-scatters their gradient.
        # DeepSpeed ZeRO-3 partitions them again as the head's forward ends: a whole copy is gathered.
        weight, bias = zero3.whole_copies(*output_projection(model))
        selected = hidden.reshape(-1, hidden.shape[-1])[source]
        logps = _ChunkedLogps.apply(selected, weight, bias, labels, chunk_size, final_logit_softcap(model), log_sum_sq)
        if log_sum_sq:
            logps, sums = logps
    n_chosen = int(chosen_mask.sum())

    def by_side(flat: Tensor) -> tuple[Tensor, Tensor]:
        chosen = torch.zeros(chosen_mask.shape, dtype=flat.dtype, device=flat.device)
        rejected = torch.zeros(rejected_mask.shape, dtype=flat.dtype, device=flat.device)
        return chosen.masked_scatter(chosen_mask, flat[:n_chosen]), rejected.masked_scatter(rejected_mask, flat[n_chosen:])

    return by_side(logps) if sums is None else (*by_side(logps), *by_side(sums))
