"""Turns bench_step.py results into docs/performance.md: the plan's tables, the ratios and their targets.

Every case runs once per round. A case's row gives the median over its rounds (and the range of
its step times); a ratio is computed within each round, between two cases of the same run, and
reported as its median over the rounds with their range. "met" / "missed" compares that median
with the target.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

LABELS = {
    "floor": "floor: bare LoRA fwd+bwd over unique tokens",
    "floor-bf16": "floor, bf16 autocast",
    "slimepo-dpo-precomputed": "slimepo DPO, reference precomputed (no reference pass per step)",
    "slimepo-dpo-sft": "slimepo DPO + 0.2 SFT (weighted sum)",
    "slimepo-slime": "slimepo SLIME (default loss, default path)",
    "slimepo-simpo": "slimepo SimPO",
    "slimepo-dpo": "slimepo DPO (reference: adapters disabled)",
    "trl-cpo-simpo": "TRL 1.16 CPOTrainer, loss_type simpo, cpo_alpha 0",
    "trl-dpo": "TRL 1.16 DPOTrainer (reference: adapters disabled)",
    "slimepo-slime-bf16": "slimepo SLIME, bf16 autocast",
    "slimepo-dpo-bf16": "slimepo DPO, bf16 autocast",
    "trl-cpo-simpo-defaults": "TRL CPOTrainer simpo, its defaults (bf16 autocast, grad. ckpt.)",
    "trl-dpo-defaults": "TRL DPOTrainer, its defaults (bf16 autocast, grad. ckpt.)",
}
TABLES = (  # title, model, cases: what make bench runs, in this order within each round
    ("SmolLM2-135M (vocab 49,152), fp32, no gradient checkpointing", "smollm2",
     ("floor", "slimepo-slime", "slimepo-simpo", "slimepo-dpo", "slimepo-dpo-precomputed", "slimepo-dpo-sft",
      "trl-cpo-simpo", "trl-dpo")),
    ("SmolLM2-135M, bf16 autocast (fp32 weights)", "smollm2",
     ("floor-bf16", "slimepo-slime-bf16", "slimepo-dpo-bf16", "trl-cpo-simpo-defaults", "trl-dpo-defaults")),
    ("Qwen3-0.6B-shaped, 4 layers, vocab 151,936, random init, fp32", "bigvocab", ("slimepo-slime", "trl-cpo-simpo")),
)
PLAN = tuple((model, case) for _, model, cases in TABLES for case in cases)


@dataclass(frozen=True)
class Ratio:
    """``numerator[key] / denominator[key]``, two cases on one model; ``target``: ``(">=" or "<=", bound)``."""

    name: str
    model: str
    numerator: str
    denominator: str
    key: str
    target: tuple[str, float] | None = None


RATIOS = (
    Ratio("slimepo SLIME vs TRL CPO-SimPO, pairs/s, fp32", "smollm2", "slimepo-slime", "trl-cpo-simpo",
          "pairs_per_s", (">=", 1.6)),
    Ratio("slimepo DPO vs TRL DPO, pairs/s, fp32", "smollm2", "slimepo-dpo", "trl-dpo", "pairs_per_s", (">=", 1.6)),
    Ratio("slimepo SLIME vs TRL CPO-SimPO, pairs/s, bf16 autocast", "smollm2", "slimepo-slime-bf16",
          "trl-cpo-simpo-defaults", "pairs_per_s", (">=", 1.6)),
    Ratio("slimepo DPO vs TRL DPO, pairs/s, bf16 autocast", "smollm2", "slimepo-dpo-bf16", "trl-dpo-defaults",
          "pairs_per_s", (">=", 1.6)),
    Ratio("slimepo SLIME step time / floor's, fp32", "smollm2", "slimepo-slime", "floor", "median_step_s", ("<=", 1.15)),
    Ratio("slimepo SLIME step time / floor's, bf16 autocast", "smollm2", "slimepo-slime-bf16", "floor-bf16",
          "median_step_s", ("<=", 1.15)),
    Ratio("slimepo DPO, reference precomputed vs per step, pairs/s, fp32", "smollm2", "slimepo-dpo-precomputed",
          "slimepo-dpo", "pairs_per_s"),
    Ratio("slimepo DPO + 0.2 SFT vs DPO, step time, fp32", "smollm2", "slimepo-dpo-sft", "slimepo-dpo", "median_step_s"),
    Ratio("vocab 151,936: slimepo SLIME step memory increase / TRL CPO-SimPO's", "bigvocab", "slimepo-slime",
          "trl-cpo-simpo", "step_rss_increase_gb", ("<=", 0.6)),
    Ratio("slimepo SimPO vs TRL CPO-SimPO (same loss), pairs/s, fp32", "smollm2", "slimepo-simpo", "trl-cpo-simpo",
          "pairs_per_s"),
    Ratio("slimepo SLIME, bf16 autocast vs fp32, pairs/s", "smollm2", "slimepo-slime-bf16", "slimepo-slime", "pairs_per_s"),
    Ratio("vocab 151,936: slimepo SLIME vs TRL CPO-SimPO, pairs/s", "bigvocab", "slimepo-slime", "trl-cpo-simpo",
          "pairs_per_s"),
)
HAND_WRITTEN = "<!-- Written by hand below this line: bench_report.py keeps it when it rewrites the tables above. -->"


def _runs(results: list[dict], model: str, case: str) -> list[dict]:
    return [r for r in results if (r["model"], r["case"]) == (model, case)]


def round_ratios(results: list[dict], ratio: Ratio) -> list[float]:
    """The ratio in every round where both cases succeeded, in round order."""
    top = {r["round"]: r for r in _runs(results, ratio.model, ratio.numerator) if "error" not in r}
    bottom = {r["round"]: r for r in _runs(results, ratio.model, ratio.denominator) if "error" not in r}
    return [top[i][ratio.key] / bottom[i][ratio.key] for i in sorted(top.keys() & bottom.keys())]


def ratio_row(results: list[dict], ratio: Ratio) -> str:
    values = round_ratios(results, ratio)
    target = f"{ratio.target[0].replace('>=', '≥').replace('<=', '≤')} {ratio.target[1]:.2f}x" if ratio.target else "—"
    if not values:
        return f"| {ratio.name} | — | — | {target} | {'not measured' if ratio.target else '—'} |"
    value = statistics.median(values)
    verdict = "—"
    if ratio.target:
        op, bound = ratio.target
        verdict = "met" if (value >= bound if op == ">=" else value <= bound) else "missed"
    return f"| {ratio.name} | {value:.2f}x | {min(values):.2f}–{max(values):.2f}x | {target} | {verdict} |"


def case_row(results: list[dict], model: str, case: str) -> str:
    runs = _runs(results, model, case)
    ok = [r for r in runs if "error" not in r]
    label = LABELS[case]
    if not ok:
        what = f"failed: {runs[0]['error'][:80]}" if runs else "not run"
        return f"| {label} | 0/{len(runs)} | {what} | | | | | | |"

    def median(key):
        return statistics.median(r[key] for r in ok)

    steps = [r["median_step_s"] for r in ok]
    return (f"| {label} | {len(ok)}/{len(runs)} | {median('median_step_s'):.2f} | {min(steps):.2f}–{max(steps):.2f} | "
            f"{median('pairs_per_s'):.3f} | {ok[0]['tokens_per_step']} | {median('tokens_per_s'):.0f} | "
            f"{median('peak_rss_gb'):.2f} | {median('step_rss_increase_gb'):.2f} |")


def write_performance_md(results: list[dict], out: Path, machine: str, command: str, profile: str = "",
                         pairs: str = "") -> None:
    """Rewrites ``out``'s generated part; whatever follows the ``HAND_WRITTEN`` marker in the old file is kept.

    ``results``: one dict per process of bench_step.py, with its ``round``; ``pairs``: the pairs' shape, in words.
    """
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    tail = old[old.index(HAND_WRITTEN) + len(HAND_WRITTEN):].lstrip("\n") if HAND_WRITTEN in old else ""
    first = next((r for r in results if "error" not in r), {})
    lines = ["# Performance", "", f"Machine: {machine}. GPU column: not measured (no GPU was lent to this task).", "",
             f"Command: `{command}`", "",
             f"Each case runs in its own process, once per round, every round in the same order (the two sides of "
             f"every ratio alternate: A B A B): 4 preference pairs per optimizer step ({pairs or 'synthetic'}), "
             f"LoRA r=16 on all linear layers, {first.get('warmup', '?')} warm-up and {first.get('steps_timed', '?')} "
             "timed steps for every case. Step time = wall time between consecutive optimizer-step ends (collation, "
             "forward, backward, update), the median over a run's timed steps. Peak RSS = highest resident memory "
             "sampled every 5 ms from the point where every case has loaded its model, adapters and data and is "
             "about to take its first step, to its last step; 'step increase' = that peak minus the resident memory "
             "at that point. Each column is the median over the rounds; 'range' spans the rounds' step times.", "",
             "bf16 autocast: fp32 weights and optimizer, forward under `torch.autocast(bfloat16)` "
             "(`TrainingArguments(bf16=True)`) for slimepo and TRL alike; TRL's configs also turn on gradient "
             "checkpointing by default, slimepo's do not.", ""]
    for title, model, cases in TABLES:
        lines += [f"## {title}", "",
                  "| case | rounds ok | median step (s) | range (s) | pairs/s | tokens/step | tokens/s | peak RSS (GB) "
                  "| step increase (GB) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                  *(case_row(results, model, case) for case in cases), ""]
    lines += ["## Ratios and targets", "",
              "Each ratio is taken within a round, between cases of this run only; median and range over the rounds.", "",
              "| ratio | median | range | target | reached? |", "| --- | ---: | ---: | ---: | --- |",
              *(ratio_row(results, ratio) for ratio in RATIOS), "",
              "## Where slimepo's step time goes", "",
              "torch.profiler, one optimizer step of slimepo SLIME (default path), SmolLM2-135M, fp32, "
              "top 15 operators by self CPU time:", "", "```", profile.strip(), "```", "", HAND_WRITTEN, ""]
    out.write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")
