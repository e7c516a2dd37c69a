"""Who may attend to whom in a row of preference pairs, as a dense mask or a FlexAttention BlockMask.

A row holds one pair (``shared`` layout) or several (``packed``). Each token carries a
pair index (``-1`` for padding) and a part (0 prompt, 1 chosen, 2 rejected). Query ``q``
attends key ``k`` iff ``k <= q``, both belong to the same pair, and ``k`` is a prompt token
or lies in the same response as ``q``; a padding query attends to itself only (so no
softmax row is empty). :func:`visible` states this once; :func:`dense_mask` and
:func:`flex_block_mask` are its two encodings:

- the dense additive ``[rows, 1, T, T]`` mask works with every attention kernel that takes
  a 4-D mask (SDPA, eager) but costs ``T²`` per row and computes every masked score;
- the BlockMask (``attn_implementation="flex_attention"``) lists, per block of 128×128
  scores, whether it is empty, full or partial, so FlexAttention skips the empty blocks:
  other pairs in a packed row, and the rejected response's view of the chosen one.

Sliding-window (local) layers see less: a query also needs ``pos_q - pos_k < window`` in
*position ids*, transformers' rule (``kv_idx > q_idx - sliding_window``) as the unshared
``[prompt + response]`` forward sees it, where a token's column is its position. Measured in
positions, a rejected token sees the same prompt keys as when it follows the prompt alone.
"""

from __future__ import annotations

import torch
from torch import Tensor


def visible(
    pair_q: Tensor, part_q: Tensor, pos_q: Tensor, pair_k: Tensor, part_k: Tensor, pos_k: Tensor,
    q: Tensor, k: Tensor, window: int | None = None,
) -> Tensor:
    """Elementwise (broadcasting) rule: may query column ``q`` attend key column ``k``?

    ``pos_*`` are position ids; ``window`` (None: unlimited) is a sliding layer's window.
    """
    same_pair = (pair_q == pair_k) & (pair_k >= 0)
    same_view = (part_k == 0) | (part_k == part_q)
    allowed = same_pair & same_view & (k <= q)
    if window is not None:
        allowed = allowed & (pos_q - pos_k < window)
    return allowed | (q == k)


def dense_mask(
    pair_ids: Tensor, part_ids: Tensor, position_ids: Tensor, window: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Additive ``[R, 1, T, T]`` mask from ``[R, T]`` ids: 0 where allowed, the dtype's minimum elsewhere."""
    columns = torch.arange(pair_ids.shape[1], device=pair_ids.device)
    allowed = visible(
        pair_ids[:, :, None], part_ids[:, :, None], position_ids[:, :, None],
        pair_ids[:, None, :], part_ids[:, None, :], position_ids[:, None, :],
        columns[:, None], columns[None, :], window,
    )
    mask = torch.zeros(allowed.shape, dtype=dtype, device=pair_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def flex_block_mask(pair_ids: Tensor, part_ids: Tensor, position_ids: Tensor, window: int | None = None):
    """The same rule as a FlexAttention ``BlockMask`` over ``[R, heads, T, T]`` (heads broadcast)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        return visible(
            pair_ids[b, q], part_ids[b, q], position_ids[b, q], pair_ids[b, k], part_ids[b, k], position_ids[b, k],
            q, k, window,
        )

    rows, width = pair_ids.shape
    return create_block_mask(mask_mod, rows, None, width, width, device=pair_ids.device)
