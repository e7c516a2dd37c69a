"""``slimepo iterate``: rounds of on-policy preference training.

    round 0:  evaluate the initial model π₀                                   (round-0/eval/)
    round r:  π_{r-1} --slimepo pairs--> pairs --slimepo train--> π_r --slimepo eval--> scores
              (round-r/pairs/)           (round-r/train/, π_r = train/merged/)   (round-r/eval/)

What carries over between rounds, and why:

- **The weights.** A LoRA round's adapter is merged into the weights it trained
  (``train/merged/``), and the next round samples from and trains a fresh adapter on them; a
  full fine-tuning round's weights are ``train/`` itself. Nothing else carries over: each round is
  a new training run (its own optimizer, warm-up and schedule) on pairs its starting policy made,
  as each iteration of iterative DPO is a new DPO run from the previous iteration's model.
- **The reference** of a reference-based loss (``--reference``): ``previous`` (the default) is the
  policy the round starts from, which is also what a single ``slimepo train`` run uses (its own
  initial weights), so round r is exactly ``slimepo train`` on round r's pairs from π_{r-1};
  ``initial`` keeps π₀ as the reference in every round, the KL anchor of the KL-constrained
  analysis of iterative preference learning (Xiong et al., 2024, arXiv:2312.11456). Reference-free
  losses (SLIME, SimPO, CPO, ORPO) are unaffected.
- **The measurements.** Every round is evaluated against π₀: chosen-likelihood drift and
  unlearning are measured from the initial model, not from the round's start, so they add up
  over rounds.

A kill at any moment resumes where it stopped, on rerunning the same command: a round's pairs
resume from ``samples.jsonl`` (nothing sampled is lost), its training from the newest checkpoint
(or from step 0 without one; exact either way), its evaluation from the answers it wrote. A round
is done when its ``round.json`` exists (written last, atomically). The loop's options are saved in
``iterate.yaml``; a rerun with other options is refused by name, except more ``rounds``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slimepo.atomic_io import write_json, write_text
from slimepo.config import ConfigError, EvalConfig, TrainConfig
from slimepo.iterate.config import RERUN_FREE_OPTIONS, ROUND_PROMPTS, IterateConfig
from slimepo.iterate.report import LOOP_FILE, ROUND_FILE, write_rounds_report

REPORT_DIR = "report"

logger = logging.getLogger(__name__)


@dataclass
class IterateResult:
    """The loop folder, and each round's record (``round.json``), round 0 first when evaluated."""

    out_dir: Path
    rounds: list[dict[str, Any]]


def iterate(config: IterateConfig) -> IterateResult:
    """Run (or resume) the loop of ``config``; see the module docstring."""
    config.validate()
    out = Path(config.out)
    check_loop_dir(config, out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / LOOP_FILE, config.to_yaml())
    records = []
    if config.evaluate_initial:
        records.append(_round_zero(config, out / "round-0"))
        _write_report(out)
    start = config.model
    for index in range(1, config.rounds + 1):
        record = run_round(config, index, start)
        records.append(record)
        start = record["policy"]
        _write_report(out)
    return IterateResult(out, records)


def check_loop_dir(config: IterateConfig, out: Path) -> None:
    """Refuse a loop folder made with other options (each named); more ``rounds`` may continue it."""
    saved_file = out / LOOP_FILE
    if not saved_file.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise FileExistsError(f"out: {str(out)!r} is not empty and holds no {LOOP_FILE}: not a loop folder; "
                                  "give a new or empty folder")
        return
    saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    current = config.to_dict()
    changed = [f"{name}: {saved.get(name)!r} (saved) vs {current[name]!r} (now)"
               for name in current if name not in RERUN_FREE_OPTIONS and saved.get(name) != current[name]]
    if changed:
        raise FileExistsError(f"out: the loop in {str(out)!r} was run with other options ({'; '.join(changed)}); "
                              f"rerun with its {LOOP_FILE}, or give a new folder")


def run_round(config: IterateConfig, index: int, start: str) -> dict[str, Any]:
    """Round ``index`` from the model ``start``: pairs, training, evaluation; its ``round.json``
    record. A finished round is read back, not run again."""
    round_dir = Path(config.out) / f"round-{index}"
    done = _read_record(round_dir)
    if done is not None:
        return done
    round_dir.mkdir(parents=True, exist_ok=True)
    pairs_config, train_config, eval_config = config.stage_configs(index, start)
    log = _RoundLog(round_dir / ROUND_LOG)

    started = time.perf_counter()
    if config.prompts_per_round is not None and not (round_dir / ROUND_PROMPTS).is_file():
        _write_round_prompts(config, index, round_dir / ROUND_PROMPTS)
    pairs = _pairs_stage(pairs_config, log)
    log.finished("pairs", started)

    started = time.perf_counter()
    policy, trained = _train_stage(train_config, log, index)
    log.finished("train", started)

    started = time.perf_counter()
    evaluation = _eval_stage(dataclasses.replace(eval_config, model=str(policy)), log)
    log.finished("eval", started)
    evaluation = _bench_stages(config, round_dir, str(policy), evaluation, log)

    record = {
        "round": index, "start": start, "policy": str(policy), "reference": _reference(train_config, start),
        "pairs": pairs, "train": trained, "eval": _summary(evaluation),
        "seconds": log.seconds, "resumed_stages": log.resumed,
    }
    write_json(round_dir / ROUND_FILE, record)
    return record


def _round_zero(config: IterateConfig, round_dir: Path) -> dict[str, Any]:
    done = _read_record(round_dir)
    if done is not None:
        return done
    round_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = _RoundLog(round_dir / ROUND_LOG)
    evaluation = _eval_stage(config.eval_config(round_dir / "eval", config.model), log)
    log.finished("eval", started)
    evaluation = _bench_stages(config, round_dir, config.model, evaluation, log)
    record = {"round": 0, "start": config.model, "policy": config.model, "eval": _summary(evaluation),
              "seconds": log.seconds, "resumed_stages": log.resumed}
    write_json(round_dir / ROUND_FILE, record)
    return record


#: A round's progress across attempts: the seconds each stage took in the attempt that finished it,
#: and the stages that found a killed attempt's work and went on from it.
ROUND_LOG = "stages.json"


class _RoundLog:
    """``stages.json``: ``{"seconds": {stage: s}, "resumed": [stage, ...]}``, kept across attempts.

    A stage found finished by a later attempt keeps the seconds it took; the time a killed attempt
    spent is not counted (it is not known)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.seconds, self.resumed = dict(saved["seconds"]), list(saved["resumed"])
        except (OSError, ValueError, TypeError, KeyError):
            self.seconds, self.resumed = {}, []
        self._ran: set[str] = set()

    def append(self, stage: str) -> None:
        """``stage`` goes on from a killed attempt's work."""
        self.resumed.append(stage)
        self._ran.add(stage)
        self._write()

    def ran(self, stage: str) -> None:
        """``stage`` does work in this attempt (it was not finished)."""
        self._ran.add(stage)

    def finished(self, stage: str, started: float) -> None:
        if stage in self._ran or stage not in self.seconds:
            self.seconds[stage] = round(time.perf_counter() - started, 1)
            self._write()

    def _write(self) -> None:
        write_json(self.path, {"seconds": self.seconds, "resumed": self.resumed})


def _read_record(round_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((round_dir / ROUND_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_round_prompts(config: IterateConfig, index: int, path: Path) -> None:
    """Prompt rows (index-1)·N … index·N - 1 of the pairs stage's prompts, as they are, each keyed
    by its row in the whole set (so a key never depends on the slice)."""
    from slimepo.data import load_rows
    from slimepo.pairs.config import PairsConfig
    from slimepo.pairs.prompts import source_path

    given = config.pairs
    source = given.get("prompts", PairsConfig.prompts)
    split = given.get("split", "train")
    rows = load_rows(source_path(source, split), split=split, columns=given.get("columns") or None)
    n = config.prompts_per_round
    first = (index - 1) * n
    chosen = rows[first : first + n]
    if not chosen:
        raise ConfigError(f"prompts_per_round: round {index} needs prompt rows {first + 1}-{first + n}, but "
                          f"{source} has {len(rows)} rows; lower rounds or prompts_per_round, or give more prompts")
    lines = []
    for row in chosen:
        data = row.data
        if isinstance(data, dict) and data.get("key") is None and data.get("id") is None:
            data = {"key": f"row-{row.origin.row}", **data}
        lines.append(json.dumps(data))
    write_text(path, "\n".join(lines) + "\n")


def _pairs_stage(config: Any, log: _RoundLog) -> dict[str, Any]:
    """``slimepo pairs`` into ``round-r/pairs/``: done when its provenance.json is written; else
    (re)started, resuming from samples.jsonl."""
    from slimepo.pairs.run import PAIRS_FILE, PROVENANCE_FILE, make_pairs

    out = Path(config.out)
    provenance_file = out / PROVENANCE_FILE
    if provenance_file.is_file():
        provenance = json.loads(provenance_file.read_text(encoding="utf-8"))
    else:
        if out.is_dir() and any(out.iterdir()):
            log.append("pairs")
        log.ran("pairs")
        provenance = make_pairs(config).provenance
    counts = provenance["counts"]
    if not counts["pairs"]:
        raise ConfigError(f"{out / PAIRS_FILE}: round made no pair ({counts['prompts']} prompts, all answers of each "
                          f"tied: {counts['prompts_without_pair']}); sample more answers (k), raise the temperature, "
                          "or use a finer scorer")
    return {"counts": counts, "samples": _sample_stats(out)}


def _sample_stats(pairs_dir: Path) -> dict[str, Any]:
    """Mean score, end-of-turn rate and length of every answer sampled in the round (by the policy
    the round starts from: an on-policy reading of it on the training prompts)."""
    from slimepo.pairs.samples import SAMPLES_FILE, read_samples

    samples = read_samples(pairs_dir / SAMPLES_FILE)

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "count": len(samples),
        "score_mean": mean([float(s["score"]) for s in samples if s.get("score") is not None]),
        "ended_rate": mean([float(bool(s.get("ended"))) for s in samples]),
        "length_tokens_mean": mean([float(s["length"]) for s in samples if s.get("length") is not None]),
    }


def _train_stage(config: TrainConfig, log: _RoundLog, index: int) -> tuple[Path, dict[str, Any]]:
    """``slimepo train`` into ``round-r/train/``: done when slimepo's model card is written; an
    unfinished run resumes from its newest checkpoint, or starts again without one."""
    from slimepo.train import train
    from slimepo.train.run import is_finished

    out = Path(config.output_dir)
    policy = out / "merged" if config.use_lora else out
    if not is_finished(out):
        if out.is_dir() and any(out.iterdir()):
            resumable = any(out.glob("checkpoint-*"))
            log.append("train")
            logger.info("round %d: unfinished training in %s, %s", index, out,
                        "resuming from its newest checkpoint" if resumable else "starting it again")
            config = dataclasses.replace(config, resume="auto" if resumable else None, overwrite=not resumable)
        log.ran("train")
        train(config)
    return policy, _train_summary(out)


def _train_summary(out: Path) -> dict[str, Any]:
    """The last training line of metrics.jsonl (step, loss, ...) and training's before/after held-out metrics."""
    last: dict[str, Any] = {}
    for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("split") == "train" and "loss" in row:
            last = row
    return {"global_step": last.get("step"), "last_logged": last}


def _eval_stage(config: EvalConfig, log: _RoundLog, stage: str = "eval") -> dict[str, Any]:
    """``slimepo eval`` of the round's policy into ``round-r/eval/``: done when its eval.json (with
    ``settings``) exists; else run, resuming benchmark answers already written."""
    from slimepo.eval.run import evaluate, finished_evaluation

    out = Path(config.out)
    evaluation = finished_evaluation(out)
    if evaluation is not None:
        return evaluation
    if out.is_dir() and any(out.iterdir()):
        log.append(stage)
    log.ran(stage)
    # Tokenized as slimepo eval does, in every round alike (round 0 has no training options).
    return evaluate(config, out_dir=out)


def _bench_stages(config: IterateConfig, round_dir: Path, model: str, evaluation: dict[str, Any],
                  log: _RoundLog) -> dict[str, Any]:
    """Answer each of ``config.benchmarks`` (a stage each, resumable as the eval stage is); return
    ``evaluation`` with every benchmark's entry added under its key."""
    from slimepo.eval.benchmarks import REGISTRY

    evaluation = dict(evaluation)
    for bench in config.benchmarks:
        started = time.perf_counter()
        result = _eval_stage(config.bench_config(round_dir, bench, model), log, stage=f"eval-{bench}")
        log.finished(f"eval-{bench}", started)
        key = REGISTRY[bench].result_key
        evaluation[key] = result[key]
    return evaluation


def _reference(config: TrainConfig, start: str) -> str | None:
    if not config.loss_fn().requires_reference:
        return None
    return config.ref_model or start


#: What round.json keeps of an eval.json: the numbers the rounds report reads (the file has the rest).
SUMMARY_KEYS = ("pairs", "accuracy", "margin", "chosen_logp_mean", "rejected_logp_mean", "collapse", "drift",
                "end_of_turn", "generation", "constraint_pass_rate")


def _summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    from slimepo.report import BENCHMARK_KEYS

    summary = {key: evaluation[key] for key in SUMMARY_KEYS if key in evaluation}
    for key in BENCHMARK_KEYS:
        if isinstance(evaluation.get(key), dict):
            entry = evaluation[key]
            summary[key] = {name: value for name, value in entry.items()
                            if isinstance(value, (int, float)) and not isinstance(value, bool)}
            if isinstance(entry.get("generation"), dict):  # the answers' health: cut share, length
                summary[key]["generation"] = entry["generation"]
    return summary


def _write_report(out: Path) -> None:
    write_rounds_report([out], out / REPORT_DIR)
