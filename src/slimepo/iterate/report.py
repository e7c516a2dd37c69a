"""The report of one or more ``slimepo iterate`` loops: every measurement over rounds.

Reads only what the loop wrote: each ``round-R/round.json`` (round 0 is the initial model, when
evaluated) and ``iterate.yaml`` (for the loss). Per round: the benchmark scores, the held-out
preference metrics with chosen-likelihood drift and unlearning measured against the initial model,
rejected-token collapse, generation health (length, end-of-turn rate, degenerate repetition,
constraint pass rate), and what the round's own samples looked like. Curves put every loop given on
the same axes, one line per loop, x = round. A round that is missing or unreadable is a note, never
an exception; a report is always written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimepo.report import BENCHMARK_COLUMNS, MISSING, lookup, markdown_table

#: The loop folder's option file, and each round's record (as :mod:`slimepo.iterate.run` writes them).
LOOP_FILE = "iterate.yaml"
ROUND_FILE = "round.json"

#: (header, path of keys into a round record) of the per-round evaluation table.
EVAL_COLUMNS = (
    ("held-out accuracy", ("eval", "accuracy")),
    ("chosen drift vs initial (nats/token)", ("eval", "drift", "chosen_drift_mean")),
    ("unlearning rate", ("eval", "drift", "unlearning_rate")),
    ("rejected p<1e-4", ("eval", "collapse", "rejected_p_lt_1e-4")),
    ("p(end of turn) at held-out chosen ends", ("eval", "end_of_turn", "chosen", "p_mean")),
    ("length (tokens)", ("eval", "generation", "length_tokens_mean")),
    ("ended", ("eval", "generation", "ended_rate")),
    ("degenerate", ("eval", "generation", "degenerate_rate")),
    ("repetition", ("eval", "generation", "repetition_mean")),
    ("constraint pass rate", ("eval", "constraint_pass_rate")),
)
#: The health of the benchmark answers: the share that ended within the budget (1 - the share the budget
#: cut, which differs between models) and their length.
ANSWER_HEALTH_COLUMNS = tuple(
    (f"{title} {what}", (key, "generation", field))
    for key, title in (("ifeval", "IFEval"), ("ifbench", "IFBench"))
    for what, field in (("answers ended", "ended_rate"), ("answer length (tokens)", "length_tokens_mean"))
)
#: (header, path) of the table of each round's pairs: its samples come from the policy the round starts from.
PAIRS_COLUMNS = (
    ("prompts", ("pairs", "counts", "prompts")),
    ("pairs", ("pairs", "counts", "pairs")),
    ("answers", ("pairs", "samples", "count")),
    ("answer score mean", ("pairs", "samples", "score_mean")),
    ("answers ended", ("pairs", "samples", "ended_rate")),
    ("answer length (tokens)", ("pairs", "samples", "length_tokens_mean")),
    ("train steps", ("train", "global_step")),
    ("last train loss", ("train", "last_logged", "loss")),
    ("minutes (pairs + train + eval)", ("minutes",)),
)

#: Curves over rounds: (file, title, path, y label).
ROUND_CURVES = (
    ("drift.png", "Chosen-likelihood drift vs the initial model", ("eval", "drift", "chosen_drift_mean"),
     "Δ r(y_w) (nats/token)"),
    ("unlearning.png", "Unlearning rate (held-out chosen answers made less likely)", ("eval", "drift", "unlearning_rate"),
     "fraction of pairs"),
    ("collapse.png", "Rejected-token collapse", ("eval", "collapse", "rejected_p_lt_1e-4"), "fraction of rejected tokens"),
    ("end_of_turn.png", "Probability of ending where the held-out chosen answers end",
     ("eval", "end_of_turn", "chosen", "p_mean"), "mean p(end-of-turn token)"),
    ("length.png", "Mean answer length", ("eval", "generation", "length_tokens_mean"), "tokens"),
    ("ended.png", "End-of-turn rate", ("eval", "generation", "ended_rate"), "fraction of answers"),
    ("repetition.png", "Degenerate repetition", ("eval", "generation", "degenerate_rate"), "fraction of answers"),
    ("constraints.png", "Constraint pass rate (held-out prompts)", ("eval", "constraint_pass_rate"), "fraction"),
    ("samples.png", "Score of the round's own answers", ("pairs", "samples", "score_mean"), "mean score"),
)


@dataclass
class Loop:
    """One loop folder, read: its name, loss, rounds by index, problems."""

    path: Path
    name: str
    loss: str | None = None
    rounds: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_loop(path: Path) -> bool:
    """Whether ``path`` is a ``slimepo iterate`` folder."""
    return (Path(path) / LOOP_FILE).is_file()


def read_loop(path: Path) -> Loop:
    """Read a loop folder; every problem becomes a note."""
    loop = Loop(path=path, name=path.name or str(path))
    try:
        options = yaml.safe_load((path / LOOP_FILE).read_text(encoding="utf-8")) or {}
        train = options.get("train") or {}
        loop.loss = str(train.get("loss", "slime"))
    except (OSError, yaml.YAMLError, AttributeError) as error:
        loop.notes.append(f"{LOOP_FILE} could not be read ({type(error).__name__})")
    for folder in sorted(path.glob("round-*")):
        suffix = folder.name.removeprefix("round-")
        if not suffix.isdigit():
            continue
        try:
            record = json.loads((folder / ROUND_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            loop.notes.append(f"{folder.name}: not finished (no {ROUND_FILE})")
            continue
        except (OSError, ValueError) as error:
            loop.notes.append(f"{folder.name}/{ROUND_FILE} could not be read ({type(error).__name__})")
            continue
        seconds = record.get("seconds") or {}
        record["minutes"] = sum(seconds.values()) / 60 if seconds else None
        loop.rounds[int(suffix)] = record
    return loop


def write_rounds_report(loop_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Tables and curves of ``loop_dirs`` over rounds into ``out_dir``; return ``report.md``'s path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loops = [read_loop(Path(path)) for path in loop_dirs]
    names = [loop.name for loop in loops]
    for loop in loops:
        if names.count(loop.name) > 1:
            loop.name = str(loop.path)
    lines = [
        "# Rounds report",
        "",
        "Loops: " + ", ".join(f"`{loop.name}` ({loop.loss or 'loss ?'}, {str(loop.path)})" for loop in loops) + ".",
        "",
        "Round 0 is the initial model. Every round is evaluated against it: drift and unlearning add up over "
        "rounds. Held-out pairs, generations and benchmarks are the same in every round.",
        "",
    ]
    images = [(file, title) for file, title, keys, ylabel in ROUND_CURVES
              if plot_rounds(loops, keys, title, ylabel, out_dir / file)]
    benchmarks = [(header, ("eval", *keys)) for header, keys in (*BENCHMARK_COLUMNS, *ANSWER_HEALTH_COLUMNS)
                  if any(lookup(record, ("eval", *keys)) is not None for loop in loops for record in loop.rounds.values())]
    for header, keys in benchmarks:
        if not header.endswith(("prompts", "questions", "instructions", "(tokens)")) and plot_rounds(loops, keys, header, "score", out_dir / _file_name(header)):
            images.insert(0, (_file_name(header), header))
    for loop in loops:
        lines += [f"## {loop.name}", ""]
        if not loop.rounds:
            lines += ["No finished round.", ""]
            continue
        lines += ["Evaluation after each round:", ""]
        columns = (*benchmarks, *EVAL_COLUMNS)
        lines += markdown_table(("round", *(h for h, _ in columns)),
                                [(index, *(lookup(record, keys) for _, keys in columns))
                                 for index, record in sorted(loop.rounds.items())])
        trained = [(index, record) for index, record in sorted(loop.rounds.items()) if index > 0]
        if trained:
            lines += ["", "Each round's pairs (sampled from the policy the round starts from) and training:", ""]
            lines += markdown_table(("round", *(h for h, _ in PAIRS_COLUMNS)),
                                    [(index, *(lookup(record, keys) for _, keys in PAIRS_COLUMNS))
                                     for index, record in trained])
        lines.append("")
    if images:
        lines += ["## Curves over rounds", "", "One line per loop; x = round (0: the initial model).", ""]
        for file, title in images:
            lines += [f"### {title}", "", f"![{title}]({file})", ""]
    notes = [f"{loop.name}: {note}" for loop in loops for note in loop.notes]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes)]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _file_name(header: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in header.lower()).strip("-") + ".png"


def plot_rounds(loops: Sequence[Loop], keys: tuple[str, ...], title: str, ylabel: str, path: Path) -> bool:
    """One line per loop of the value at ``keys`` over rounds into ``path``; False when no round has it."""
    series = []
    for loop in loops:
        points = [(index, lookup(record, keys)) for index, record in sorted(loop.rounds.items())]
        points = [(x, float(y)) for x, y in points if isinstance(y, (int, float)) and math.isfinite(y)]
        if points:
            series.append((loop, points))
    if not series:
        return False
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'slimepo[report]'") from error
    figure = Figure(figsize=(6.4, 4.2), dpi=110, layout="constrained")
    ax = figure.subplots()
    for i, (loop, points) in enumerate(series):
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", lw=1.8, color=f"C{i % 10}",
                label=f"{loop.name} ({loop.loss or 'loss ?'})")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.savefig(path)
    return True


__all__ = ["MISSING", "Loop", "is_loop", "read_loop", "write_rounds_report"]
