"""Step time, throughput and peak memory of slimepo's losses and paths, TRL's trainers and the floor.

One case per process (peak memory is per process):

    python bench/bench_step.py --case slimepo-slime --model smollm2 --warmup 1 --steps 3

``--all`` runs bench_report's plan ``--repeats`` times, round after round (every case once per
round, so the two sides of a ratio alternate: A B A B), each run in its own process, and writes
``docs/performance.md``. Every case gets the same ``--warmup`` and ``--steps``. Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from bench_report import PLAN, write_performance_md

from slimepo.model import describe_machine

PAIRS_PER_STEP = 4
SHAPES = {  # tokens: prompt, chosen, rejected (each ±10% per pair)
    "long": (144, 48, 48),
    "tiny": (16, 8, 8),  # smoke test of the harness, not a measurement
}
SLIMEPO_CASES = {  # TrainConfig overrides of the bench's common slimepo config (layout shared, chunk 512)
    "slimepo-slime": dict(loss="slime"),
    "slimepo-simpo": dict(loss="simpo"),
    "slimepo-dpo": dict(loss="dpo"),  # reference: the same LoRA model with adapters disabled, as TRL with peft
    "slimepo-naive": dict(loss="slime", layout="separate", logprob_chunk_size=0),
    "slimepo-chunked": dict(loss="slime", layout="separate"),
    "slimepo-packed-fill": dict(loss="slime", layout="packed"),  # row budget: the batch's longest pair
    # The reference scored once before training (not timed: it is outside the optimizer steps), none per step.
    "slimepo-dpo-precomputed": dict(loss="dpo", precompute_ref_logps=True, ref_logps_cache="off"),
    "slimepo-dpo-sft": dict(loss="dpo,sft=0.2"),  # a weighted sum: DPO plus an NLL term on the chosen answer
}
BF16 = "-bf16"  # suffix: the slimepo case with bf16 autocast (fp32 weights)
TRL_CASES = ("trl-dpo", "trl-cpo-simpo", "trl-dpo-defaults", "trl-cpo-simpo-defaults")
CASES = (*SLIMEPO_CASES, *(case + BF16 for case in SLIMEPO_CASES), *TRL_CASES, "floor", "floor" + BF16)
WORDS = ["time", "people", "way", "year", "day", "thing", "man", "world", "life", "hand", "part", "child", "eye", "woman", "place", "work", "week", "case", "point", "government", "company", "number", "group", "problem", "fact", "water", "money", "story", "month", "lot", "right", "study", "book", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city"]


class PeakRss:
    """Highest resident memory of this process, sampled every 5 ms from ``start()`` to ``stop()``."""

    def __init__(self):
        self.start_bytes = self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def current(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.005)

    def start(self):
        self.start_bytes = self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()


class Meter:
    """Optimizer-step end times and peak memory, both from the same point in every case:
    after the model (and its LoRA adapters, optimizer, tokenized data) are loaded, before the first step."""

    def __init__(self):
        self.ends: list[float] = []
        self.rss = PeakRss()

    def begin(self):
        self.rss.start()
        self.ends.append(time.perf_counter())

    def step_end(self):
        self.ends.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class _Cb(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                meter.begin()

            def on_step_end(self, args, state, control, **kwargs):
                meter.step_end()

            def on_train_end(self, args, state, control, **kwargs):
                meter.rss.stop()

        return _Cb()


class StepProfiler:
    """torch.profiler over one optimizer step after warm-up."""

    def __init__(self, at_step: int):
        self.at_step = at_step
        self.table = ""

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class _Cb(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == outer.at_step:
                    outer.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    outer.prof.__enter__()

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == outer.at_step + 1:
                    outer.prof.__exit__(None, None, None)
                    outer.table = outer.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)

        return _Cb()


def text_of(n_tokens: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_tokens))


def make_rows(shape: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    p, c, r = SHAPES[shape]

    def jitter(x):
        return max(1, round(x * rng.uniform(0.9, 1.1)))

    return [{"prompt": text_of(jitter(p), rng), "chosen": " " + text_of(jitter(c), rng),
             "rejected": " " + text_of(jitter(r), rng)} for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def model_path(name: str, folder: Path) -> str:
    if name == "smollm2":
        from slimepo.model import default_model_path

        return str(default_model_path())
    # Shaped like Qwen3-0.6B (vocab 151,936, hidden 1024, 16 heads / 8 KV heads), 4 layers, random init.
    from transformers import AutoConfig, AutoModelForCausalLM

    from slimepo.model import load_tokenizer

    config = AutoConfig.for_model("qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                                  num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                  tie_word_embeddings=True, max_position_embeddings=4096)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "bigvocab")
    load_tokenizer("default").save_pretrained(folder / "bigvocab")
    return str(folder / "bigvocab")


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def run_case(case: str, shape: str, model: str, steps: int, warmup: int, profile: bool = False) -> dict:
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="slimepo-bench-"))
    path = model_path(model, folder)
    total = steps + warmup
    rows = make_rows(shape, PAIRS_PER_STEP * total)
    meter = Meter()
    if case.startswith("slimepo"):
        profiler = StepProfiler(at_step=warmup)
        run_slimepo(case, path, rows, meter, total, folder, [profiler.callback()] if profile else [])
        if profile:
            return {"case": case, "shape": shape, "model": model, "profile": profiler.table}
    elif case.startswith("floor"):
        run_floor(path, rows, meter, total, bf16=case.endswith(BF16))
    else:
        run_trl(case, path, rows, meter, total, folder)
    times = meter.steps()[warmup:]
    median = statistics.median(times)
    tokens = count_tokens(path, rows[:PAIRS_PER_STEP], case)
    return {
        "case": case, "shape": shape, "model": model, "warmup": warmup, "steps_timed": len(times),
        "median_step_s": median, "pairs_per_s": PAIRS_PER_STEP / median,
        "tokens_per_step": tokens, "tokens_per_s": tokens / median, "peak_rss_gb": meter.rss.peak / 2**30,
        "step_rss_increase_gb": (meter.rss.peak - meter.rss.start_bytes) / 2**30,
    }


def run_slimepo(case: str, path: str, rows: list[dict], meter: Meter, total: int, folder: Path, callbacks: list):
    from slimepo.config import TrainConfig
    from slimepo.train import train

    # fp32 cases: plain fp32, whatever the CPU; bf16 cases: fp32 weights and optimizer, forward under
    # bf16 autocast, as TRL's bf16 default.
    precision = {"dtype": "auto", "mixed_precision": "bf16"} if case.endswith(BF16) else {"dtype": "float32"}
    # One tiny held-out pair: train() scores it before training, which should not raise the memory baseline.
    eval_data = write_jsonl(folder / "eval.jsonl", [{"prompt": "a", "chosen": " b", "rejected": " c"}])
    config = TrainConfig(model=path, dataset=write_jsonl(folder / "pairs.jsonl", rows), eval_dataset=eval_data,
                         eval_split="train", max_eval_pairs=1, chat_template="none", max_length=2048,
                         max_prompt_length=1024, output_dir=str(folder / "out"), max_steps=total,
                         batch_size=PAIRS_PER_STEP, lora_r=16, lora_alpha=32, lora_dropout=0.0, save_steps=0,
                         monitor_steps=0, logging_steps=total, **precision,
                         **{"layout": "shared", "logprob_chunk_size": 512, **SLIMEPO_CASES[case.removesuffix(BF16)]})
    train(config, callbacks=[meter.callback(), *callbacks])


def count_tokens(path: str, rows: list[dict], case: str) -> int:
    """Non-padding tokens the case processes for the first step's pairs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    slimepo = SLIMEPO_CASES.get(case.removesuffix(BF16))
    prompt_once = case.startswith("floor") or (slimepo is not None and slimepo.get("layout") != "separate")
    n = 0
    for r in rows:
        p, c, j = (len(tok(r[k], add_special_tokens=False).input_ids) for k in ("prompt", "chosen", "rejected"))
        n += p + c + j + 2 if prompt_once else 2 * p + c + j + 2
    return n


def run_floor(path: str, rows: list[dict], meter: Meter, total: int, bf16: bool = False):
    """Bare LoRA forward+backward over each pair's unique tokens (prompt once, both responses), trivial loss;
    ``bf16``: the forward under bf16 autocast over the fp32 weights, as the bf16 cases run."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), lora_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    meter.begin()
    for step in range(total):
        batch = rows[step * PAIRS_PER_STEP : (step + 1) * PAIRS_PER_STEP]
        ids = [tok(r["prompt"] + r["chosen"] + r["rejected"], add_special_tokens=False).input_ids + [tok.eos_token_id] * 2
               for r in batch]
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tok.eos_token_id] * (width - len(x)) for x in ids])
        attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True,
                           logits_to_keep=1).hidden_states[-1]
        hidden.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        meter.step_end()
    meter.rss.stop()


def run_trl(case: str, path: str, rows: list[dict], meter: Meter, total: int, folder: Path):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    common = dict(output_dir=str(folder / "trl"), per_device_train_batch_size=PAIRS_PER_STEP, max_steps=total,
                  learning_rate=1e-4, logging_steps=total, save_strategy="no", report_to=[], max_length=2048,
                  remove_unused_columns=False, dataloader_num_workers=0, use_cpu=True, seed=0)
    if not case.endswith("-defaults"):  # TRL's configs default to bf16 autocast and gradient checkpointing
        common.update(bf16=False, gradient_checkpointing=False)
    dataset = Dataset.from_list(rows)
    if case.startswith("trl-dpo"):
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=0.1)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                             peft_config=lora_config(), callbacks=[meter.callback()])
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=1.0, max_completion_length=1024)
        trainer = CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                             peft_config=lora_config(), callbacks=[meter.callback()])
    trainer.train()


def run_one(case: str, shape: str, model: str, steps: int, warmup: int, profile: bool = False) -> dict:
    """One case in a fresh process; a failure becomes ``{"error": last stderr line}``."""
    cmd = [sys.executable, __file__, "--case", case, "--shape", shape, "--model", model,
           "--steps", str(steps), "--warmup", str(warmup), *(["--profile"] if profile else [])]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        result = {"case": case, "shape": shape, "model": model, "error": proc.stderr.strip().splitlines()[-1]}
    else:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.time() - started
    return result


def run_all(out: Path, shape: str, steps: int, warmup: int, repeats: int) -> None:
    n_runs = repeats * len(PLAN)
    print(f"plan: {repeats} round(s) x {len(PLAN)} cases = {n_runs} processes, each {warmup} warm-up + {steps} "
          f"timed optimizer steps: {n_runs * (warmup + steps)} steps in all ({n_runs * steps} timed), "
          f"then 1 profiled step", flush=True)
    results = []
    raw = out.with_suffix(".jsonl")
    raw.write_text("")
    for round_ in range(repeats):
        for model, case in PLAN:
            result = {**run_one(case, shape, model, steps, warmup), "round": round_}
            print(f"[{len(results) + 1}/{n_runs}] {json.dumps(result)}", flush=True)
            with raw.open("a") as f:
                f.write(json.dumps(result) + "\n")
            results.append(result)
    profiled = run_one("slimepo-slime", shape, "smollm2", 1, 1, profile=True)
    profile = profiled.get("profile") or profiled.get("error", "")
    prompt, chosen, rejected = SHAPES[shape]
    pairs = f"shape {shape}: prompt {prompt}, chosen {chosen}, rejected {rejected} words, each ±10%"
    write_performance_md(results, out, describe_machine(), " ".join(["python", *sys.argv]), profile, pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="long")
    parser.add_argument("--model", choices=("smollm2", "bigvocab"), default="smollm2")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, every case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first, every case")
    parser.add_argument("--repeats", type=int, default=2, help="--all: rounds over the plan, each case once per round")
    parser.add_argument("--all", action="store_true", help="run the whole plan and write --out")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step")
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args()
    if args.all:
        run_all(args.out, args.shape, args.steps, args.warmup, args.repeats)
    else:
        print(json.dumps(run_case(args.case, args.shape, args.model, args.steps, args.warmup, args.profile)))


if __name__ == "__main__":
    main()
