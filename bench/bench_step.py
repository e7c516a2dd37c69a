"""Step time, throughput and peak memory of slimepo's paths, TRL's trainers and the floor.

One case per process (peak memory is per process):

    python bench/bench_step.py --case slimepo-shared --shape long --model smollm2

``--all`` runs every case in subprocesses, one after another, and writes
``docs/performance.md``. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

PAIRS_PER_STEP = 4
SHAPES = {  # tokens: prompt, chosen, rejected (each ±10% per pair)
    "long": (240, 80, 80),
    "short": (40, 120, 120),
}
SLIMEPO_CASES = {
    "slimepo-naive": dict(layout="separate", logprob_chunk_size=0),
    "slimepo-chunked": dict(layout="separate", logprob_chunk_size=512),
    "slimepo-shared": dict(layout="shared", logprob_chunk_size=512),
    "slimepo-packed": dict(layout="packed", logprob_chunk_size=512, pack_tokens=4096),
    "slimepo-packed-fill": dict(layout="packed", logprob_chunk_size=512),  # budget: the batch's longest pair
}
TRL_CASES = ("trl-dpo", "trl-cpo-simpo", "trl-dpo-defaults", "trl-cpo-simpo-defaults")
CASES = (*SLIMEPO_CASES, *TRL_CASES, "floor")
WORDS = ["time", "people", "way", "year", "day", "thing", "man", "world", "life", "hand", "part", "child", "eye", "woman", "place", "work", "week", "case", "point", "government", "company", "number", "group", "problem", "fact", "water", "money", "story", "month", "lot", "right", "study", "book", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city"]


class PeakRss:
    """Samples this process's resident memory every 5 ms while running."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def current(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.005)

    def __enter__(self):
        self.start = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def text_of(n_tokens: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_tokens))


def make_rows(shape: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    p, c, r = SHAPES[shape]

    def jitter(x):
        return max(1, round(x * rng.uniform(0.9, 1.1)))

    return [{"prompt": text_of(jitter(p), rng), "chosen": " " + text_of(jitter(c), rng),
             "rejected": " " + text_of(jitter(r), rng)} for _ in range(n)]


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


class StepTimer:
    """Wall time between consecutive optimizer-step ends (data, forward, backward, update)."""

    def __init__(self):
        self.ends: list[float] = []

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Cb(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                timer.ends.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kwargs):
                timer.ends.append(time.perf_counter())

        return _Cb()

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


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


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def run_case(case: str, shape: str, model: str, steps: int, warmup: int, profile: bool = False) -> dict:
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="slimepo-bench-"))
    path = model_path(model, folder)
    rows = make_rows(shape, PAIRS_PER_STEP * (steps + warmup))
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    timer = StepTimer()
    total = steps + warmup
    if case.startswith("slimepo"):
        from slimepo.config import TrainConfig
        from slimepo.train import train

        config = TrainConfig(model=path, dataset=str(data), eval_dataset=str(data), eval_split="train",
                             max_eval_pairs=1, chat_template="none", max_length=2048, max_prompt_length=1024,
                             output_dir=str(folder / "out"), max_steps=total, batch_size=PAIRS_PER_STEP,
                             lora_r=16, lora_alpha=32, lora_dropout=0.0, save_steps=0, monitor_steps=0,
                             logging_steps=total, loss="simpo", **SLIMEPO_CASES[case])
        profiler = StepProfiler(at_step=warmup)
        with PeakRss() as rss:
            train(config, callbacks=[timer.callback(), *([profiler.callback()] if profile else [])])
        if profile:
            return {"case": case, "shape": shape, "model": model, "profile": profiler.table}
    elif case == "floor":
        rss = run_floor(path, rows, timer, total)
    else:
        rss = run_trl(case, path, rows, timer, total, folder)
    times = timer.steps()[warmup:]
    median = statistics.median(times)
    tokens = count_tokens(path, rows[: PAIRS_PER_STEP], case)
    return {
        "case": case, "shape": shape, "model": model, "steps_timed": len(times),
        "median_step_s": median, "pairs_per_s": PAIRS_PER_STEP / median,
        "tokens_per_step": tokens, "tokens_per_s": tokens / median,
        "peak_rss_gb": rss.peak / 2**30, "step_rss_increase_gb": (rss.peak - rss.start) / 2**30,
    }


def count_tokens(path: str, rows: list[dict], case: str) -> int:
    """Non-padding tokens the case processes for the first step's pairs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    n = 0
    for r in rows:
        p, c, j = (len(tok(r[k], add_special_tokens=False).input_ids) for k in ("prompt", "chosen", "rejected"))
        shared = case in ("slimepo-shared", "slimepo-packed", "slimepo-packed-fill", "floor")
        n += p + c + j + 2 if shared else 2 * p + c + j + 2
    return n


def run_floor(path: str, rows: list[dict], timer: StepTimer, total: int):
    """Bare LoRA forward+backward over each pair's unique tokens (prompt once, both responses), trivial loss."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), lora_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    with PeakRss() as rss:
        timer.ends.append(time.perf_counter())
        for step in range(total):
            batch = rows[step * PAIRS_PER_STEP : (step + 1) * PAIRS_PER_STEP]
            ids = [tok(r["prompt"] + r["chosen"] + r["rejected"], add_special_tokens=False).input_ids + [tok.eos_token_id] * 2
                   for r in batch]
            width = max(map(len, ids))
            input_ids = torch.tensor([x + [tok.eos_token_id] * (width - len(x)) for x in ids])
            attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            hidden = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True,
                           logits_to_keep=1).hidden_states[-1]
            hidden.pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            timer.ends.append(time.perf_counter())
    return rss


def run_trl(case: str, path: str, rows: list[dict], timer: StepTimer, total: int, folder: Path):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    defaults = case.endswith("-defaults")
    # Fair CPU setting: fp32 and no gradient checkpointing, like slimepo's defaults on CPU.
    common = dict(output_dir=str(folder / "trl"), per_device_train_batch_size=PAIRS_PER_STEP, max_steps=total,
                  learning_rate=1e-4, logging_steps=total, save_strategy="no", report_to=[], max_length=2048,
                  remove_unused_columns=False, dataloader_num_workers=0, use_cpu=True, seed=0)
    if not defaults:
        common.update(bf16=False, gradient_checkpointing=False)
    dataset = Dataset.from_list(rows)
    if case.startswith("trl-dpo"):
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=0.1)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                             peft_config=lora_config(), callbacks=[timer.callback()])
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=1.0, max_completion_length=1024)
        trainer = CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                             peft_config=lora_config(), callbacks=[timer.callback()])
    with PeakRss() as rss:
        trainer.train()
    return rss


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}"


PLAN = [
    *[(case, shape, "smollm2") for shape in ("long", "short")
      for case in ("floor", *SLIMEPO_CASES, "trl-cpo-simpo", "trl-dpo")],
    ("trl-cpo-simpo-defaults", "long", "smollm2"),
    ("trl-dpo-defaults", "long", "smollm2"),
    *[(case, "long", "bigvocab") for case in ("slimepo-naive", "slimepo-shared", "trl-cpo-simpo")],
]


def run_all(out: Path, steps: int, warmup: int) -> None:
    results = []
    raw = out.with_suffix(".jsonl")
    raw.write_text("")
    for case, shape, model in PLAN:
        slow = case.startswith("trl") or model == "bigvocab"
        n_steps, n_warm = (max(2, steps // 2), 1) if slow else (steps, warmup)
        cmd = [sys.executable, __file__, "--case", case, "--shape", shape, "--model", model,
               "--steps", str(n_steps), "--warmup", str(n_warm)]
        started = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            result = {"case": case, "shape": shape, "model": model, "error": proc.stderr.strip().splitlines()[-1]}
        else:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["wall_s"] = time.time() - started
        print(json.dumps(result), flush=True)
        with raw.open("a") as f:
            f.write(json.dumps(result) + "\n")
        results.append(result)
    proc = subprocess.run([sys.executable, __file__, "--case", "slimepo-shared", "--shape", "long", "--profile",
                           "--steps", "1", "--warmup", "1"], capture_output=True, text=True)
    profile = json.loads(proc.stdout.strip().splitlines()[-1])["profile"] if proc.returncode == 0 else proc.stderr[-2000:]
    from bench_report import write_performance_md

    write_performance_md(results, out, machine(), " ".join(["python", *sys.argv]), profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="long")
    parser.add_argument("--model", choices=("smollm2", "bigvocab"), default="smollm2")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--all", action="store_true", help="run the whole plan and write --out")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step")
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args()
    if args.all:
        run_all(args.out, args.steps, args.warmup)
    else:
        print(json.dumps(run_case(args.case, args.shape, args.model, args.steps, args.warmup, args.profile)))


if __name__ == "__main__":
    main()
