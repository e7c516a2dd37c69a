"""KTO under gradient accumulation: what its gradient forward costs with and without the mismatched completions.

With several micro-batches per step, the step's KL batch (every micro-batch's mismatched pairs) is
scored before the first micro-batch, without gradient; each micro-batch's own forward then needs its
completions only (``slimepo.data.collate.without_rejected``). Case ``kept`` puts the old way back (the
mismatched completions stay in the gradient forward, scored for nothing) by replacing that function
with a copy of the batch. Both cases train the same steps on the same examples in their own
processes, alternating (kept, dropped, kept, dropped, ...):

    python bench/bench_kto.py --rounds 2 --steps 3 --warmup 1

Per case: median step time, the tokens the gradient forwards run (non-padding, per step), and the
bytes autograd keeps for the backward of one micro-batch (``saved_tensors_hooks``, each storage
counted once, the parameters left out: deterministic, unlike the resident memory). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_step import Meter, make_rows, model_path, write_jsonl

from slimepo.model import describe_machine

CASES = ("kept", "dropped")
EXAMPLES_PER_STEP, ACCUMULATION = 4, 2


class SavedBytes:
    """Bytes autograd saves for backward during each training ``compute_loss`` (one micro-batch's
    forward), the model's parameters left out."""

    def __init__(self):
        self.per_forward: list[int] = []

    def wrap(self, compute_loss):
        meter = self

        def counted(trainer, model, inputs, *args, **kwargs):
            if not model.training:
                return compute_loss(trainer, model, inputs, *args, **kwargs)
            seen: dict[int, int] = {}
            weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}

            def pack(tensor):
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in weights:  # activations only, not the weights they were made with
                    seen[storage.data_ptr()] = storage.nbytes()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                out = compute_loss(trainer, model, inputs, *args, **kwargs)
            meter.per_forward.append(sum(seen.values()))
            return out

        return counted


def unpaired_rows(shape: str, n: int) -> list[dict]:
    """Pairs of the bench's shape, each made into a desirable and an undesirable example."""
    rows = []
    for pair in make_rows(shape, n // 2):
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows


def run_case(case: str, shape: str, steps: int, warmup: int) -> dict:
    import slimepo.train.unpaired as unpaired
    from slimepo.config import TrainConfig
    from slimepo.train import train
    from slimepo.train.trainer import PreferenceTrainer

    if case == "kept":
        unpaired.without_rejected = dict  # the micro-batch as collated: mismatched completions included
    saved = SavedBytes()
    PreferenceTrainer.compute_loss = saved.wrap(PreferenceTrainer.compute_loss)
    tokens: list[int] = []
    token_logps = PreferenceTrainer.token_logps

    def counting(trainer, model, batch, **kwargs):
        if torch.is_grad_enabled() and model.training:
            tokens.append(int((batch["pair_ids"] >= 0).sum()))
        return token_logps(trainer, model, batch, **kwargs)

    PreferenceTrainer.token_logps = counting
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="slimepo-bench-kto-"))
    total = steps + warmup
    rows = unpaired_rows(shape, EXAMPLES_PER_STEP * total)
    meter = Meter()
    config = TrainConfig(
        model=model_path("smollm2", folder), loss="kto", dataset=write_jsonl(folder / "train.jsonl", rows),
        eval_dataset=write_jsonl(folder / "eval.jsonl", rows[:2]), eval_split="train", max_eval_pairs=2,
        chat_template="none", max_length=2048, max_prompt_length=1024, output_dir=str(folder / "out"),
        max_steps=total, batch_size=EXAMPLES_PER_STEP // ACCUMULATION, gradient_accumulation_steps=ACCUMULATION,
        lora_r=16, lora_alpha=32, lora_dropout=0.0, save_steps=0, logging_steps=total, dtype="float32",
        layout="shared", logprob_chunk_size=512,
    )
    train(config, callbacks=[meter.callback()])
    times = meter.steps()[warmup:]
    return {
        "case": case, "median_step_s": statistics.median(times), "steps_timed": len(times),
        "gradient_forward_tokens_per_step": statistics.median(
            sum(tokens[i : i + ACCUMULATION]) for i in range(0, len(tokens), ACCUMULATION)),
        "saved_for_backward_mb_per_micro_batch": statistics.median(saved.per_forward) / 2**20,
        "peak_rss_gb": meter.rss.peak / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--shape", default="long")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.shape, args.steps, args.warmup)))
        return
    results = []
    for round_ in range(args.rounds):
        for case in CASES:
            cmd = [sys.executable, __file__, "--case", case, "--shape", args.shape, "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            results.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "round": round_})
            print(json.dumps(results[-1]), flush=True)
    by_case = {case: [r for r in results if r["case"] == case] for case in CASES}
    print(f"\nmachine: {describe_machine()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"{EXAMPLES_PER_STEP} examples per step ({EXAMPLES_PER_STEP // ACCUMULATION} x {ACCUMULATION} micro-batches), "
          f"shape {args.shape}, SmolLM2-135M, fp32, LoRA r 16, layout shared\n")
    print("| case | median step (s) | gradient-forward tokens / step | saved for backward / micro-batch (MB) | peak RSS (GB) |")
    print("| --- | --- | --- | --- | --- |")
    for case, rows in by_case.items():
        median = statistics.median(r["median_step_s"] for r in rows)
        print(f"| {case} | {median:.2f} | {rows[0]['gradient_forward_tokens_per_step']} | "
              f"{rows[0]['saved_for_backward_mb_per_micro_batch']:.0f} | {max(r['peak_rss_gb'] for r in rows):.2f} |")
    ratios = [k["median_step_s"] / d["median_step_s"] for k, d in zip(by_case["kept"], by_case["dropped"])]
    print(f"\nstep time kept / dropped, per round: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
