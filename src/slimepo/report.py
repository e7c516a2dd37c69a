"""Markdown report comparing training runs: curves from metrics.jsonl, tables from eval.json.

Reads only what training and evaluation wrote in each run folder:

- ``metrics.jsonl`` (:mod:`slimepo.metrics_log`): one JSON object per line,
  ``{"step", "split", "epoch", <metric>...}`` with ``split`` in train / eval / monitor;
- ``config.yaml``: the run's options, of which the report uses ``loss``;
- ``eval.json`` (optional): :func:`slimepo.eval.preference_metrics`, possibly with
  ``"generation"`` (:func:`slimepo.eval.summarize_health`) and ``"constraint_pass_rate"``;
  training writes one in the run folder, ``slimepo eval`` and ``compare`` theirs in ``eval/``
  (shown instead when present), and further evaluations may sit in ``eval-*/``: every
  benchmark score found in them (IFEval, IFBench, MT-Bench, Arena-Hard, AlpacaEval) goes
  into a Benchmarks table.

Lines or files that cannot be read are skipped and listed under "Notes"; a report is
always written. Plots need matplotlib (``pip install slimepo[report]``) and no display.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimepo.metrics_log import SPLITS

MISSING = "—"
# Split -> how its points are drawn: line style, marker.
_SPLIT_STYLE = {"train": ("-", None), "eval": ("--", "o"), "monitor": (":", "s")}
_SMOOTH_FROM = 50  # train curves with at least this many points also get a moving average
_MAX_NOTES_PER_FILE = 10


@dataclass
class Run:
    """One run folder, read: its name, loss, valid metric lines, eval results, problems."""

    path: Path
    name: str
    loss: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    #: Benchmark results by their key in eval.json (``ifeval``, ``mt_bench``...), from every
    #: evaluation of the run (``eval/`` and ``eval-*/``), the newest one's where several have it.
    benchmarks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def last(self, key: str) -> Any:
        values = [row[key] for row in self.rows if row.get("split") == "train" and key in row]
        return max(values) if values else None


@dataclass(frozen=True)
class Curve:
    """One subplot: a metric over optimizer steps, one line per run and split."""

    key: str
    title: str
    ylabel: str
    ylim: tuple[float | None, float | None] | None = None  # None: matplotlib's choice


@dataclass(frozen=True)
class Panel:
    """One PNG: a titled group of curves that share a theme."""

    filename: str
    title: str
    curves: tuple[Curve, ...]


FULL_RANGE = (-0.02, 1.02)
FROM_ZERO = (0.0, None)  # small fractions stay readable
LOGLIK = "log-likelihood (nats/token)"
REJECTED_SHARE = "fraction of rejected tokens"
PANELS = (
    Panel(
        "loglik.png",
        "Length-normalized log-likelihood r(y) of responses",
        (
            Curve("logps/chosen", "chosen r(y_w)", LOGLIK),
            Curve("logps/rejected", "rejected r(y_l)", LOGLIK),
        ),
    ),
    Panel(
        "margin.png",
        "Margin between chosen and rejected",
        (
            Curve("logps/margin", "Δ = r(y_w) − r(y_l)", "margin (nats/token)"),
            Curve("margin", "reward margin as each loss defines it", "reward margin (loss units)"),
        ),
    ),
    Panel(
        "accuracy.png",
        "Preference accuracy",
        (Curve("accuracy", "reward(y_w) > reward(y_l)", "fraction of pairs", FULL_RANGE),),
    ),
    Panel(
        "collapse.png",
        "Rejected-token collapse",
        (
            Curve("collapse/rejected_p_lt_1e-4", "tokens with p < 1e-4", REJECTED_SHARE, FROM_ZERO),
            Curve("collapse/rejected_min_logp", "least likely rejected token", "log-prob (nats)"),
        ),
    ),
    Panel(
        "monitor.png",
        "Monitor set (fixed pairs scored during training)",
        (
            Curve("monitor/chosen_drift", "chosen drift since the start", "Δ r(y_w) (nats/token)"),
            Curve("monitor/collapse", "rejected-token collapse", REJECTED_SHARE, FROM_ZERO),
        ),
    ),
    Panel(
        "optimization.png",
        "Optimization",
        (
            Curve("grad_norm", "gradient norm", "L2 norm"),
            Curve("learning_rate", "learning rate", "learning rate"),
            Curve("tokens_per_second", "throughput", "tokens / second"),
        ),
    ),
)

#: The folder of a run where ``slimepo eval`` and ``slimepo compare`` write their evaluation.
EVALUATION_DIR = "eval"

# eval.json columns: (header, path of keys into the dict).
PREFERENCE_COLUMNS = (
    ("pairs", ("pairs",)),
    ("accuracy", ("accuracy",)),
    ("margin Δ mean (nats/token)", ("margin", "mean")),
    ("chosen r (nats/token)", ("chosen_logp_mean",)),
    ("rejected r (nats/token)", ("rejected_logp_mean",)),
    ("rejected p<1e-4", ("collapse", "rejected_p_lt_1e-4")),
    ("min rejected log-prob", ("collapse", "rejected_min_logp")),
    ("p(end of turn) at chosen ends", ("end_of_turn", "chosen", "p_mean")),
    ("chosen drift vs base (nats/token)", ("drift", "chosen_drift_mean")),
    ("unlearning rate", ("drift", "unlearning_rate")),
)
#: Where each benchmark's result sits in an eval.json.
BENCHMARK_KEYS = ("ifeval", "ifbench", "mt_bench", "arena_hard", "alpaca_eval")
#: Benchmark columns: (header, path of keys into a run's :attr:`Run.benchmarks`).
BENCHMARK_COLUMNS = (
    ("IFEval prompt strict", ("ifeval", "prompt_level_strict")),
    ("IFEval prompt loose", ("ifeval", "prompt_level_loose")),
    ("IFEval prompts", ("ifeval", "prompts")),
    ("IFBench prompt strict", ("ifbench", "prompt_level_strict")),
    ("IFBench prompt loose", ("ifbench", "prompt_level_loose")),
    ("IFBench prompts", ("ifbench", "prompts")),
    ("MT-Bench (1-10)", ("mt_bench", "overall")),
    ("MT-Bench questions", ("mt_bench", "questions")),
    ("Arena-Hard (0.5 = par)", ("arena_hard", "score")),
    ("Arena-Hard questions", ("arena_hard", "questions")),
    ("AlpacaEval win rate (%)", ("alpaca_eval", "win_rate")),
    ("AlpacaEval instructions", ("alpaca_eval", "instructions")),
)
GENERATION_COLUMNS = (
    ("generations", ("generation", "count")),
    ("ended", ("generation", "ended_rate")),
    ("empty", ("generation", "empty_rate")),
    ("degenerate", ("generation", "degenerate_rate")),
    ("repetition", ("generation", "repetition_mean")),
    ("length (tokens)", ("generation", "length_tokens_mean")),
    ("constraint pass rate", ("constraint_pass_rate",)),
)


def write_report(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Plot and tabulate ``run_dirs`` into ``out_dir``; return the path of ``report.md``.

    One PNG per panel of :data:`PANELS` with data (one line per run and split), a runs
    table, and one row per run of its ``eval.json`` results (``—`` where missing).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [read_run(Path(path)) for path in run_dirs]
    _make_names_unique(runs)
    loss_panel = Panel(
        "loss.png",
        "Loss and its terms",
        tuple(
            Curve(
                key, "total loss" if key == "loss" else f"term: {key[5:]}", "loss value (unitless)"
            )
            for key in _loss_keys(runs)
        ),
    )
    images = []
    for panel in (loss_panel, *PANELS):
        if plot_panel(panel, runs, out_dir / panel.filename):
            images.append(panel)

    lines = [
        "# Training report",
        "",
        "## Runs",
        "",
        *markdown_table(
            ("run", "loss", "last step", "last epoch", "metric lines", "folder"),
            [
                (
                    run.name,
                    run.loss,
                    run.last("step"),
                    run.last("epoch"),
                    len(run.rows),
                    str(run.path),
                )
                for run in runs
            ],
        ),
        "",
        "## Training curves",
        "",
        "x axis: optimizer step. Solid: train split (faint: every logged step; bold: centred "
        "moving average when there are many). Dashed with circles: eval split. Dotted with squares: "
        "monitor split. One colour per run.",
        "",
    ]
    for panel in images:
        lines += [f"### {panel.title}", "", f"![{panel.title}]({panel.filename})", ""]
    if not images:
        lines += ["No curve could be drawn: no run has a readable metric line.", ""]
    lines += ["## Evaluation", "", "Held-out preference pairs (`eval.json`):", ""]
    lines += _eval_table(runs, PREFERENCE_COLUMNS)
    lines += ["", "Generations:", ""]
    lines += _eval_table(runs, GENERATION_COLUMNS)
    shown = [(header, keys) for header, keys in BENCHMARK_COLUMNS
             if any(lookup(run.benchmarks, keys) is not None for run in runs)]
    if shown:
        lines += ["", "## Benchmarks", "",
                  "From each run's evaluations (`eval/eval.json`, `eval-*/eval.json`; the newest where several "
                  "answered the same benchmark):", ""]
        lines += markdown_table(("run", *(h for h, _ in shown)),
                                [(run.name, *(lookup(run.benchmarks, keys) for _, keys in shown)) for run in runs])
    notes = [f"{run.name}: {note}" for run in runs for note in run.notes]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def read_run(run_dir: Path) -> Run:
    """Read a run folder; every problem becomes a note instead of an exception."""
    run = Run(path=run_dir, name=run_dir.name or str(run_dir))
    run.rows = _read_metrics(run_dir / "metrics.jsonl", run.notes)
    config = _read_file(run_dir / "config.yaml", yaml.safe_load, run.notes)
    if isinstance(config, dict) and config.get("loss") is not None:
        run.loss = str(config["loss"])
    elif config is not None:
        run.notes.append("config.yaml has no `loss`")
    # An evaluation (slimepo eval, compare) writes beside training's eval.json, into eval/; it is the fuller one.
    evaluations = {}
    for path in sorted(run_dir.glob(f"{EVALUATION_DIR}*/eval.json"), key=lambda p: p.stat().st_mtime):
        evaluation = _read_file(path, json.loads, run.notes)
        if isinstance(evaluation, dict):
            evaluations[path] = evaluation
            run.benchmarks.update({key: evaluation[key] for key in BENCHMARK_KEYS if isinstance(evaluation.get(key), dict)})
        elif evaluation is not None:
            run.notes.append(f"{path.relative_to(run_dir)} is not a JSON object, ignored")
    for path in (run_dir / EVALUATION_DIR / "eval.json", run_dir / "eval.json"):
        if path in evaluations:
            run.evaluation = evaluations[path]
            break
        if path.parent == run_dir and path.exists():
            evaluation = _read_file(path, json.loads, run.notes)
            if isinstance(evaluation, dict):
                run.evaluation = evaluation
            elif evaluation is not None:
                run.notes.append("eval.json is not a JSON object, ignored")
    return run


def _read_file(path: Path, parse: Callable[[str], Any], notes: list[str]) -> Any:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"{path.name} is missing")
    except (OSError, ValueError, yaml.YAMLError) as error:
        notes.append(f"{path.name} could not be read ({type(error).__name__}), ignored")
    return None


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        notes.append(f"{path.name} is missing or unreadable: no curves")
        return []
    rows, problems, non_finite = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            problems.append(f"line {number}: not JSON")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: not a JSON object")
        elif row.get("split") == "summary":  # the trainer's end-of-run totals, not a curve
            continue
        elif not _is_step(row.get("step")) or row.get("split") not in SPLITS:
            problems.append(f"line {number}: needs an integer `step` and a `split` in {SPLITS}")
        else:
            metrics = {key: float(value) for key, value in row.items() if _is_number(value)}
            non_finite += sum(not math.isfinite(value) for value in metrics.values())
            if _is_number(row.get("logps/chosen")) and _is_number(row.get("logps/rejected")):
                metrics["logps/margin"] = metrics["logps/chosen"] - metrics["logps/rejected"]
            rows.append({**metrics, "split": row["split"], "step": int(row["step"])})
    for problem in problems[:_MAX_NOTES_PER_FILE]:
        notes.append(f"{path.name} {problem}, skipped")
    if len(problems) > _MAX_NOTES_PER_FILE:
        notes.append(f"{path.name}: {len(problems) - _MAX_NOTES_PER_FILE} more bad lines skipped")
    if non_finite:
        notes.append(f"{path.name}: {non_finite} NaN/inf metric values (gaps in the curves)")
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_step(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer() and value >= 0


def _loss_keys(runs: Sequence[Run]) -> list[str]:
    keys = {key for run in runs for row in run.rows for key in row if key.startswith("loss/")}
    return ["loss", *sorted(keys)]


def _make_names_unique(runs: Sequence[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} #{seen[run.name]}"


def plot_panel(panel: Panel, runs: Sequence[Run], path: Path) -> bool:
    """Draw the curves of ``panel`` that have data into ``path``; False if none has."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'slimepo[report]'") from error

    curves = [c for c in panel.curves if any(c.key in row for run in runs for row in run.rows)]
    if not curves:
        return False
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure = Figure(figsize=(5.2 * columns, 3.6 * rows + 0.9), dpi=110, layout="constrained")
    figure.suptitle(panel.title, fontsize=13)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    splits_drawn: set[str] = set()
    for ax, curve in zip(axes, curves, strict=False):
        for run, color in zip(runs, colors, strict=True):
            for split in SPLITS:
                steps, values = _series(run, split, curve.key)
                if steps:
                    _draw(ax, steps, values, split, color)
                    splits_drawn.add(split)
        ax.set_title(curve.title, fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(curve.ylabel)
        if curve.ylim:
            ax.set_ylim(*curve.ylim)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.grid(alpha=0.3)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=color, lw=2.5) for color in colors]
    labels = [f"{run.name} ({run.loss or 'loss ?'})" for run in runs]
    for split in SPLITS:
        if split in splits_drawn:
            style, marker = _SPLIT_STYLE[split]
            handles.append(Line2D([], [], color="0.3", linestyle=style, marker=marker))
            labels.append(f"{split} split")
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False
    )
    figure.savefig(path)
    return True


def _series(run: Run, split: str, key: str) -> tuple[list[int], list[float]]:
    by_step = {row["step"]: row[key] for row in run.rows if row["split"] == split and key in row}
    steps = sorted(by_step)  # a resumed run may log a step twice: the last value wins
    return steps, [by_step[step] for step in steps]


def _draw(ax: Any, steps: list[int], values: list[float], split: str, color: str) -> None:
    style, marker = _SPLIT_STYLE[split]
    if split == "train" and len(values) >= _SMOOTH_FROM:
        ax.plot(steps, values, color=color, lw=0.8, alpha=0.3)
        ax.plot(steps, _moving_average(values), color=color, lw=2.0)
    else:
        ax.plot(steps, values, color=color, linestyle=style, marker=marker, markersize=4, lw=1.8)


def _moving_average(values: list[float]) -> list[float]:
    """Centred moving average over ~1/25 of the points: no lag, unlike an EMA.

    The window shrinks at the ends; NaN/inf points are left out of every mean and stay
    gaps themselves.
    """
    half = max(1, len(values) // 50)
    smoothed = []
    for i, value in enumerate(values):
        window = [v for v in values[max(0, i - half) : i + half + 1] if math.isfinite(v)]
        smoothed.append(sum(window) / len(window) if math.isfinite(value) else math.nan)
    return smoothed


def _eval_table(runs: Sequence[Run], columns: Sequence[tuple[str, tuple[str, ...]]]) -> list[str]:
    rows = [(run.name, *(lookup(run.evaluation, keys) for _, keys in columns)) for run in runs]
    return markdown_table(("run", *(header for header, _ in columns)), rows)


def lookup(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = [_row(headers), "| " + " | ".join("---" for _ in headers) + " |"]
    return lines + [_row([_cell(value) for value in row]) for row in rows]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return MISSING
    if _is_number(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return str(value) if isinstance(value, str) else MISSING
