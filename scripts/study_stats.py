"""The statistics of the study's pages (scripts/study.py, scripts/loop_study.py): paired bootstrap
differences of pass rates over prompts and seeds, and Holm's correction over a table of them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def paired_bootstrap(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]], *,
                     resamples: int = 10_000, seed: int = 0,
                     prompts: Iterable[str] | None = None) -> tuple[float, float, float, float] | None:
    """Pass rate of ``a`` minus ``b`` (each a list of seeds' per-prompt passes), a 95% interval and a
    two-sided p-value, over the prompts both sides answered (only those of ``prompts`` when given).

    The prompts are paired; the interval is a two-level bootstrap: the prompts are resampled (the same
    draw for both sides) and, independently per side, its seeds. With one seed a side contributes no
    seed noise, so the interval is too narrow for it. The p-value is that of the same draws: twice the
    smaller of the shares of draws at or below 0 and at or above 0, each count and the number of
    draws plus one (so that it is never 0: at 10,000 draws it is at least 0.0002), at most 1.
    """
    import numpy as np

    if not a or not b:
        return None
    common = set.intersection(*(set(run) for run in (*a, *b)))
    if prompts is not None:
        common &= set(prompts)
    prompts = sorted(common)
    if not prompts:
        return None
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(prompts), size=(resamples, len(prompts)))

    def side(runs: Sequence[Mapping[str, float]]) -> tuple[float, Any]:
        passes = np.array([[run[p] for p in prompts] for run in runs])  # seeds x prompts
        per_seed = passes[:, draw].mean(axis=2)  # seeds x resamples
        seeds = rng.integers(0, len(runs), size=(len(runs), resamples))
        return float(passes.mean()), np.take_along_axis(per_seed, seeds, axis=0).mean(axis=0)

    (mean_a, boot_a), (mean_b, boot_b) = side(a), side(b)
    diffs = boot_a - boot_b
    low, high = np.quantile(diffs, [0.025, 0.975])
    tail = min(int(np.sum(diffs <= 1e-12)), int(np.sum(diffs >= -1e-12)))  # a draw at 0 counts on both sides
    return mean_a - mean_b, float(low), float(high), min(1.0, 2 * (tail + 1) / (resamples + 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (in their order): the i-th smallest of m is multiplied
    by m − i + 1, at most 1, and never below the adjusted value of a smaller one. A comparison whose
    adjusted p is below 0.05 is separated with a family-wise error of at most 5% over all m."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def corrected_cells(table: Sequence[Sequence[tuple[float, float, float, float] | None]]) -> tuple[list[list[str]], int]:
    """Each :func:`paired_bootstrap` result of ``table`` (rows of cells) as
    ``difference [interval] p …, Holm …``, Holm's adjustment taken over every comparison of the table;
    and that number of comparisons, m. A cell without a comparison is "—"."""
    found = [cell for row in table for cell in row if cell is not None]
    adjusted = iter(holm([cell[3] for cell in found]))
    cells = [["—" if cell is None else
              f"{cell[0]:+.3f} [{cell[1]:+.2f}, {cell[2]:+.2f}] p {cell[3]:.2g}, Holm {next(adjusted):.2g}"
              for cell in row] for row in table]
    return cells, len(found)


def correction_note(m: int) -> str:
    """What the p-values of a difference table are, for its ``m`` comparisons."""
    return (f"p: two-sided, from the same draws (at 10,000 draws never below 0.0002). Holm: the p-value adjusted "
            f"by Holm's step-down method for the m = {m} comparisons of this table; a cell whose Holm value is below "
            f"0.05 stays separated after correcting for them (a family-wise error of at most 5%), while about "
            f"{0.05 * m:.1f} of {m} intervals would exclude 0 by chance alone if no two runs differed.")
