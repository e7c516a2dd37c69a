"""Token batches for preference pairs, in three layouts with one output contract.

``separate``: two right-padded rows per pair, ``[prompt + chosen]`` and ``[prompt +
rejected]`` (the prompt is encoded twice; a 2-D padding mask).

``shared``: one row per pair, ``[prompt, chosen, rejected]``; chosen and rejected tokens
attend to the prompt and to their own response only, never to each other (a 4-D mask),
and both responses continue the prompt's positions. The prompt is encoded once.

``packed``: ``shared`` pairs placed first-fit in rows of up to ``pack_tokens`` tokens
(default: the batch's longest pair, so no row is longer than in ``shared`` and packing
only fills the padding); no token attends across pairs and positions restart with each
pair.

Whatever the layout, each scored token ``k`` of a response is described by two flat
indices into the ``[rows × tokens]`` grid: ``*_target`` (where the token is) and
``*_source`` (the position whose hidden state predicts it: the previous token, or the
prompt's last token for a response's first token). The loss sees ``[pairs, tokens]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from slimepo import attention

LAYOUTS = ("separate", "shared", "packed")


@dataclass
class _Placed:
    """Where one response sits: its row, its first column, and the column of the last
    prompt token it continues."""

    row: int
    start: int
    prompt_last: int


def _response_indices(placed: list[_Placed], lengths: list[int], width: int) -> tuple[Tensor, Tensor, Tensor]:
    target = torch.zeros((len(placed), max(lengths)), dtype=torch.long)
    mask = torch.zeros(target.shape, dtype=torch.bool)
    for i, (place, n) in enumerate(zip(placed, lengths)):
        target[i, :n] = place.row * width + torch.arange(place.start, place.start + n)
        mask[i, :n] = True
    source = target - 1
    source[:, 0] = torch.tensor([place.row * width + place.prompt_last for place in placed])
    return target, source, mask


@dataclass
class PairCollator:
    """Collate :class:`~slimepo.data.TokenizedPair`-like items (``prompt_ids``,
    ``chosen_ids``, ``rejected_ids``) into a batch.

    Returns ``input_ids`` ``[R, T]``; ``attention_mask`` (``[R, T]`` for ``separate``, a
    float additive ``[R, 1, T, T]`` full-attention mask otherwise, left out when ``dense_mask``
    is False; sliding-window layers get theirs from :func:`slimepo.logprobs.attention_mask`);
    for ``shared`` and ``packed``, ``pair_ids`` and ``part_ids`` ``[R, T]`` (see
    :mod:`slimepo.attention`, which builds either mask from them); ``position_ids`` ``[R, T]``;
    ``chosen_target``/``chosen_source``/``chosen_mask`` ``[B, Lc]`` and the same for
    rejected; ``num_tokens`` (non-padding tokens, a 0-d tensor); ``ref_chosen_logps`` and
    ``ref_rejected_logps`` ``[B]`` when every pair carries precomputed reference sums;
    ``weights`` ``[B]`` float32, each pair's ``weight``, only when ``weights`` is True (a
    weight column is set), so that batches without one are as they always were.
    """

    pad_token_id: int
    layout: str = "shared"
    pack_tokens: int | None = None
    dense_mask: bool = True
    weights: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    def __call__(self, pairs: Sequence) -> dict[str, Tensor]:
        if any(len(p.prompt_ids) == 0 for p in pairs):
            raise ValueError("every pair needs at least one prompt token")
        rows, placed = self._place(pairs)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        # Per token: which pair it belongs to (-1 = padding) and which part (0 prompt, 1 chosen, 2 rejected).
        pair_of = torch.full((len(rows), width), -1, dtype=torch.long)
        part_of = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            for column, (token, position, pair_index, part) in enumerate(row):
                input_ids[r, column] = token
                position_ids[r, column] = position
                pair_of[r, column] = pair_index
                part_of[r, column] = part
        batch = {"input_ids": input_ids, "position_ids": position_ids, "num_tokens": (pair_of >= 0).sum()}
        if self.layout == "separate":
            batch["attention_mask"] = (pair_of >= 0).long()
        else:
            batch["pair_ids"], batch["part_ids"] = pair_of, part_of
            if self.dense_mask:
                batch["attention_mask"] = attention.dense_mask(pair_of, part_of, position_ids)
        if all(getattr(p, "ref_chosen_logp", None) is not None for p in pairs):
            batch["ref_chosen_logps"] = torch.tensor([p.ref_chosen_logp for p in pairs], dtype=torch.float32)
            batch["ref_rejected_logps"] = torch.tensor([p.ref_rejected_logp for p in pairs], dtype=torch.float32)
        if self.weights:
            batch["weights"] = torch.tensor([p.weight for p in pairs], dtype=torch.float32)
        for side in ("chosen", "rejected"):
            lengths = [len(getattr(p, f"{side}_ids")) for p in pairs]
            target, source, mask = _response_indices(placed[side], lengths, width)
            batch.update({f"{side}_target": target, f"{side}_source": source, f"{side}_mask": mask})
        return batch

    def _place(self, pairs: Sequence) -> tuple[list[list[tuple[int, int, int, int]]], dict[str, list[_Placed]]]:
        """Lay the pairs out in rows of (token, position, pair, part) tuples."""
        rows: list[list[tuple[int, int, int, int]]] = []
        placed: dict[str, list[_Placed]] = {"chosen": [], "rejected": []}
        if self.layout == "separate":
            for part, side in ((1, "chosen"), (2, "rejected")):
                for i, p in enumerate(pairs):
                    n_prompt = len(p.prompt_ids)
                    placed[side].append(_Placed(len(rows), n_prompt, n_prompt - 1))
                    rows.append(_segment(p.prompt_ids, 0, i, 0) + _segment(getattr(p, f"{side}_ids"), n_prompt, i, part))
            return rows, placed
        sizes = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
        budget = self.pack_tokens or max(sizes)
        for i, (p, size) in enumerate(zip(pairs, sizes)):
            # First fit: the first row with room, else a new one (a pair longer than the budget gets its own row).
            r = None
            if self.layout == "packed":
                r = next((k for k, row in enumerate(rows) if len(row) + size <= budget), None)
            if r is None:
                rows.append([])
                r = len(rows) - 1
            row, n_prompt = rows[r], len(p.prompt_ids)
            prompt_last = len(row) + n_prompt - 1
            row += _segment(p.prompt_ids, 0, i, 0)
            placed["chosen"].append(_Placed(r, len(row), prompt_last))
            row += _segment(p.chosen_ids, n_prompt, i, 1)
            placed["rejected"].append(_Placed(r, len(row), prompt_last))
            row += _segment(p.rejected_ids, n_prompt, i, 2)
        return rows, placed


def without_rejected(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """``batch`` (:class:`PairCollator`'s, any layout) with its rejected responses taken out of the rows.

    What the chosen responses are scored from is unchanged: the same tokens, positions and mask
    rule, the rows only shorter (``separate``: the rejected rows dropped; ``shared`` and ``packed``:
    each row's rejected tokens removed and the rest moved left). The ``rejected_*`` index keys
    describe responses of no token (``[B, 0]``); every other key (counts, labels, reference
    log-probs) is kept as it was. For a forward that needs only the chosen side (KTO's gradient
    forward once the step's KL batch is scored), at the cost of the chosen side alone.
    """
    input_ids = batch["input_ids"]
    rows, width = input_ids.shape
    if "pair_ids" in batch:  # shared, packed: every real token but the rejected ones
        keep = (batch["pair_ids"] >= 0) & (batch["part_ids"] != 2)
    else:  # separate: the chosen rows, first, whole
        keep = batch["attention_mask"].bool() & (torch.arange(rows)[:, None] < batch["chosen_mask"].shape[0])
    kept_rows = keep.any(-1)  # every row but separate's rejected ones: each holds a prompt
    columns = keep.long().cumsum(-1) - 1  # each kept token's new column in its row
    new_row = kept_rows.long().cumsum(0) - 1
    new_rows, new_width = int(kept_rows.sum()), int(keep.sum(-1).max())
    moved = torch.full((rows * width,), -1, dtype=torch.long)  # old flat index -> new flat index
    kept_at = (new_row[:, None] * new_width + columns)[keep]  # each kept token's new flat index
    moved[keep.reshape(-1)] = kept_at
    out = {key: value for key, value in batch.items() if not key.startswith("rejected_")}
    for key, fill in (("input_ids", 0), ("position_ids", 0), ("pair_ids", -1), ("part_ids", 0)):
        if key in batch:
            grid = torch.full((new_rows * new_width,), fill, dtype=batch[key].dtype)
            grid[kept_at] = batch[key][keep]
            out[key] = grid.reshape(new_rows, new_width)
    if "pair_ids" not in batch:
        grid = torch.zeros(new_rows * new_width, dtype=batch["attention_mask"].dtype)
        grid[kept_at] = 1
        out["attention_mask"] = grid.reshape(new_rows, new_width)
    elif "attention_mask" in batch:
        out["attention_mask"] = attention.dense_mask(out["pair_ids"], out["part_ids"], out["position_ids"],
                                                     dtype=batch["attention_mask"].dtype)
    mask = batch["chosen_mask"]
    for key in ("chosen_target", "chosen_source"):
        out[key] = torch.where(mask, moved[batch[key].clamp(min=0)], 0)
    empty = torch.zeros((mask.shape[0], 0), dtype=torch.long)
    out.update(rejected_target=empty, rejected_source=empty.clone(), rejected_mask=empty.bool())
    return out


def _segment(ids: Sequence[int], first_position: int, pair: int, part: int) -> list[tuple[int, int, int, int]]:
    return [(int(t), first_position + k, pair, part) for k, t in enumerate(ids)]
