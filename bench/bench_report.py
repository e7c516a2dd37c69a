"""Turns bench_step.py results into docs/performance.md: the table, ratios, machine and command."""

from __future__ import annotations

from pathlib import Path

LABELS = {
    "slimepo-naive": "(a) slimepo naive: separate rows, full logits",
    "slimepo-chunked": "(b) + chunked log-probs",
    "slimepo-shared": "(c) + prefix sharing (slimepo default)",
    "slimepo-packed": "(d) + packing (rows of up to 4,096 tokens)",
    "slimepo-packed-fill": "(d') + packing, rows no longer than the longest pair",
    "trl-dpo": "(e) TRL 1.16 DPOTrainer, fp32, no grad. ckpt.",
    "trl-cpo-simpo": "(f) TRL 1.16 CPOTrainer simpo, fp32, no grad. ckpt.",
    "trl-dpo-defaults": "(e') TRL DPOTrainer, its defaults (bf16 autocast, grad. ckpt.)",
    "trl-cpo-simpo-defaults": "(f') TRL CPOTrainer simpo, its defaults",
    "floor": "(g) floor: bare LoRA fwd+bwd over unique tokens",
}


def _find(results, case, shape, model):
    return next((r for r in results if (r["case"], r["shape"], r["model"]) == (case, shape, model) and "error" not in r), None)


def _ratio(a, b, key):
    return f"{a[key] / b[key]:.2f}x" if a and b else "—"


HAND_WRITTEN = "<!-- Written by hand below this line: bench_report.py keeps it when it rewrites the tables above. -->"


def write_performance_md(results: list[dict], out: Path, machine: str, command: str, profile: str = "") -> None:
    """Rewrites ``out``'s generated part; whatever follows the ``HAND_WRITTEN`` marker in the old file is kept."""
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    tail = old[old.index(HAND_WRITTEN) + len(HAND_WRITTEN):].lstrip("\n") if HAND_WRITTEN in old else ""
    lines = ["# Performance", "", f"Machine: {machine}. GPU column: not measured (no GPU was lent to this task).", "",
             f"Command: `{command}`", "",
             "Each case runs in its own process: 4 preference pairs per optimizer step, LoRA r=16 on all linear "
             "layers, fp32, no gradient checkpointing unless said. Step time = wall time between consecutive "
             "optimizer-step ends (collation, forward, backward, update), median over the timed steps after warm-up. "
             "Peak RSS = highest resident memory sampled every 5 ms during training; 'step increase' = that peak "
             "minus the resident memory just before training.", ""]
    for model in ("smollm2", "bigvocab"):
        shapes = [s for s in ("long", "short") if any(r["model"] == model and r["shape"] == s for r in results)]
        for shape in shapes:
            title = {"smollm2": "SmolLM2-135M (vocab 49,152)",
                     "bigvocab": "Qwen3-0.6B-shaped, 4 layers, vocab 151,936, random init"}[model]
            lines += [f"## {title}, {shape}-prompt shape", "",
                      "| case | median step (s) | pairs/s | tokens/step | tokens/s | peak RSS (GB) | step increase (GB) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for r in results:
                if r["model"] != model or r["shape"] != shape:
                    continue
                label = LABELS.get(r["case"], r["case"])
                if "error" in r:
                    lines.append(f"| {label} | failed: {r['error'][:80]} | | | | | |")
                    continue
                lines.append(f"| {label} | {r['median_step_s']:.2f} | {r['pairs_per_s']:.3f} | {r['tokens_per_step']} | "
                             f"{r['tokens_per_s']:.0f} | {r['peak_rss_gb']:.2f} | {r['step_rss_increase_gb']:.2f} |")
            best = _find(results, "slimepo-shared", shape, model)
            rows = [
                ("slimepo default vs TRL CPO-SimPO (pairs/s)", _ratio(best, _find(results, "trl-cpo-simpo", shape, model), "pairs_per_s")),
                ("slimepo default vs TRL DPO (pairs/s)", _ratio(best, _find(results, "trl-dpo", shape, model), "pairs_per_s")),
                ("slimepo default step time / floor", _ratio(best, _find(results, "floor", shape, model), "median_step_s")),
                ("packed vs shared (pairs/s)", _ratio(_find(results, "slimepo-packed", shape, model), best, "pairs_per_s")),
                ("packed-fill vs shared (pairs/s)",
                 _ratio(_find(results, "slimepo-packed-fill", shape, model), best, "pairs_per_s")),
                ("shared vs naive (pairs/s)", _ratio(best, _find(results, "slimepo-naive", shape, model), "pairs_per_s")),
                ("slimepo default peak-RSS step increase / TRL CPO-SimPO's",
                 _ratio(best, _find(results, "trl-cpo-simpo", shape, model), "step_rss_increase_gb")),
            ]
            lines += ["", "| ratio | value |", "| --- | ---: |", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += ["## Where slimepo's step time goes", "",
              "torch.profiler, one optimizer step of the default path (c), SmolLM2-135M, long-prompt shape, "
              "top 15 operators by self CPU time:", "", "```", profile.strip(), "```", "", HAND_WRITTEN, ""]
    out.write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")
