"""The small-scale SLIME study: does SLIME beat DPO and SimPO on on-policy, verifiable pairs?

Every run is ``slimepo.train`` (what ``slimepo compare`` runs per loss) on
``data/onpolicy/train.jsonl.gz`` with one budget, followed by ``slimepo.eval.evaluate``
on the validation, test and held-out-family prompts, greedy and sampled. The study is
built from jobs, one per (loss, learning rate, seed), done in order of priority:

1. the base model (no training), evaluated like every run;
2. the learning-rate grid: every ``GRID_LOSSES`` loss at every ``LEARNING_RATES`` value,
   seed 0, judged on the validation split only;
3. the grid losses at the learning rate that won on validation (greedy constraint pass
   rate, ties broken by preference accuracy), every seed, evaluated on test and the
   held-out family (the grid's seed-0 run is reused);
4. the base model's sampled answers for the other seeds;
5. the other losses at the rate of their family (``INHERIT``), every seed.

Each finished job writes its evaluated results under ``results/study/`` (tracked in
git): ``runs/<loss>/lr<lr>-seed<seed>/`` holds ``train.json``, ``metrics.jsonl`` and one
``eval-<split>-<decoding>.json`` plus gzipped generations per evaluation. A job whose
files exist is skipped, so ``run`` can be stopped at any time (``--max-minutes``) and
continued later; ``report`` writes ``docs/results.md`` and its plots from whatever
results exist, and lists what is still missing.

    python scripts/study.py run --max-minutes 110    # one part of the study
    python scripts/study.py report                   # docs/results.md + docs/img/study-*.png
    make study                                       # both, until every job is done
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from slimepo.report import lookup, markdown_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "onpolicy"
RESULTS = ROOT / "results" / "study"
RUNS = ROOT / "runs" / "study"
DOC = ROOT / "docs" / "results.md"
IMG = ROOT / "docs" / "img"

#: The budget every run shares (``slimepo train`` options); only loss, rate and seed vary.
MODEL = "default"  # slimepo's embedded SmolLM2-135M-Instruct
BASE_OPTIONS: dict[str, Any] = {
    "dataset": str(DATA / "train.jsonl.gz"),
    "eval_dataset": str(DATA / "validation.jsonl.gz"),
    "eval_split": "train",
    "batch_size": 4,
    "num_epochs": 1.0,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.1,
    "logging_steps": 2,
    "save_steps": 0,
    "monitor_steps": 10,
    "monitor_pairs": 8,
}
BASELINE = "base"
GRID_LOSSES = ("slime", "dpo", "simpo")
#: In order of priority: a study cut short has the middle value for every loss first.
LEARNING_RATES = (3e-4, 1e-4, 1e-3)
#: Losses outside the grid use the rate chosen for this grid loss.
INHERIT = {
    "slime-no-anchor": "slime",
    "slime-no-stabilizer": "slime",
    "slime-hard": "slime",
    "slime-soft": "slime",
    "ipo": "dpo",
    "cpo": "simpo",
    "orpo": "simpo",
}
MAIN_LOSSES = (*GRID_LOSSES, *INHERIT)
SEEDS = (0, 1, 2)
SPLITS = {
    "validation": "validation.jsonl.gz",
    "test": "test.jsonl.gz",
    "heldout": "test_heldout_family.jsonl.gz",
}
DECODINGS: dict[str, dict[str, Any]] = {
    "greedy": {"sampling": False},
    "sampled": {"sampling": True, "temperature": 0.9, "top_p": 0.95},  # as the data was sampled
}
MAX_NEW_TOKENS = 96  # as the data was sampled
EVAL_BATCH = 64  # every split in one batch: 25% faster generation than 16 on 2 cores
VALIDATION = (("validation", "greedy"),)
TEST = tuple((split, decoding) for split in ("test", "heldout") for decoding in DECODINGS)

logger = logging.getLogger("study")


@dataclasses.dataclass(frozen=True)
class Job:
    """One run (loss, learning rate, seed) and the evaluations it still owes."""

    loss: str
    lr: float | None  # None: the base model, not trained
    seed: int
    evals: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return run_name(self.loss, self.lr, self.seed)


def run_name(loss: str, lr: float | None, seed: int) -> str:
    return f"{loss}/seed{seed}" if lr is None else f"{loss}/lr{lr:.0e}-seed{seed}"


def eval_file(results: Path, name: str, split: str, decoding: str) -> Path:
    return results / "runs" / name / f"eval-{split}-{decoding}.json"


# ---------------------------------------------------------------------------- plan


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def chosen_rates(results: Path) -> dict[str, float]:
    """Per grid loss whose grid is complete: the rate with the best validation result."""
    chosen = {}
    for loss in GRID_LOSSES:
        scored = []
        for lr in LEARNING_RATES:
            evaluation = read_json(eval_file(results, run_name(loss, lr, 0), "validation", "greedy"))
            if evaluation is None and failed(results, run_name(loss, lr, 0)):
                continue  # a rate whose run failed (e.g. diverged) loses
            if evaluation is None:
                break
            scored.append((validation_score(evaluation), -lr, lr))
        else:
            if scored:
                chosen[loss] = max(scored)[2]  # equal scores: the smaller rate
    return chosen


def validation_score(evaluation: Mapping[str, Any]) -> tuple[float, float]:
    """What the grid maximizes: greedy constraint pass rate, then preference accuracy."""
    return (evaluation.get("constraint_pass_rate") or 0.0, evaluation.get("accuracy") or 0.0)


def plan(results: Path) -> list[Job]:
    """Every job the study needs that its results can already decide, in order of priority."""
    jobs = [Job(BASELINE, None, 0, VALIDATION + TEST)]
    jobs += [Job(loss, lr, 0, VALIDATION) for lr in LEARNING_RATES for loss in GRID_LOSSES]
    chosen = chosen_rates(results)
    rate = {loss: chosen.get(INHERIT.get(loss, loss)) for loss in MAIN_LOSSES}
    # The grid losses over every seed first, then the base model's other sampled answers, then the rest.
    jobs += [Job(loss, rate[loss], seed, TEST) for seed in SEEDS for loss in GRID_LOSSES if rate[loss] is not None]
    jobs += [Job(BASELINE, None, seed, tuple(e for e in TEST if e[1] == "sampled")) for seed in SEEDS[1:]]
    jobs += [Job(loss, rate[loss], seed, TEST) for seed in SEEDS for loss in INHERIT if rate[loss] is not None]
    return jobs


def failed(results: Path, name: str) -> dict[str, Any] | None:
    """The error of a run that failed (``failed.json``); such a run is not retried until it is deleted."""
    return read_json(results / "runs" / name / "failed.json")


def missing_evals(job: Job, results: Path) -> tuple[tuple[str, str], ...]:
    return tuple(e for e in job.evals if not eval_file(results, job.name, *e).is_file())


def pending(results: Path) -> list[Job]:
    """The jobs of :func:`plan` with evaluations still missing, merged per run."""
    merged: dict[str, Job] = {}
    for job in plan(results):
        todo = missing_evals(job, results)
        if not todo or failed(results, job.name):
            continue
        if job.name in merged:
            todo = merged[job.name].evals + tuple(e for e in todo if e not in merged[job.name].evals)
        merged[job.name] = dataclasses.replace(job, evals=todo)
    return list(merged.values())


def undecided(results: Path) -> list[str]:
    """Runs the study will need but cannot plan yet (their rate awaits the grid)."""
    chosen = chosen_rates(results)
    return [f"{loss} (seeds {', '.join(map(str, SEEDS))}): rate not chosen yet" for loss in MAIN_LOSSES
            if INHERIT.get(loss, loss) not in chosen]


# ---------------------------------------------------------------------------- run


def train_config(job: Job, runs: Path):
    from slimepo.config import TrainConfig

    return TrainConfig(**BASE_OPTIONS, model=MODEL, loss=job.loss, learning_rate=job.lr, seed=job.seed,
                       output_dir=str(runs / job.name), overwrite=True)


def run_job(job: Job, results: Path, runs: Path) -> None:
    """Train the job's run (unless its adapter and train.json exist), then evaluate it."""
    from slimepo.train import train

    out = results / "runs" / job.name
    out.mkdir(parents=True, exist_ok=True)
    run_dir = runs / job.name
    model = MODEL
    if job.lr is not None:
        model = str(run_dir)
        if not ((out / "train.json").is_file() and (run_dir / "adapter_config.json").is_file()):
            config = train_config(job, runs)
            logger.info("%s: training", job.name)
            start = time.perf_counter()
            result = train(config)
            wall = time.perf_counter() - start
            shutil.copyfile(run_dir / "metrics.jsonl", out / "metrics.jsonl")
            write_json(out / "train.json", {
                "loss": job.loss, "learning_rate": job.lr, "seed": job.seed, "steps": result.global_step,
                "wall_seconds": round(wall, 1), "options": dataclasses.asdict(config) | {"output_dir": None},
                "validation_after": result.after, "machine": machine(),
            })
    for split, decoding in job.evals:
        logger.info("%s: evaluating on %s, %s", job.name, split, decoding)
        start = time.perf_counter()
        evaluation = evaluate_one(model, split, decoding, job.seed, run_dir / f"eval-{split}-{decoding}")
        evaluation["wall_seconds"] = round(time.perf_counter() - start, 1)
        generations = run_dir / f"eval-{split}-{decoding}" / "generations.jsonl"
        with generations.open("rb") as src, gzip.open(out / f"generations-{split}-{decoding}.jsonl.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        write_json(eval_file(results, job.name, split, decoding), evaluation)


def evaluate_one(model: str, split: str, decoding: str, seed: int, out_dir: Path) -> dict[str, Any]:
    from slimepo.eval.run import evaluate

    base = None if model == MODEL else MODEL
    return evaluate(model, str(DATA / SPLITS[split]), split="train", out_dir=out_dir, base=base,
                    max_new_tokens=MAX_NEW_TOKENS, seed=seed, batch_size=EVAL_BATCH, **DECODINGS[decoding])


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a killed job leaves no half-written result


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run(results: Path, runs: Path, max_minutes: float | None, max_jobs: int | None) -> int:
    """Do pending jobs in order until none is left or the time is up; return jobs done."""
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    done = 0
    while (jobs := pending(results)) and (max_jobs is None or done < max_jobs):
        if deadline is not None and time.monotonic() > deadline:
            logger.info("time is up; %d job(s) pending, rerun to continue", len(jobs))
            break
        try:
            run_job(jobs[0], results, runs)
        except Exception as err:  # e.g. a diverging run stopped by --max-bad-steps: record it, go on
            logger.exception("%s failed", jobs[0].name)
            write_json(results / "runs" / jobs[0].name / "failed.json", {"error": f"{type(err).__name__}: {err}"})
        done += 1
    return done


# ---------------------------------------------------------------------------- report


@dataclasses.dataclass
class RunResult:
    loss: str
    lr: float | None
    seed: int
    train: dict[str, Any] | None
    evals: dict[tuple[str, str], dict[str, Any]]
    metrics: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return run_name(self.loss, self.lr, self.seed)


def load_results(results: Path) -> list[RunResult]:
    runs = []
    for folder in sorted((results / "runs").glob("*/*")):
        loss, label = folder.parent.name, folder.name
        lr_text, _, seed_text = label.rpartition("seed")
        lr = float(lr_text[2:].rstrip("-")) if lr_text else None
        evals = {}
        for path in folder.glob("eval-*-*.json"):
            split, decoding = path.stem.removeprefix("eval-").rsplit("-", 1)
            if (data := read_json(path)) is not None:
                evals[(split, decoding)] = data
        metrics = []
        if (folder / "metrics.jsonl").is_file():
            metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        runs.append(RunResult(loss, lr, int(seed_text), read_json(folder / "train.json"), evals, metrics))
    return runs


#: Columns of the main table: (header, split, decoding, keys into eval json).
MAIN_COLUMNS = (
    ("test pass, greedy", "test", "greedy", ("constraint_pass_rate",)),
    ("test pass, sampled", "test", "sampled", ("constraint_pass_rate",)),
    ("held-out family pass, greedy", "heldout", "greedy", ("constraint_pass_rate",)),
    ("held-out family pass, sampled", "heldout", "sampled", ("constraint_pass_rate",)),
    ("pref. accuracy", "test", "greedy", ("accuracy",)),
    ("chosen drift (nats/tok)", "test", "greedy", ("drift", "chosen_drift_mean")),
    ("unlearning rate", "test", "greedy", ("drift", "unlearning_rate")),
    ("rejected p<1e-4", "test", "greedy", ("collapse", "rejected_p_lt_1e-4")),
    ("ended (EOT)", "test", "greedy", ("generation", "ended_rate")),
    ("degenerate", "test", "greedy", ("generation", "degenerate_rate")),
    ("length (tokens)", "test", "greedy", ("generation", "length_tokens_mean")),
)


def number(data: Any, keys: Sequence[str], spec: str) -> str:
    value = lookup(data, keys)
    return format(value, spec) if isinstance(value, (int, float)) else "—"


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    digits = 3 if max(abs(v) for v in values) < 10 else 1
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} ({len(values)})"


def values(runs: Iterable[RunResult], split: str, decoding: str, keys: Sequence[str]) -> list[float]:
    found = (lookup(run.evals.get((split, decoding)), keys) for run in runs)
    return [float(v) for v in found if isinstance(v, (int, float)) and math.isfinite(v)]


def main_groups(runs: Sequence[RunResult], chosen: Mapping[str, float]) -> list[tuple[str, list[RunResult]]]:
    """(label, runs) for the base model and every loss at its chosen rate, in table order."""
    groups = [(BASELINE, [r for r in runs if r.loss == BASELINE])]
    for loss in MAIN_LOSSES:
        rate = chosen.get(INHERIT.get(loss, loss))
        members = [r for r in runs if r.loss == loss and rate is not None and r.lr == rate and
                   any(split != "validation" for split, _ in r.evals)]
        groups.append((loss if rate is None else f"{loss} (lr {rate:.0e})", members))
    return groups


def report(results: Path, doc: Path, img: Path) -> Path:
    runs = load_results(results)
    chosen = chosen_rates(results)
    groups = main_groups(runs, chosen)
    lines = [
        "# The SLIME study: SmolLM2-135M-Instruct on on-policy, verifiable preference pairs",
        "",
        "Generated by `python scripts/study.py report` from the results in `results/study/` "
        "(`make study` runs the missing jobs first, then this). Every table and plot comes from those files; "
        "the reading is written by hand (`results/study/reading.md`) for the results present when it was written.",
        "",
    ]
    reading = results / "reading.md"
    if reading.is_file():
        lines += [reading.read_text(encoding="utf-8").strip(), ""]
    lines += ["## Results on test prompts (mean ± std over seeds, number of seeds in brackets)", ""]
    lines += markdown_table(["run", *(c[0] for c in MAIN_COLUMNS)],
                   [[label, *(mean_std(values(members, s, d, k)) for _, s, d, k in MAIN_COLUMNS)]
                    for label, members in groups])
    lines += ["", "Pass rates are shares of prompts whose generated answer obeys the prompt's constraint "
              "(`slimepo.constraints.check`, with our own checker for every family: the study predates the IFEval "
              "checkers that now decide six families, and the tokenization fix that ends a ChatML response at its "
              "`<|im_end|>`, one token shorter than the study trained on); test: 45 prompts of 7 families; held-out family: 52 prompts of "
              "`include_word`, a family no training pair has. Greedy and sampled (T=0.9, top-p 0.95, one answer per "
              "prompt, seeded by the run's seed) decoding, at most 96 new tokens. Preference accuracy, drift, "
              "unlearning and collapse are measured on the 45 test pairs (drift and unlearning "
              "relative to the base model); "
              "ended/degenerate/length describe the greedy test answers.", ""]
    lines += difference_section(results, groups)
    lines += family_table(groups)
    lines += grid_section(runs, chosen)
    plots = make_plots(groups, img)
    if plots:
        lines += ["## Plots", ""] + [f"![{title}]({os.path.relpath(path, doc.parent)})" for title, path in plots] + [""]
    lines += compute_section(runs)
    lines += setup_section()
    jobs = pending(results)
    todo = [f"{job.name}: {', '.join('/'.join(e) for e in job.evals)}" for job in jobs]
    todo += undecided(results)
    todo += [f"{r.name}: failed ({failure['error']})" for r in runs if (failure := failed(results, r.name))]
    lines += ["## Not run yet", ""]
    lines += remaining_cost(runs, jobs, results)
    lines += [f"- {item}" for item in todo] if todo else ["Every planned job is done."]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return doc


def remaining_cost(runs: Sequence[RunResult], jobs: Sequence[Job], results: Path) -> list[str]:
    """How long the pending ``jobs`` should take, from the median run and evaluation so far."""
    train_walls = [r.train["wall_seconds"] for r in runs if r.train]
    eval_walls = [e["wall_seconds"] for r in runs for e in r.evals.values() if "wall_seconds" in e]
    if not jobs or not train_walls or not eval_walls:
        return []
    to_train = sum(1 for job in jobs if job.lr is not None and not (results / "runs" / job.name / "train.json").is_file())
    evals = sum(len(job.evals) for job in jobs)
    hours = (to_train * statistics.median(train_walls) + evals * statistics.median(eval_walls)) / 3600
    return [f"{to_train} runs to train and {evals} evaluations, about {hours:.1f} h on the machine above "
            f"(median {statistics.median(train_walls) / 60:.1f} min per training run, "
            f"{statistics.median(eval_walls) / 60:.1f} min per evaluation):", ""]


def prompt_passes(results: Path, name: str, split: str, decoding: str) -> dict[str, float] | None:
    """Per-prompt pass (1.0/0.0) of one run's answers, keyed by the prompt's file and line."""
    path = results / "runs" / name / f"generations-{split}-{decoding}.jsonl.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {Path(row["origin"]).name: float(lookup(row, ("checks", "constraint", "passed")) is True) for row in rows}


def paired_difference(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]], *,
                      resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float] | None:
    """Pass rate of ``a`` minus ``b`` (each a list of seeds' per-prompt passes) and a 95% interval.

    The prompts both sides answered are paired; the interval is a two-level bootstrap: the prompts are
    resampled (the same draw for both sides) and, independently per side, its seeds. With one seed a side
    contributes no seed noise, so the interval is too narrow for it.
    """
    import numpy as np

    if not a or not b:
        return None
    prompts = sorted(set.intersection(*(set(run) for run in (*a, *b))))
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
    low, high = np.quantile(boot_a - boot_b, [0.025, 0.975])
    return mean_a - mean_b, float(low), float(high)


def difference_section(results: Path, groups: Sequence[tuple[str, list[RunResult]]]) -> list[str]:
    """SLIME's pass rates minus every other row's, paired by prompt, with bootstrap intervals."""
    columns = [(header, split, decoding) for header, split, decoding, keys in MAIN_COLUMNS
               if keys == ("constraint_pass_rate",)]

    def passes(members: Sequence[RunResult], split: str, decoding: str) -> list[dict[str, float]]:
        found = (prompt_passes(results, r.name, split, decoding) for r in members if (split, decoding) in r.evals)
        return [p for p in found if p]

    slime = next((members for label, members in groups if members and members[0].loss == "slime"), None)
    if slime is None:
        return []
    slime_passes = {(split, decoding): passes(slime, split, decoding) for _, split, decoding in columns}
    rows = []
    for label, members in groups:
        if not members or members is slime:
            continue
        cells = []
        for _, split, decoding in columns:
            found = paired_difference(slime_passes[split, decoding], passes(members, split, decoding))
            cells.append("—" if found is None else f"{found[0]:+.3f} [{found[1]:+.2f}, {found[2]:+.2f}]")
        rows.append([f"slime − {label}", *cells])
    if not rows:
        return []
    return ["### SLIME minus each other run, paired by prompt (95% bootstrap interval)", "",
            *markdown_table(["difference", *(c[0] for c in columns)], rows), "",
            "Each cell is SLIME's pass rate minus the row's, over the prompts both answered, with every seed each "
            "side has; the interval resamples prompts (the same prompts for both sides) and each side's seeds "
            "(10,000 draws). An interval that contains 0 does not separate the two; a side with one seed "
            "contributes no seed noise, so its interval is too narrow.", ""]


def family_table(groups: Sequence[tuple[str, list[RunResult]]]) -> list[str]:
    families = sorted({f for _, members in groups for r in members
                       for f in lookup(r.evals.get(("test", "greedy")), ("constraint_pass_rate_by_family",)) or {}})
    if not families:
        return []
    rows = []
    for label, members in groups:
        cells = []
        for family in families:
            found = values(members, "test", "greedy", ("constraint_pass_rate_by_family", family))
            cells.append(f"{statistics.mean(found):.2f}" if found else "—")
        rows.append([label, *cells])
    return ["### Greedy test pass rate by family (mean over seeds)", "",
            *markdown_table(["run", *families], rows), ""]


def grid_section(runs: Sequence[RunResult], chosen: Mapping[str, float]) -> list[str]:
    rows = []
    for loss in GRID_LOSSES:
        for lr in LEARNING_RATES:
            run = next((r for r in runs if r.loss == loss and r.lr == lr and r.seed == 0), None)
            evaluation = run.evals.get(("validation", "greedy")) if run else None
            if evaluation is None:
                rows.append([loss, f"{lr:.0e}", "not run", "", "", "", ""])
                continue
            rows.append([
                loss, f"{lr:.0e}", number(evaluation, ("constraint_pass_rate",), ".3f"),
                number(evaluation, ("accuracy",), ".3f"), number(evaluation, ("drift", "chosen_drift_mean"), "+.3f"),
                number(evaluation, ("generation", "ended_rate"), ".2f"), "**chosen**" if chosen.get(loss) == lr else "",
            ])
    base = next((r for r in runs if r.loss == BASELINE and r.seed == 0), None)
    base_val = base.evals.get(("validation", "greedy")) if base else None
    note = (f"Base model on validation: greedy pass rate {base_val['constraint_pass_rate']:.3f}, "
            f"accuracy {base_val['accuracy']:.3f}." if base_val else "")
    return ["## Learning-rate grid (seed 0, validation split: 30 prompts/pairs)", "",
            "Chosen per loss by the greedy constraint pass rate on validation, ties broken by preference "
            "accuracy, then by the smaller rate; the test split is never looked at. "
            f"Losses outside the grid use their family's rate: {', '.join(f'{k} ← {v}' for k, v in INHERIT.items())}.",
            "", *markdown_table(["loss", "lr", "val pass (greedy)", "val accuracy", "chosen drift", "ended", ""], rows),
            "", note, ""]


def compute_section(runs: Sequence[RunResult]) -> list[str]:
    trained = [r for r in runs if r.train]
    train_wall = sum(r.train["wall_seconds"] for r in trained)
    eval_wall = sum(e.get("wall_seconds", 0) for r in runs for e in r.evals.values())
    steps = sum(r.train["steps"] for r in trained)
    machines = sorted({f"{m['cpu']} ({m['torch_threads']} threads), {m['cuda'] or 'no GPU'}"
                       for m in (r.train["machine"] for r in trained)})
    per_run = [r.train["wall_seconds"] / r.train["steps"] for r in trained if r.train["steps"]]
    lines = ["## Compute", ""]
    if not trained:
        return lines + ["No run has finished yet.", ""]
    lines += [
        f"- {len(trained)} training runs, {steps} optimizer steps in all, {train_wall / 3600:.2f} h of training "
        f"wall time (median {statistics.median(per_run):.1f} s per step of 4 pairs), plus "
        f"{eval_wall / 3600:.2f} h of evaluation ({sum(len(r.evals) for r in runs)} evaluations). The time per "
        "step is a run's whole training wall time (model loading, held-out scoring before and after, saving "
        "included) over its steps.",
        f"- Machine(s): {'; '.join(machines)}; fp32.",
        "- Wall times are as measured; a run that shared the cores with other work (tests, editing tools) is slower, "
        "so they bound the cost from above.",
        "",
    ]
    return lines


def setup_section() -> list[str]:
    options = ", ".join(f"`{k}={v}`" for k, v in BASE_OPTIONS.items() if k not in ("dataset", "eval_dataset"))
    return [
        "## Setup", "",
        "- Model: SmolLM2-135M-Instruct (slimepo's embedded default), LoRA on all linear layers, fp32 on CPU.",
        "- Data: `data/onpolicy/` (see its README): 309 training pairs of the model's own sampled answers, "
        "chosen = obeys the constraint, rejected = does not; validation 30, test 45, held-out family 52.",
        f"- Training options shared by every run: {options}; one epoch = "
        f"{math.ceil(309 / BASE_OPTIONS['batch_size'])} steps. Loss hyperparameters: each loss's defaults "
        "(`docs/losses.md`; SLIME at the authors' script values, ablations as presets).",
        f"- Learning-rate grid: {', '.join(f'{lr:.0e}' for lr in LEARNING_RATES)} for {', '.join(GRID_LOSSES)}; "
        f"seeds {', '.join(map(str, SEEDS))}.",
        "",
        "Loss hyperparameters (every run of a loss uses these):",
        "",
        *markdown_table(["loss", "hyperparameters"], [[loss, loss_hyperparameters(loss)] for loss in MAIN_LOSSES]),
        "",
    ]


def loss_hyperparameters(loss: str) -> str:
    from slimepo.losses import get_loss

    return ", ".join(f"{name}={value}" for name, value in get_loss(loss).hyperparameters().items())


def make_plots(groups: Sequence[tuple[str, list[RunResult]]], img: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(label, members) for label, members in groups if members]
    if not present:
        return []
    img.mkdir(parents=True, exist_ok=True)
    plots = []

    fig, ax = plt.subplots(figsize=(11, 4.5))
    columns = MAIN_COLUMNS[:4]
    width = 0.8 / len(columns)
    for i, (header, split, decoding, keys) in enumerate(columns):
        means, errs = [], []
        for _, members in present:
            found = values(members, split, decoding, keys)
            means.append(statistics.mean(found) if found else float("nan"))
            errs.append(statistics.stdev(found) if len(found) > 1 else 0.0)
        ax.bar([x + i * width for x in range(len(present))], means, width, yerr=errs, capsize=2, label=header)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(present))], [label.split(" (")[0] for label, _ in present],
                  rotation=30, ha="right")
    ax.set_ylabel("constraint pass rate (share of prompts)")
    ax.set_title("Constraint pass rate after one epoch (base: untrained; mean ± std over seeds)")
    ax.legend(fontsize=8)
    plots.append(("pass rates", save(fig, img / "study-pass-rates.png")))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, members in present:
        points = [(lookup(r.evals.get(("test", "greedy")), ("drift", "chosen_drift_mean")),
                   lookup(r.evals.get(("test", "greedy")), ("constraint_pass_rate",))) for r in members]
        points = [(x, y) for x, y in points if isinstance(x, (int, float)) and isinstance(y, (int, float))]
        if points:
            ax.scatter(*zip(*points, strict=True), label=label.split(" (")[0])
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("chosen log-likelihood drift vs base on test pairs (nats/token)")
    ax.set_ylabel("greedy test pass rate")
    ax.set_title("Unlearning vs obeying (one point per run)")
    ax.legend(fontsize=8)
    plots.append(("drift vs pass rate", save(fig, img / "study-drift-vs-pass.png")))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, members in present:
        run = next((r for r in members if r.seed == 0 and r.metrics), None)
        if run is None:
            continue
        rows = [m for m in run.metrics if "monitor/chosen_drift" in m]
        if rows:
            axes[0].plot([m["step"] for m in rows], [m["monitor/chosen_drift"] for m in rows], label=label.split(" (")[0])
            axes[1].plot([m["step"] for m in rows], [m["monitor/collapse"] for m in rows], label=label.split(" (")[0])
    axes[0].set_ylabel("chosen log-lik drift (nats/token)")
    axes[1].set_ylabel("rejected tokens with p < 1e-4 (share)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
    axes[0].set_title("Monitor: chosen drift on 8 validation pairs (seed 0)")
    axes[1].set_title("Monitor: rejected-token collapse (seed 0)")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    plots.append(("training monitor", save(fig, img / "study-monitor.png")))
    return plots


def save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "report", "plan"))
    parser.add_argument("--max-minutes", type=float, default=None, help="start no job after this many minutes")
    parser.add_argument("--max-jobs", type=int, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "plan":
        for job in pending(args.results):
            print(f"{job.name}: {', '.join('/'.join(e) for e in job.evals)}")
        for line in undecided(args.results):
            print(line)
        return 0
    if args.command == "run":
        run(args.results, args.runs, args.max_minutes, args.max_jobs)
    print(report(args.results, args.doc, IMG if args.doc == DOC else args.doc.parent / "img"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
