"""Generation speed of the embedded default model, float32 against bfloat16 weights, on IFEval prompts.

    python bench/bench_generate.py --prompts 64 --max-new-tokens 128 --batch-sizes 64,32,16

Greedy, ``slimepo.generation.batched.generate`` (left-padded batches, longest prompt first) on a
fixed random sample of IFEval's prompts (seed 0). Prints one line per dtype and batch size:
wall seconds, seconds per prompt and the mean answer length (it differs between dtypes:
greedy decoding in bf16 takes other tokens now and then). Run it on an otherwise idle
machine and quote the ratio of two lines of one run, with the CPU.
"""

from __future__ import annotations

import argparse
import random
import time

from slimepo.eval.ifeval import load_prompts
from slimepo.generation.batched import chat_prompt_ids, generate
from slimepo.model import describe_machine, load_causal_lm, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="64,32,16")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    tokenizer = load_tokenizer("default")
    records = random.Random(0).sample(load_prompts(), args.prompts)
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in records]
    print(f"# {describe_machine()}")
    for dtype in args.dtypes.split(","):
        model = load_causal_lm("default", dtype=dtype, training=False)
        for batch_size in map(int, args.batch_sizes.split(",")):
            start = time.perf_counter()
            answers = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch_size)
            wall = time.perf_counter() - start
            length = sum(len(a.token_ids) for a in answers) / len(answers)
            print(f"{dtype:9s} batch {batch_size:3d}: {wall:6.1f} s, {wall / len(prompts):.2f} s/prompt, "
                  f"mean answer {length:.1f} tokens")


if __name__ == "__main__":
    main()
