"""The study on the loop (issue 26): SLIME, DPO and SimPO trained round after round on the model's own answers.

Every loop is ``slimepo iterate`` on the embedded SmolLM2-135M-Instruct with one budget, only the loss,
its learning rate (the single-pass study's grid choice) and the seed varying:

- **prompts**: ``slimepo make-prompts --per-request 3`` (the demo's 124 requests, each with 1-3 of IFEval's
  instructions drawn with seed 0; requests found in IFEval's or IFBench's prompts are left out), written once
  to ``results/study-loop/prompts.jsonl``; round r samples rows (r-1)·96+1 … r·96, the same rows in every loop;
- **pairs**: 4 answers per prompt from the round's starting policy (T 0.9, top-p 0.95, at most 256 new
  tokens, bf16 generation), scored by IFEval's official checkers (share of the prompt's instructions
  followed, strict), best against worst, ties dropped; sampling seed 10·seed + r − 1;
- **train**: the single-pass study's budget (LoRA 16/32/0.05, batch 4, 1 epoch, cosine, warm-up 0.1,
  float32 without autocast), merged into the next round's weights; DPO's reference is the round's start
  (``--reference previous``, iterative DPO's rolling reference);
- **ablations**, after the 9 loops of the three losses: SLIME without its anchor and without its stabilizer
  (the presets ``slime-no-anchor``, ``slime-no-stabilizer``, at the single-pass grid's rate 1e-3), seed 0;
- **a step-size control**, last: DPO at 1e-3, the rate of SLIME and SimPO (``dpo-lr1e-3-seed0``), since DPO
  at its own rate hardly changes its model per round;
- **eval** after every round (round 0: the initial model, evaluated once and copied into every loop, since it
  depends on neither loss nor seed): the 45 on-policy test pairs of ``data/onpolicy/`` for drift against the
  initial model, unlearning and collapse, with greedy answers to their prompts (96 tokens) for length,
  end-of-turn and repetition; then IFEval's 541 prompts and IFBench's 282 scorable ones, greedy, bf16, at
  most 256 new tokens (the cut share per model is in each evaluation).

Round 0 is copied into a new loop from a finished one (in runs/ or archived), and round 1's samples
from a finished loop of the same seed, which samples the same answers from the same model with the same
seed (``slimepo pairs`` checks the weights, decoding and prompts before it takes them): only the pairing
runs again, and the round's stages.json lists the pairs stage as resumed.

A loop is archived into ``results/study-loop/loops/<loss>-seed<seed>/`` (tracked in git: records, pairs,
samples, answers; no weights) when its last round is done; its working folder is ``runs/study-loop/``.
Merged weights are not kept in git, so a loop is resumed only where its working folder still exists; the
runner starts no loop after ``--max-minutes`` and a killed loop resumes on the next ``run``.

Run it alone on the machine: beside other torch jobs on 2 cores, its threads oversubscribe the cores and a
loop slows far more than twofold (on 2026-12-06, 0 of IFEval's first 64 answers in 20 minutes, against about
6 minutes for all 541 on an idle machine).

    python scripts/loop_study.py run --max-minutes 110   # one part of at most about 2 hours
    python scripts/loop_study.py plan                    # what is left
    python scripts/loop_study.py end-of-turn             # the end of turn of loops archived before it was measured
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # study_stats.py, study.py

from slimepo.report import lookup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Paths relative to the repository root (the runner works there), so the loops' saved options read the same anywhere.
RESULTS = Path("results/study-loop")
RUNS = Path("runs/study-loop")
TEST_PAIRS = Path("data/onpolicy/test.jsonl.gz")
PROMPTS = "prompts.jsonl"

#: The learning rate of each loss: what the single-pass study's grid chose on validation (docs/results.md).
LOSSES = {"slime": 1e-3, "dpo": 3e-4, "simpo": 1e-3}
SEEDS = (0, 1, 2)
#: SLIME without a term, at the rate the single-pass grid chose for it: one seed each, after every loop of
#: LOSSES (the issue's "ablations if compute allows").
ABLATIONS = {"slime-no-anchor": 1e-3, "slime-no-stabilizer": 1e-3}
ABLATION_SEEDS = (0,)
#: A step-size control, last: DPO at the rate of SLIME and SimPO (each control: its loss and rate), seed 0.
#: DPO at its own rate (3e-4, with a rolling reference) hardly moves its model per round, so the loops of the
#: three losses differ in step size as well as loss; this loop separates the two.
CONTROLS = {"dpo-lr1e-3": ("dpo", 1e-3)}
CONTROL_SEEDS = (0,)
#: Every group of loops (a loss, an ablation, a control) and its learning rate.
RATES = {**LOSSES, **ABLATIONS, **{group: rate for group, (_, rate) in CONTROLS.items()}}
ROUNDS = 3
PROMPTS_PER_ROUND = 96
PER_REQUEST = 3
BENCHMARKS = ("ifeval", "ifbench")
#: Answer budget of the benchmarks, as in the single-pass IFEval/IFBench parts (the cut share is reported).
BENCH_MAX_NEW_TOKENS = 256
GENERATION_DTYPE = "bfloat16"  # 2.4x faster generation than float32 on an AVX512-BF16 CPU (docs/benchmarks.md)

PAIRS_OPTIONS: dict[str, Any] = {
    "scorer": "ifeval", "k": 4, "max_new_tokens": 256, "sample": True, "temperature": 0.9, "top_p": 0.95,
    # 48 prompts per generate call: 2 calls per sample index for a round's 96 prompts. On 2 cores a
    # decoding step of 64 rows costs about 1.3x one of 16 rows, so 16 prompts a call took 12.8 min a
    # round, where 48 take about 5 (runs/study-loop.log, 2026-12-06).
    "batch_size": 48, "dtype": GENERATION_DTYPE,
}
TRAIN_OPTIONS: dict[str, Any] = {
    "batch_size": 4, "num_epochs": 1.0, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
    "lr_scheduler": "cosine", "warmup_ratio": 0.1, "logging_steps": 1, "save_steps": 5, "monitor_steps": 0,
    "mixed_precision": "no",
}
EVAL_OPTIONS: dict[str, Any] = {
    "dataset": str(TEST_PAIRS), "split": "train", "max_new_tokens": 96, "batch_size": 64,
    "dtype": GENERATION_DTYPE, "bench_max_new_tokens": BENCH_MAX_NEW_TOKENS,
}

logger = logging.getLogger("loop_study")


@dataclass(frozen=True)
class Loop:
    loss: str  # the group of :data:`RATES`: a loss preset, or a control of :data:`CONTROLS`
    seed: int

    @property
    def preset(self) -> str:
        """The loss it trains with."""
        return CONTROLS[self.loss][0] if self.loss in CONTROLS else self.loss

    @property
    def name(self) -> str:
        return f"{self.loss}-seed{self.seed}"


def plan() -> list[Loop]:
    """Every loop, in order of priority: one seed of each loss before the next seed, then the ablations, then
    the controls."""
    return [Loop(loss, seed) for seed in SEEDS for loss in LOSSES] + [
        Loop(loss, seed) for seed in ABLATION_SEEDS for loss in ABLATIONS] + [
        Loop(group, seed) for seed in CONTROL_SEEDS for group in CONTROLS]


def loop_config(loop: Loop, runs: Path, prompts: Path):
    from slimepo.iterate.config import IterateConfig

    return IterateConfig(
        model="default", rounds=ROUNDS, out=str(runs / loop.name), reference="previous",
        prompts_per_round=PROMPTS_PER_ROUND, benchmarks=list(BENCHMARKS), evaluate_initial=True,
        pairs={**PAIRS_OPTIONS, "prompts": str(prompts), "seed": 10 * loop.seed},
        train={**TRAIN_OPTIONS, "loss": loop.preset, "learning_rate": RATES[loop.loss], "seed": loop.seed},
        eval=dict(EVAL_OPTIONS),
    )


def archived(results: Path, loop: Loop) -> Path:
    return results / "loops" / loop.name


def pending(results: Path) -> list[Loop]:
    return [loop for loop in plan() if not (archived(results, loop) / "loop.json").is_file()]


def make_prompts(results: Path) -> Path:
    """The study's prompt set, made once (and kept in git: every loop and round reads the same rows)."""
    from slimepo.pairs.compose import make_prompts as compose
    from slimepo.pairs.config import MakePromptsConfig

    path = results / PROMPTS
    if not path.is_file():
        compose(MakePromptsConfig(per_request=PER_REQUEST, seed=0, out=str(path)))
    return path


def copy_unpacked(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest``; a gzipped archive file (``x.jsonl.gz``) is unpacked, and a ``.gz`` on
    ``dest``'s name is dropped (``dest`` names the copy; the source's name never does)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.name.endswith(".jsonl.gz"):
        with gzip.open(source, "rb") as src, dest.with_name(dest.name.removesuffix(".gz")).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copyfile(source, dest)


def fresh_staging(target: Path) -> Path:
    """An empty folder beside ``target`` to build it in, then renamed to ``target`` whole, so a kill never
    leaves half a copy under ``target`` (a killed attempt's leftover is removed here)."""
    staging = target.with_name(target.name + ".seeding")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def seed_round_zero(config: Any, donor: Path | None) -> None:
    """Round 0 (the initial model evaluated) depends on neither loss nor seed: a new loop folder gets the
    first finished loop's copy instead of evaluating it again (about 11 minutes). The donor is a loop folder
    in runs/ or an archived loop (:func:`archive`), whose gzipped JSONL files are unpacked on the way."""
    out = Path(config.out)
    if donor is None or out.exists() or not (donor / "round-0" / "round.json").is_file():
        return
    staging = fresh_staging(out)
    (staging / "iterate.yaml").write_text(config.to_yaml(), encoding="utf-8")
    for source in sorted((donor / "round-0").rglob("*")):
        if source.is_file():
            copy_unpacked(source, staging / "round-0" / source.relative_to(donor / "round-0"))
    staging.rename(out)


def seed_round_one(config: Any, donor: Path | None) -> None:
    """Round 1 samples the same answers for every loss of one seed (the initial model, the seed's sampling
    seed, the same prompts): a new loop's round 1 gets the samples of a finished round 1 of its seed (a loop
    folder in runs/ or an archived loop) and only pairs them again, instead of sampling them again (about 8
    minutes). ``slimepo pairs`` takes them only if their model weights, decoding and prompts are this round's
    (else it refuses them by name); the round's stages.json lists its pairs stage as resumed."""
    out = Path(config.out)
    if donor is None or not (out / "iterate.yaml").is_file() or (out / "round-1").exists():
        return
    pairs = donor / "round-1" / "pairs"
    source = next((f for f in (pairs / "samples.jsonl", pairs / "samples.jsonl.gz") if f.is_file()), None)
    if source is None or not (donor / "round-1" / "round.json").is_file():
        return
    staging = fresh_staging(out / "round-1")
    copy_unpacked(source, staging / "pairs" / "samples.jsonl")
    staging.rename(out / "round-1")


def finished_donor(results: Path, runs: Path, others: Sequence[Loop], index: int) -> Path | None:
    """The first of ``others`` whose round ``index`` is finished: its folder in runs/, else its archive."""
    candidates = [runs / other.name for other in others] + [archived(results, other) for other in others]
    return next((d for d in candidates if (d / f"round-{index}" / "round.json").is_file()), None)


def round_zero_donor(results: Path, runs: Path, loop: Loop) -> Path | None:
    """Where a new loop's round 0 comes from: any other loop (round 0 is the initial model's)."""
    return finished_donor(results, runs, [other for other in plan() if other != loop], 0)


def round_one_donor(results: Path, runs: Path, loop: Loop) -> Path | None:
    """Where a new loop's round-1 samples come from: a loop of the same seed (the same sampling seed)."""
    return finished_donor(results, runs, [o for o in plan() if o != loop and o.seed == loop.seed], 1)


#: What a loop keeps in git, relative to its folder: everything small that a report or a check reads.
KEPT = ("iterate.yaml", "round-*/round.json", "round-*/stages.json", "round-*/pairs/pairs.jsonl",
        "round-*/pairs/provenance.json", "round-*/pairs/samples.jsonl", "round-*/eval/eval.json",
        "round-*/eval/generations.jsonl", "round-*/eval-*/eval.json", "round-*/eval-*/*/answers.jsonl",
        "round-*/train/metrics.jsonl", "round-*/train/eval.json", "round-*/train/config.yaml")


def archive(work: Path, target: Path, info: dict[str, Any]) -> None:
    """Copy the loop's kept files (JSONL gzipped) into ``target``; ``loop.json`` last, so a kill leaves no
    loop taken for archived."""
    if target.exists():
        shutil.rmtree(target)
    for pattern in KEPT:
        for source in sorted(work.glob(pattern)):
            dest = target / source.relative_to(work)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if source.suffix == ".jsonl":
                with source.open("rb") as src, dest.with_name(dest.name + ".gz").open("wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst:  # the same bytes on every copy
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(source, dest)
    (target / "loop.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def run(results: Path, runs: Path, max_minutes: float | None, max_loops: int | None,
        only: Sequence[str] = ()) -> list[str]:
    """Run and archive the pending loops in the plan's order (``only``: just those named)."""
    from slimepo.iterate import iterate
    from slimepo.model import machine

    names = {loop.name for loop in plan()}
    unknown = [name for name in only if name not in names]
    if unknown:
        raise SystemExit(f"--only: no loop named {', '.join(unknown)} in the plan ({', '.join(sorted(names))})")
    started = time.perf_counter()
    prompts = make_prompts(results)
    done = []
    for loop in pending(results):
        if only and loop.name not in only:
            continue
        if max_loops is not None and len(done) >= max_loops:
            break
        if max_minutes is not None and (time.perf_counter() - started) / 60 > max_minutes:
            logger.info("stopping: %.0f minutes spent", (time.perf_counter() - started) / 60)
            break
        config = loop_config(loop, runs, prompts)
        seed_round_zero(config, round_zero_donor(results, runs, loop))
        seed_round_one(config, round_one_donor(results, runs, loop))
        logger.info("%s: running (%s)", loop.name, config.out)
        loop_started = time.perf_counter()
        iterate(config)
        archive(Path(config.out), archived(results, loop), {
            "loss": loop.preset, "group": loop.loss, "seed": loop.seed, "learning_rate": RATES[loop.loss], "rounds": ROUNDS,
            "wall_seconds_last_attempt": round(time.perf_counter() - loop_started, 1), "machine": machine(),
        })
        done.append(loop.name)
    return done


#: What an archived eval.json and the same model's rescoring must agree on before the rescoring's end of turn
#: is added to it (:func:`with_end_of_turn`).
SAME_SCORES = (("pairs",), ("accuracy",), ("chosen_logp_mean",), ("rejected_logp_mean",), ("margin", "mean"),
               ("collapse", "rejected_p_lt_1e-4"), ("collapse", "rejected_min_logp"), ("drift", "chosen_drift_mean"),
               ("drift", "rejected_drift_mean"), ("base", "chosen_logp_mean"), ("base", "rejected_logp_mean"))


def same_evaluation(written: dict[str, Any], again: dict[str, Any], where: str,
                    settings: Sequence[str] = ("weights_sha256", "model", "base", "dataset"),
                    scores: Sequence[tuple[str, ...]] = SAME_SCORES) -> None:
    """Raise ValueError unless ``again`` (an evaluation made again) is ``written`` (an archived eval.json) once
    more: the same ``settings`` entries (the model's weights sha256 first), then the same ``scores`` to 1e-6."""
    import math

    for name in settings:
        if lookup(written, ("settings", name)) != lookup(again, ("settings", name)):
            raise ValueError(f"{where}: the {name} made again is {lookup(again, ('settings', name))!r}, the "
                             f"archived one {lookup(written, ('settings', name))!r}")
    for path in scores:
        archived_value, value = lookup(written, path), lookup(again, path)
        if (archived_value is None) != (value is None) or (
                value is not None and not math.isclose(archived_value, value, rel_tol=1e-6, abs_tol=1e-7)):
            raise ValueError(f"{where}: {'.'.join(path)} is {archived_value} archived and {value} made again")


def with_end_of_turn(written: dict[str, Any], rescored: dict[str, Any], where: str) -> dict[str, Any]:
    """``written`` (an archived eval.json) with the ``end_of_turn`` of ``rescored`` (the held-out pairs scored
    again), once both are the same model giving the same scores (:func:`same_evaluation`)."""
    same_evaluation(written, rescored, where)
    merged = {**written, "end_of_turn": rescored["end_of_turn"]}
    if "base" in written:
        merged["base"] = {**written["base"], "end_of_turn": rescored["base"]["end_of_turn"]}
    return merged


def add_end_of_turn(results: Path) -> list[str]:
    """Give every archived round's held-out evaluation its end of turn (``slimepo.diagnostics``), for the loops
    evaluated before eval.json had it: the round's policy (merged weights, kept in ``runs/`` only) scores the
    test pairs again, checked against the archived scores (:func:`with_end_of_turn`); eval.json and round.json
    gain the ``end_of_turn`` entries. Returns the rounds done; a round whose weights are gone is left as is."""
    import dataclasses
    import tempfile

    import torch
    import yaml

    from slimepo.atomic_io import write_json
    from slimepo.config import config_from_mapping
    from slimepo.eval.run import evaluate
    from slimepo.iterate.config import IterateConfig

    torch.set_num_threads(1)  # short, and it may run beside a loop: one core at most
    rescored: dict[str, dict[str, Any]] = {}  # by weights sha256: round 0 is the same model in every loop
    done = []
    for lp in load_loops(results):
        options = yaml.safe_load((lp.folder / "iterate.yaml").read_text(encoding="utf-8"))
        config = config_from_mapping(options, source=str(lp.folder / "iterate.yaml"), cls=IterateConfig)
        for index in sorted(lp.rounds):
            path = lp.folder / f"round-{index}" / "eval" / "eval.json"
            written = json.loads(path.read_text(encoding="utf-8"))
            if "end_of_turn" in written:
                continue
            model, sha = written["settings"]["model"], written["settings"]["weights_sha256"]
            if model != "default" and not Path(model).is_dir():
                logger.warning("%s: no weights at %s, left without its end of turn", path, model)
                continue
            if sha not in rescored:
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "eval"
                    rescored[sha] = evaluate(dataclasses.replace(config.eval_config(out, model), generate=False),
                                             out_dir=out)
            merged = with_end_of_turn(written, rescored[sha], str(path))
            record_path = lp.folder / f"round-{index}" / "round.json"
            record = json.loads(record_path.read_text(encoding="utf-8"))
            record["eval"]["end_of_turn"] = merged["end_of_turn"]
            write_json(path, merged)
            write_json(record_path, record)
            done.append(f"{lp.folder.name} round {index}")
    return done


def at(*path: str) -> Callable[[LoopResult, int], Any]:
    """The value at ``path`` in a loop's round record (None where absent)."""
    return lambda loop, index: lookup(loop.rounds[index], path)


def cut_share(bench: str) -> Callable[[LoopResult, int], float | None]:
    """Share of a benchmark's answers the token budget cut: 1 - the share that ended."""
    def value(loop: LoopResult, index: int) -> float | None:
        ended = lookup(loop.rounds[index], ("eval", bench, "generation", "ended_rate"))
        return None if not isinstance(ended, (int, float)) else 1 - ended
    return value


#: (header, value of a loop's round, format) of the per-round table, mean ± std over a loss's seeds.
ROUND_COLUMNS = (
    ("IFEval prompt strict", at("eval", "ifeval", "prompt_level_strict"), ".3f"),
    ("IFBench prompt strict", at("eval", "ifbench", "prompt_level_strict"), ".3f"),
    ("IFEval answers cut", cut_share("ifeval"), ".2f"),
    ("IFBench answers cut", cut_share("ifbench"), ".2f"),
    ("IFEval answer length", at("eval", "ifeval", "generation", "length_tokens_mean"), ".0f"),
    ("IFEval degenerate", at("eval", "ifeval", "generation", "degenerate_rate"), ".2f"),
    ("chosen drift vs initial (nats/token)", at("eval", "drift", "chosen_drift_mean"), "+.3f"),
    ("unlearning rate", at("eval", "drift", "unlearning_rate"), ".2f"),
    ("rejected p<1e-4", at("eval", "collapse", "rejected_p_lt_1e-4"), ".3f"),
    ("p(end of turn) at held-out chosen ends", at("eval", "end_of_turn", "chosen", "p_mean"), ".3f"),
    ("held-out answers ended", at("eval", "generation", "ended_rate"), ".2f"),
    ("held-out degenerate", at("eval", "generation", "degenerate_rate"), ".2f"),
    ("pairs made", at("pairs", "counts", "pairs"), ".0f"),
)
#: The loss comparisons of the difference tables, each (a, b): a minus b; "initial" is round 0.
COMPARISONS = (("slime", "dpo"), ("slime", "simpo"), ("dpo", "simpo"),
               ("slime", "initial"), ("dpo", "initial"), ("simpo", "initial"),
               ("slime", "slime-no-anchor"), ("slime", "slime-no-stabilizer"),
               ("slime", "dpo-lr1e-3"), ("dpo-lr1e-3", "dpo"))
LABELS = {"slime": "SLIME", "dpo": "DPO", "simpo": "SimPO", "initial": "initial",
          "slime-no-anchor": "SLIME without anchor", "slime-no-stabilizer": "SLIME without stabilizer",
          "dpo-lr1e-3": "DPO at 1e-3"}


@dataclass
class LoopResult:
    loss: str
    seed: int
    rounds: dict[int, dict[str, Any]]
    folder: Path

    def evaluation(self, round_index: int, bench: str) -> dict[str, Any] | None:
        """The benchmark's result in round ``round_index`` (its ``eval.json``), None where absent."""
        path = self.folder / f"round-{round_index}" / f"eval-{bench}" / "eval.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))[bench]
        except (OSError, ValueError, KeyError):
            return None

    def passes(self, round_index: int, bench: str, leave_out: set[str] = frozenset()) -> dict[str, float] | None:
        """Prompt-level strict pass (1.0 / 0.0) of each benchmark prompt in round ``round_index``, but those
        of ``leave_out``."""
        per_prompt = lookup(self.evaluation(round_index, bench), ("per_prompt",))
        if not isinstance(per_prompt, dict):
            return None
        return {key: float(all(flags["strict"])) for key, flags in per_prompt.items() if key not in leave_out}


def ending_prompts(loops: Sequence[LoopResult]) -> set[str] | None:
    """IFEval's prompts (by key) with an instruction on how the answer ends
    (:data:`slimepo.eval.ifeval.ENDING_TYPES`), from the installed prompts file; None where it is not
    installed, or is not the file the loops answered (another sha256, or prompts it does not have)."""
    import hashlib

    from slimepo.eval import ifeval

    try:
        path = ifeval.find_prompts("ifeval")
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    results = [r for lp in loops for index in lp.rounds if (r := lp.evaluation(index, "ifeval")) is not None]
    answered = {lookup(r, ("provenance", "questions_sha256")) for r in results}
    if answered - {None, hashlib.sha256(path.read_bytes()).hexdigest()}:
        return None
    ids = {str(record["key"]): record["instruction_id_list"] for record in ifeval.load_prompts(path, "ifeval")}
    if not all(set(r.get("per_prompt", {})) <= set(ids) for r in results):
        return None
    return {key for key, types in ids.items() if set(types) & ifeval.ENDING_TYPES}


def load_loops(results: Path) -> list[LoopResult]:
    """Every archived loop (its ``loop.json`` written), in plan order."""
    from slimepo.iterate.report import read_loop

    found = []
    for loop in plan():
        folder = archived(results, loop)
        if (folder / "loop.json").is_file():
            found.append(LoopResult(loop.loss, loop.seed, read_loop(folder).rounds, folder))
    return found


def cell(found: Sequence[Any], spec: str) -> str:
    """Mean ± sample std of the numbers in ``found`` (the mean alone for one, "—" for none)."""
    values = [float(v) for v in found if isinstance(v, (int, float))]
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:{spec}}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:{spec}} ± {std:{spec.lstrip('+')}}"


def round_table(loops: Sequence[LoopResult], ending: set[str] | None) -> list[str]:
    """Per loss and round, :data:`ROUND_COLUMNS` and IFEval's score on the prompts with no instruction on
    the answer's end (all but ``ending``; "—" without it)."""
    from slimepo.report import markdown_table

    def unended(loop: LoopResult, index: int) -> float | None:
        passed = None if ending is None else loop.passes(index, "ifeval", leave_out=ending)
        return sum(passed.values()) / len(passed) if passed else None

    kept = {len(p) for lp in loops for i in lp.rounds if ending and (p := lp.passes(i, "ifeval", ending))}
    columns = [*ROUND_COLUMNS, (f"IFEval prompt strict, the {'/'.join(map(str, sorted(kept))) or 'n'} prompts "
                                "with no instruction on the answer's end", unended, ".3f")]
    rows = []
    for label, members, index in [("initial model (round 0)", loops[:1], 0)] + [
            (f"{LABELS[loss]}, round {index}", [lp for lp in loops if lp.loss == loss], index)
            for loss in RATES for index in range(1, ROUNDS + 1)]:
        present = [lp for lp in members if index in lp.rounds]
        if present:
            rows.append([label, "—" if index == 0 else f"{len(present)}",
                         *(cell([value(lp, index) for lp in present], spec) for _, value, spec in columns)])
    return markdown_table(["loop, round", "seeds", *(header for header, _, _ in columns)], rows)


def difference_table(loops: Sequence[LoopResult], bench: str,
                     leave_out: set[str] = frozenset()) -> tuple[list[str], int]:
    """Each comparison of :data:`COMPARISONS` that has loops on both sides, in every round, paired by
    prompt (but those of ``leave_out``; two-level bootstrap over prompts and seeds, scripts/study_stats.py),
    with Holm's adjustment over the table."""
    from study_stats import corrected_cells, paired_bootstrap

    from slimepo.report import markdown_table

    def side(name: str, index: int) -> list[dict[str, float]]:
        if name == "initial":
            return [p for p in (lp.passes(0, bench, leave_out) for lp in loops[:1]) if p is not None]
        return [p for p in (lp.passes(index, bench, leave_out) for lp in loops if lp.loss == name) if p is not None]

    columns = [[paired_bootstrap(side(a, index), side(b, index)) for index in range(1, ROUNDS + 1)]
               for a, b in COMPARISONS]
    kept = [(pair, column) for pair, column in zip(COMPARISONS, columns) if any(cell is not None for cell in column)]
    cells, m = corrected_cells([list(row) for row in zip(*(column for _, column in kept))])
    headers = ["round", *(f"{LABELS[a]} − {LABELS[b]}" for (a, b), _ in kept)]
    return markdown_table(headers, [[f"round {i + 1}", *row] for i, row in enumerate(cells)]), m


#: The rounds made again with other pairs or another loss (scripts/cut_answers_check.py), one JSON line each.
CHECKS = "cut-answers-check.jsonl"


def pairs_ended(folder: Path) -> str:
    """"chosen / rejected" answers that ended among an archived round's pairs, from its samples (the pairs of
    the loops made before pairs.jsonl said it), or "—" where the round's pairs and samples are not archived."""
    pairs, samples = folder / "pairs.jsonl.gz", folder / "samples.jsonl.gz"
    if not (pairs.is_file() and samples.is_file()):
        return "—"
    with gzip.open(samples, "rt", encoding="utf-8") as f:
        ended = {(s["key"], s["sample"]): s["ended"] for s in map(json.loads, f)}
    with gzip.open(pairs, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    counts = [sum(ended[r["key"], r[f"{side}_sample"]] for r in rows) for side in ("chosen", "rejected")]
    return f"{counts[0]} / {counts[1]}"


def checks_table(loops: Sequence[LoopResult], path: Path) -> list[str]:
    """Per round made again: the round's start and the loop's own round (from the archive), then each run of
    ``path`` on it, in the file's order."""
    from slimepo.report import markdown_table

    runs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_name = {lp.folder.name: lp for lp in loops}
    rows: list[list[str]] = []

    def row(label: str, pairs: Any, ended: str, values: Sequence[Any]) -> list[str]:
        return [label, str(pairs), ended, *(cell([v], spec) for v, spec in zip(values, (".3f", ".2f", "+.3f")))]

    for loop_name, index in dict.fromkeys((r["loop"], r["round"]) for r in runs):
        lp = by_name[loop_name]
        start, own = lp.rounds[index - 1], lp.rounds[index]
        group = f"{loop_name} round {index}"
        rows.append(row(f"{group}: its start (round {index - 1}'s model)", "—", "—",
                        [lookup(start, ("eval", "end_of_turn", "chosen", "p_mean")),
                         lookup(start, ("eval", "generation", "ended_rate")),
                         lookup(start, ("eval", "drift", "chosen_drift_mean"))]))
        rows.append(row(f"{group}: the loop's own ({LABELS[lp.loss]}, cut answers kept)",
                        lookup(own, ("pairs", "counts", "pairs")), pairs_ended(lp.folder / f"round-{index}" / "pairs"),
                        [lookup(own, ("eval", "end_of_turn", "chosen", "p_mean")),
                         lookup(own, ("eval", "generation", "ended_rate")),
                         lookup(own, ("eval", "drift", "chosen_drift_mean"))]))
        for r in (r for r in runs if (r["loop"], r["round"]) == (loop_name, index)):
            loss = LABELS.get(r.get("loss", lp.loss), r.get("loss"))
            rows.append(row(f"{group}: {loss} at {r.get('learning_rate', RATES[lp.loss]):g}, cut answers "
                            f"{r['cut_answers']}", r["pairs"], f"{r['chosen_ended']} / {r['rejected_ended']}",
                            [r["p_end_chosen"], r["held_out_ended"], r["chosen_drift"]]))
    return markdown_table(["round, pairs and loss", "pairs", "chosen / rejected ended",
                           "p(end of turn) at held-out chosen ends", "held-out answers ended",
                           "chosen drift vs initial (nats/token)"], rows)


def ending_note() -> str:
    """What "no instruction on the answer's end" means: the types of :data:`slimepo.eval.ifeval.ENDING_TYPES`."""
    from slimepo.eval.ifeval import ENDING_TYPES

    return ("\"No instruction on the answer's end\": IFEval's prompts without an instruction of the types "
            f"{', '.join(f'`{t}`' for t in sorted(ENDING_TYPES))} (a second response after the first, a P.S., JSON "
            "as a whole, a given closing phrase, double quotation marks around it), which an answer cut at the budget "
            "follows only if it got there first; a cut still fails other instructions (e.g. at least 300 words), "
            "so the column narrows the cut's effect, it does not remove it.")

def single_seed_note(loops: Sequence[LoopResult]) -> str:
    """What a difference table's intervals leave out where a loss has only one seed so far."""
    alone = [LABELS[loss] for loss in RATES if sum(lp.loss == loss for lp in loops) == 1]
    if not alone:
        return ""
    return (f" {', '.join(alone)} {'has' if len(alone) == 1 else 'have'} one seed so far: there the interval "
            "resamples the prompts only and leaves out the spread between seeds, so a cell that stays separated is "
            "a difference between two trained models, not yet one between two losses.")


#: Unset: read IFEval's prompts on the answer's end from the installed file (:func:`ending_prompts`).
INSTALLED: Any = object()


def section(results: Path = RESULTS, ending: set[str] | None = INSTALLED) -> list[str]:
    """The iterative study's section of docs/results.md, from the archived loops; ``ending``: IFEval's
    prompts with an instruction on the answer's end (None: unknown, the columns on the others left empty)."""
    from study_stats import correction_note

    loops = load_loops(results)
    if ending is INSTALLED:
        ending = ending_prompts(loops)
    lines = ["## The study on the loop: rounds of training on the model's own answers (`slimepo iterate`)", ""]
    reading = results / "reading.md"
    if reading.is_file():
        lines += [reading.read_text(encoding="utf-8").strip(), ""]
    lines += [f"Made by `python scripts/loop_study.py run` (setup: its docstring and below); {len(loops)} of "
              f"{len(plan())} loops done ({', '.join(lp.folder.name for lp in loops) or 'none'}).", ""]
    if loops:
        lines += ["### Per round (mean ± std over seeds)", ""] + round_table(loops, ending) + [""]
        lines += ["Round 0 is the initial model, evaluated once. Benchmarks: greedy answers, bf16, at most "
                  f"{BENCH_MAX_NEW_TOKENS} new tokens; \"answers cut\" is the share that reached that budget "
                  "without ending (each model its own); \"degenerate\": the share whose word 3-grams repeat more than half "
                  "the time (1 − unique/total > 0.5, slimepo.eval.health). Drift, unlearning and collapse: the 45 on-policy test pairs "
                  "of data/onpolicy/, against the initial model; \"p(end of turn) at held-out chosen ends\": the model's "
                  "probability of its end-of-turn token where each of those pairs' chosen answers ends (all 45 ended on "
                  "their own), i.e. of stopping where a good answer stops; \"held-out answers ended\" and \"held-out degenerate\": "
                  "greedy answers (96 tokens) to their prompts; \"pairs made\": pairs from the round's 96 prompts. "
                  + ending_note(), ""]
        tables = [("ifeval", "IFEval (541 prompts)", frozenset()), ("ifbench", "IFBench (282 scorable prompts)", frozenset())]
        everything = loops[0].passes(0, "ifeval") or {}
        if ending and set(everything) - ending:
            tables.append(("ifeval", f"IFEval, the {len(set(everything) - ending)} of {len(everything)} prompts with no "
                           "instruction on the answer's end", ending))
        for bench, title, leave_out in tables:
            table, m = difference_table(loops, bench, leave_out)
            if not m:
                continue
            lines += [f"### Paired differences, {title}, prompt-level strict", ""] + table + [""]
            lines += ["Each cell: difference [95% interval], paired by prompt; a two-level bootstrap over prompts "
                      "and each side's seeds (10,000 draws). " + correction_note(m) + single_seed_note(loops), ""]
    checks = results / CHECKS
    if loops and checks.is_file():
        lines += ["### Rounds made again: the same samples with other pairs or another loss", ""]
        lines += checks_table(loops, checks) + [""]
        lines += ["Made by `python scripts/cut_answers_check.py LOOP ROUND SETTING...`: the round's own samples "
                  "(nothing sampled again), paired with `--cut-answers` keep (the loop's setting), reject (a cut "
                  "answer is never chosen) or drop (cut answers in no pair), trained with the round's options from "
                  "its start (the loop's previous round), or with another loss and rate on the same pairs "
                  "(a reference-based loss: the start as reference), then evaluated on the 45 test pairs as the loop "
                  "does. The loop's own setting made again gives the loop's weights bit for bit (checked by the "
                  "script). \"chosen / rejected ended\": how many of the pairs' chosen and rejected answers ended "
                  "within the sampling budget.", ""]
    lines += ["### Setup and cost", ""]
    lines += [f"- Loss and learning rate: {', '.join(f'{LABELS[k]} {v:g}' for k, v in LOSSES.items())} (the "
              f"single-pass grid's choices); seeds {', '.join(map(str, SEEDS))}; {ROUNDS} rounds of "
              f"{PROMPTS_PER_ROUND} fresh prompts each. Ablations, after those: "
              f"{', '.join(f'{LABELS[k]} {v:g}' for k, v in ABLATIONS.items())}, seed "
              f"{', '.join(map(str, ABLATION_SEEDS))}. A step-size control, last: "
              f"{', '.join(f'{LABELS[k]}' for k in CONTROLS)} (the rate of SLIME and SimPO), seed "
              f"{', '.join(map(str, CONTROL_SEEDS))}.",
              f"- Pairs: {PAIRS_OPTIONS['k']} answers per prompt (T {PAIRS_OPTIONS['temperature']}, top-p "
              f"{PAIRS_OPTIONS['top_p']}, at most {PAIRS_OPTIONS['max_new_tokens']} tokens, bf16), IFEval's "
              "checkers (share of instructions followed), best against worst, ties dropped.",
              "- Training: LoRA 16/32/0.05, batch 4, 1 epoch, cosine with 10% warm-up, float32; each round's "
              "adapter merged into the next round's weights; DPO's reference is the round's starting policy."]
    # A round with a stage resumed (after a kill, or round 1 pairing another loop's samples) has no whole time.
    minutes = [sum((r.get("seconds") or {}).values()) / 60 for lp in loops for i, r in lp.rounds.items()
               if i > 0 and not r.get("resumed_stages")]
    if minutes:
        machines = sorted({json.loads((lp.folder / "loop.json").read_text())["machine"]["cpu"] for lp in loops})
        lines += [f"- Cost: {len(minutes)} rounds run whole in one attempt, median "
                  f"{sorted(minutes)[len(minutes) // 2]:.0f} min each (pairs + training + evaluation; "
                  f"{', '.join(machines)}, 2 cores)."]
    todo = [loop.name for loop in pending(results)]
    lines += [""] + (["Not run yet: " + ", ".join(todo) + ".", ""] if todo else [])
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "plan", "section", "end-of-turn"))
    parser.add_argument("--max-minutes", type=float, default=None, help="start no loop after this many minutes")
    parser.add_argument("--max-loops", type=int, default=None)
    parser.add_argument("--only", action="append", default=[], metavar="LOOP",
                        help="run: only this pending loop (repeatable), e.g. simpo-seed2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=RUNS)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "plan":
        for loop in pending(args.results):
            print(loop.name)
        return 0
    if args.command == "section":
        print("\n".join(section(args.results)))
        return 0
    if args.command == "end-of-turn":
        for name in add_end_of_turn(args.results):
            print(f"{name}: end of turn added")
        return 0
    for name in run(args.results, args.runs, args.max_minutes, args.max_loops, args.only):
        print(f"{name}: archived")
    return 0


if __name__ == "__main__":
    sys.exit(main())
