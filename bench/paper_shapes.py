"""The paper recipes at full size on a CPU: the three models' architectures, random weights, two optimizer steps.

Issue 27 item 7. Each paper model's architecture (its public ``config.json`` values below; Gemma 3's text
model only, without its vision tower) is built with random weights in bfloat16, saved once, and trained by
``slimepo train`` with the recipe's own options (``configs/paper/<model>/slime.yaml``: LoRA r 64 / alpha 128 on
every projection, ``lm_head`` trained fully as a separate copy, shared layout, chunked head, max_length 2048,
max_prompt_length 1024) for two optimizer steps of one pair each, on synthetic pairs of two sizes:

- ``full``: prompt 1024, chosen 1024, rejected 1024 tokens (the recipe's longest pair: one shared row of 3072
  tokens), with gradient checkpointing (without it, CPU attention under a shared-layout mask keeps every
  layer's token x token scores for backward, beyond this machine's 24 GiB);
- ``short``: prompt 256, chosen 128, rejected 128 (512 tokens in the row), without checkpointing, as the
  recipe runs: its per-token memory is what the recipe's activations cost (``mid``, twice as long, gives
  the growth per token; it fits in 24 GiB only for Llama-3.2-3B).

One case per process (peak memory is per process); memory is resident memory sampled every 5 ms
(``bench_step.PeakRss``) from the start of training (model, adapters and data loaded) to its end.

    python bench/paper_shapes.py --all --out docs/paper-shapes.jsonl      # about 1 hour on 2 cores
    python bench/paper_shapes.py --model qwen3-4b --case short               # one case, printed as JSON
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_step import Meter, text_of

from slimepo.model import describe_machine, machine

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "slimepo-paper-shapes"

#: (model_type, config values of the public checkpoint's config.json, recipe folder under configs/paper/).
MODELS = {
    # meta-llama/Llama-3.2-3B
    "llama-3.2-3b": ("llama", dict(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, tie_word_embeddings=True,
        max_position_embeddings=131072)),
    # Qwen/Qwen3-4B-Base
    "qwen3-4b": ("qwen3", dict(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=32768)),
    # google/gemma-3-4b-pt, text_config: 5 sliding-window layers (1024 tokens) to 1 global layer
    "gemma-3-4b": ("gemma3_text", dict(
        vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, sliding_window=1024, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=131072)),
}
#: (prompt, chosen, rejected) words of the synthetic pair (each word one token or more: the recipe's limits cut
#: them to 1024 / 2048 tokens), and whether activations are recomputed.
CASES = {
    "full": ((1400, 1400, 1400), True),
    "short": ((256, 128, 128), False),
    "tiny": ((128, 64, 64), False),  # beside "short": the growth per token without checkpointing
    "mid": ((512, 256, 256), False),  # the same, above "short" (at 1,026 tokens Llama-3.2-3B peaked at 22.8 of this
                                      # machine's 23.5 GiB: too much for the larger two)
}
ALL_CASES = ("tiny", "short", "full")
STEPS = 2


def model_folder(name: str) -> Path:
    """The architecture with random weights (seed 0) in bfloat16, saved once, with SmolLM2's tokenizer (its
    ids fit every vocabulary here; the output projection still spans the model's own vocabulary)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from slimepo.model import load_tokenizer

    folder = CACHE / name
    if (folder / "config.json").is_file():
        return folder
    model_type, values = MODELS[name]
    config = AutoConfig.for_model(model_type, **values)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    load_tokenizer("default").save_pretrained(folder)
    return folder


def rows(case: str, n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    (p, c, r), _ = CASES[case]
    return [{"prompt": text_of(p, rng), "chosen": " " + text_of(c, rng), "rejected": " " + text_of(r, rng)}
            for _ in range(n)]


def run_case(name: str, case: str) -> dict:
    from slimepo.config import TrainConfig, config_from_mapping, load_yaml
    from slimepo.train import train

    folder = Path(tempfile.mkdtemp(prefix="slimepo-shapes-"))
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows(case, STEPS)), encoding="utf-8")
    recipe = load_yaml(ROOT / "configs" / "paper" / name / "slime.yaml")
    _, checkpointing = CASES[case]
    recipe.update(
        model=str(model_folder(name)), dataset=str(data), dataset_split="train", dataset_cut=None, eval_dataset=None,
        chat_template="none", output_dir=str(folder / "out"), max_steps=STEPS, gradient_accumulation_steps=1,
        dtype="bfloat16", mixed_precision="no", gradient_checkpointing=checkpointing, save_steps=0, logging_steps=1,
        monitor_steps=0, report_to="none",
    )
    config = config_from_mapping(recipe, source=f"configs/paper/{name}/slime.yaml (shapes run)", cls=TrainConfig)
    meter = Meter()
    started = time.perf_counter()
    result = train(config, callbacks=[meter.callback()])
    tokens = count_row_tokens(config)
    trainable = trainable_parameters(folder / "out")
    return {
        "model": name, "case": case, "gradient_checkpointing": checkpointing, "row_tokens": tokens,
        "steps": result.global_step, "step_seconds": [round(s, 1) for s in meter.steps()],
        "peak_rss_gib": meter.rss.peak / 2**30, "start_rss_gib": meter.rss.start_bytes / 2**30,
        "step_increase_gib": (meter.rss.peak - meter.rss.start_bytes) / 2**30,
        "parameters": parameters(config.model), "trainable_parameters": trainable,
        "wall_seconds": round(time.perf_counter() - started, 1), "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def count_row_tokens(config) -> int:
    """Tokens of the first pair's shared row (prompt once, both responses), as the recipe's limits cut them."""
    from slimepo.data.formats import ValidationReport, normalize_rows
    from slimepo.data.sources import load_rows
    from slimepo.data.tokenize import tokenize_pairs
    from slimepo.model import load_tokenizer

    pairs = normalize_rows(load_rows(config.dataset, split="train"), ValidationReport())
    (pair,) = tokenize_pairs(pairs[:1], load_tokenizer(config.model), max_length=config.max_length,
                             max_prompt_length=config.max_prompt_length, chat_template=config.chat_template)
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def tensor_parameters(file: Path) -> int:
    from safetensors import safe_open

    with safe_open(file, "pt") as f:
        return sum(_numel(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118


def parameters(model: str) -> int:
    """Parameters of the saved model (tied embeddings counted once)."""
    return sum(tensor_parameters(file) for file in Path(model).glob("*.safetensors"))


def trainable_parameters(out: Path) -> int:
    """The adapter file's parameters: the LoRA matrices and the trained ``lm_head`` copy."""
    return tensor_parameters(out / "adapter_model.safetensors")


def table(path: Path) -> list[str]:
    """The measured cases of ``path`` (JSON lines), and each model's per-GPU memory of the recipe derived from them.

    Derivation, per model, for the recipe as it runs on an H100 (float32 weights under bf16 autocast, AdamW in
    float32, batch 1, no checkpointing, its longest pair: 3,072 tokens in the shared row): weights, 4 bytes per
    parameter; the trained parameters (``lm_head`` copy and LoRA matrices) with their gradients and two AdamW
    moments, 16 bytes each; activations at 3,072 tokens = the ``short`` case's step increase less its own bf16
    gradients and moments (6 bytes per trained parameter), plus the growth per token between the two cases without
    checkpointing (``tiny`` or ``mid`` against ``short``) times the tokens beyond ``short``'s. Assumed: the GPU's
    bf16-autocast activations take what this CPU's bf16 ones take (autocast keeps a few in float32: more; the
    GPU's attention kernels keep no token x token scores, which the CPU's do: less).
    """
    cases = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    gib = 2**30
    lines = ["| model | case | row tokens | checkpointing | peak RSS (GiB) | at train start | step increase | "
             "step increase per token (MiB) | step times (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    derived = ["| model | parameters | trained (LoRA + lm_head copy) | weights fp32 (GiB) | trained, with gradients "
               "and AdamW (GiB) | growth per token without checkpointing (MiB) | activations at 3,072 tokens (GiB) | "
               "per GPU (GiB) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_model: dict[str, dict[str, dict]] = {}
    for case in cases:
        if "failed" in case:
            lines.append(f"| {case['model']} | {case['case']} | failed: {' '.join(case['failed'])[-120:]} |"
                         " | | | | | |")
            continue
        by_model.setdefault(case["model"], {})[case["case"]] = case
        per_token = case["step_increase_gib"] * 1024 / case["row_tokens"]
        lines.append(f"| {case['model']} | {case['case']} | {case['row_tokens']:,} | "
                     f"{'yes' if case['gradient_checkpointing'] else 'no'} | {case['peak_rss_gib']:.1f} | "
                     f"{case['start_rss_gib']:.1f} | {case['step_increase_gib']:.1f} | {per_token:.1f} | "
                     f"{', '.join(f'{s:.0f}' for s in case['step_seconds'])} |")
    for model, found in by_model.items():
        short = found.get("short")
        other = found.get("tiny") or found.get("mid")
        if short is None or other is None:
            continue
        params, trained = short["parameters"], short["trainable_parameters"]
        growth = ((short["step_increase_gib"] - other["step_increase_gib"]) * gib
                  / (short["row_tokens"] - other["row_tokens"]))
        activations = (short["step_increase_gib"] * gib - 6 * trained + growth * (3072 - short["row_tokens"])) / gib
        weights, states = 4 * params / gib, 16 * trained / gib
        derived.append(f"| {model} | {params / 1e9:.2f} B | {trained / 1e6:.0f} M | {weights:.1f} | {states:.1f} | "
                       f"{growth / 2**20:.1f} | {activations:.1f} | {weights + states + activations:.0f} |")
    return lines + [""] + derived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--all", action="store_true", help="every model and case, each in its own process")
    parser.add_argument("--out", type=Path, default=None, help="append each case's JSON line to this file")
    parser.add_argument("--table", type=Path, default=None, help="print the tables of a JSON-lines file of cases")
    args = parser.parse_args()
    if args.table:
        print("\n".join(table(args.table)))
        return
    if not args.all:
        print(json.dumps(run_case(args.model, args.case)))
        return
    print(describe_machine(), file=sys.stderr)
    for name in MODELS:
        for case in ALL_CASES:
            done = subprocess.run([sys.executable, __file__, "--model", name, "--case", case],
                                  capture_output=True, text=True, check=False)
            line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else None
            if line is None:
                line = json.dumps({"model": name, "case": case, "failed": done.stderr.strip().splitlines()[-3:]})
            print(line, flush=True)
            if args.out:
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
