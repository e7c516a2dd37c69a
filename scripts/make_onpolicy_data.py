"""Generate an on-policy, verifiable preference set from SmolLM2-135M-Instruct's own answers.

Each prompt is an everyday request (the topics of ``scripts/make_demo_data.py``) plus one
verifiable constraint from ``slimepo.constraints``. The embedded SmolLM2-135M-Instruct
(``slimepo.model.load_causal_lm("default")``) answers every prompt several times by
nucleus sampling, and ``slimepo.constraints.check`` labels every answer. A prompt gives
one pair, (an answer that passes, an answer that fails), drawn with the seed; prompts
whose answers all pass or all fail are dropped. Both sides are the model's own text, so
the pairs are *on-policy* for it, unlike the demo set's templated answers.

Splits are by request (a request never appears in two splits, whatever its
constraint), and one constraint family is held out entirely: its pairs form
``test_heldout_family``, for measuring transfer to a constraint never trained on.

Sampling is slow on CPUs, so every batch's answers are appended to
``samples.partial.jsonl`` as soon as they exist, and a rerun skips the prompts already
sampled; ``--max-minutes`` stops sampling in time and builds the data from the prompts
sampled so far. At the end the answers are moved into ``samples.jsonl.gz`` (kept: the
splits can be rebuilt from it without the model). The prompt list does not depend on
its length, so a larger ``--prompts`` extends a finished set.

    python scripts/make_onpolicy_data.py [--seed 0] [--prompts 1040] [--max-minutes 40]
    python scripts/make_onpolicy_data.py --measure 32   # time 32 prompts, write nothing

Why this is not a use of ``slimepo pairs`` (which does the same sampling and scoring for any
prompt set, with ``--scorer constraints``): the study's data must stay what this script made,
and three of its choices are not ``slimepo pairs``' — a pair is one passing and one failing
answer *drawn with the seed* among the prompt's answers (``slimepo pairs`` takes the best and the
worst, the first of each on ties), the splits are made by request with one constraint family held
out (``slimepo pairs`` writes one set), and the answers were sampled before ``slimepo pairs``
existed (``samples.jsonl.gz`` has no ``made_by`` record, so ``slimepo pairs`` would sample them
again rather than trust them). New on-policy data is made with ``slimepo pairs`` (or round after
round with ``slimepo iterate``); this script is kept to rebuild the study's data exactly.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from slimepo.constraints import FAMILIES, Constraint, check, count_words, instruction

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_data import (  # noqa: E402 - a sibling script, not a package
    ADVICE,
    AVOID_WORDS,
    END_PHRASES,
    INCLUDE_WORDS,
    JSON_KEYS,
    OPENERS,
    PROMPT_OPENERS,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "onpolicy"
SPLITS = ("train", "validation", "test")
HELDOUT_SPLIT = "test_heldout_family"
ROW_FIELDS = ("id", "prompt", "chosen", "rejected", "family", "constraint")
# The families sampled. Left out: json_key, lowercase, uppercase and end_phrase, which
# SmolLM2-135M-Instruct (almost) never obeys: 0 of 28 answers passed in a pilot of 7
# prompts, so their prompts would cost sampling time and give no pairs.
FAMILIES_USED = (
    "bullet_count", "numbered_list", "max_words", "min_words", "include_word", "avoid_word",
    "start_word", "paragraph_count", "no_commas",
)
DEFAULT_HELDOUT_FAMILY = "include_word"  # moderate pass rate; its mirror avoid_word is trained
SPLIT_SHARES = (0.8, 0.1, 0.1)  # of the requests: train, validation, test
SAMPLES_FILE = "samples.jsonl.gz"
PARTIAL_FILE = "samples.partial.jsonl"

# Sampling settings, recorded in the data card.
TEMPERATURE = 0.9
TOP_P = 0.95
MAX_NEW_TOKENS = 96
PROMPTS_PER_BATCH = 8  # x samples = sequences per generate() call

# Requests beyond the demo's 48: each tip of a request becomes two more.
TIP_REQUESTS = (
    "Why should I {tip}?",
    "Write a short note to a friend who wants to know whether to {tip}.",
)


@dataclass(frozen=True)
class PromptSpec:
    """One prompt: ``text`` is the user turn, ``request`` the constraint-free part."""

    id: str
    topic: str
    request: str
    constraint: Constraint
    text: str


# --- prompts (no model) ----------------------------------------------------------------


def requests() -> list[tuple[str, str]]:
    """Every (topic, request): the demo's requests, then two per tip, in a fixed order."""
    found: list[tuple[str, str]] = []
    for topic, items in ADVICE.items():
        for request, tips in items:
            found.append((topic, request))
            found.extend((topic, template.format(tip=tip)) for tip in tips for template in TIP_REQUESTS)
    return found


def draw_constraint(rng: random.Random, family: str) -> Constraint:
    """A constraint of ``family`` with parameters an answer of ~15-70 words can meet."""
    params: dict[str, object] = {
        "json_key": lambda: {"key": rng.choice(JSON_KEYS)},
        "bullet_count": lambda: {"n": rng.randint(2, 4)},
        "numbered_list": lambda: {"n": rng.randint(2, 4)},
        "max_words": lambda: {"n": rng.choice((20, 30, 40, 50))},
        "min_words": lambda: {"n": rng.choice((20, 30, 40, 50))},
        "include_word": lambda: {"word": rng.choice(INCLUDE_WORDS)},
        "avoid_word": lambda: {"word": rng.choice(AVOID_WORDS + ("you", "and", "the"))},
        "end_phrase": lambda: {"phrase": rng.choice(END_PHRASES)},
        "start_word": lambda: {"word": rng.choice(tuple(OPENERS))},
        "paragraph_count": lambda: {"n": rng.randint(2, 3)},
    }.get(family, dict)()
    return Constraint(family, params)


def build_prompts(seed: int, n_prompts: int, families: Sequence[str] = FAMILIES_USED) -> list[PromptSpec]:
    """``n_prompts`` distinct prompts, families in turn, requests and parameters drawn with
    ``seed``. Depends only on the arguments (no model)."""
    if not families or n_prompts < 1:
        raise ValueError("need at least one family and one prompt")
    rng = random.Random(seed)
    pool = requests()
    specs: list[PromptSpec] = []
    seen: set[str] = set()
    attempts = 0
    while len(specs) < n_prompts:
        attempts += 1
        if attempts > 50 * n_prompts:
            raise ValueError(f"cannot draw {n_prompts} distinct prompts from {len(pool)} requests")
        family = families[len(specs) % len(families)]
        topic, request = rng.choice(pool)
        constraint = draw_constraint(rng, family)
        text = f"{rng.choice(PROMPT_OPENERS)}{request} {instruction(constraint)}"
        if text in seen:
            continue
        seen.add(text)
        specs.append(PromptSpec(f"p{len(specs):05d}", topic, request, constraint, text))
    return specs


# --- sampling answers (the model) ------------------------------------------------------


def read_samples(folder: Path) -> dict[str, list[dict]]:
    """prompt id -> its sampled answers (in sample order), from the finished and the
    partial file. A cut-off last line of the partial file (an interrupted write) is
    ignored, and so is a repeated (prompt id, sample)."""
    lines: list[str] = []
    if (folder / SAMPLES_FILE).is_file():
        with gzip.open(folder / SAMPLES_FILE, "rt", encoding="utf-8") as file:
            lines.extend(file)
    if (folder / PARTIAL_FILE).is_file():
        lines.extend((folder / PARTIAL_FILE).read_text(encoding="utf-8").splitlines())
    found: dict[str, dict[int, dict]] = {}
    for line in lines:
        try:
            sample = json.loads(line)
        except json.JSONDecodeError:
            continue
        found.setdefault(sample["prompt_id"], {}).setdefault(sample["sample"], sample)
    return {pid: [by_index[k] for k in sorted(by_index)] for pid, by_index in found.items()}


def sample_answers(
    specs: Sequence[PromptSpec], folder: Path, *, n_samples: int, seed: int, dtype: str,
    deadline: float = float("inf"), log=print,
) -> None:
    """Sample ``n_samples`` answers per prompt, appending each block's to the partial file.

    Prompts go in blocks of ``PROMPTS_PER_BATCH`` (by position); block ``b`` is sampled in
    one batch with seed ``seed * 100_003 + b``, so a resumed run draws what an
    uninterrupted one would have (on the same machine and library versions). Stops
    after the block that ends past ``deadline`` (a ``time.monotonic()`` value).
    """
    from slimepo.generation.batched import chat_prompt_ids, end_of_turn_ids, generate
    from slimepo.model import load_causal_lm, load_tokenizer

    done = read_samples(folder)
    blocks = [specs[start : start + PROMPTS_PER_BATCH] for start in range(0, len(specs), PROMPTS_PER_BATCH)]
    todo = [(b, [spec for spec in block if len(done.get(spec.id, ())) < n_samples])
            for b, block in enumerate(blocks)]
    todo = [(b, missing) for b, missing in todo if missing]
    if not todo:
        return
    tokenizer = load_tokenizer("default")
    eot_ids = end_of_turn_ids(tokenizer)
    model = load_causal_lm("default", dtype=dtype)
    folder.mkdir(parents=True, exist_ok=True)
    started, n_done, n_todo = time.monotonic(), 0, sum(len(missing) for _, missing in todo)
    for b, missing in todo:
        if time.monotonic() > deadline:
            log(f"time is up: {n_todo - n_done} prompts left unsampled; rerun to continue")
            return
        prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": spec.text}])
                   for spec in missing for _ in range(n_samples)]
        answers = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, sampling=True,
                           temperature=TEMPERATURE, top_p=TOP_P, seed=seed * 100_003 + b,
                           batch_size=len(prompts))
        lines = []
        for k, answer in enumerate(answers):
            spec = missing[k // n_samples]
            result = check(spec.constraint, answer.text)
            lines.append(json.dumps({
                "prompt_id": spec.id, "sample": k % n_samples, "text": answer.text,
                "passed": result.passed, "detail": result.detail, "tokens": len(answer.token_ids),
                "finished": bool(answer.token_ids) and answer.token_ids[-1] in eot_ids,
            }, ensure_ascii=False))
        with (folder / PARTIAL_FILE).open("a", encoding="utf-8") as file:
            file.write("".join(line + "\n" for line in lines))
        n_done += len(missing)
        elapsed = time.monotonic() - started
        log(f"block {b}: {n_done}/{n_todo} prompts in {elapsed:.0f} s "
            f"({n_done * n_samples / elapsed:.2f} answers/s), "
            f"about {(n_todo - n_done) * elapsed / n_done / 60:.0f} min left", flush=True)


def fold_samples(folder: Path) -> None:
    """Move the partial file's answers into ``samples.jsonl.gz`` (sorted: reruns match)."""
    samples = read_samples(folder)
    lines = [json.dumps(s, ensure_ascii=False) for pid in sorted(samples) for s in samples[pid]]
    _write_gz(folder / SAMPLES_FILE, lines)
    (folder / PARTIAL_FILE).unlink(missing_ok=True)


# --- pairs and splits ------------------------------------------------------------------


def make_pairs(specs: Sequence[PromptSpec], samples: dict[str, list[dict]], seed: int) -> list[dict]:
    """One (passing, failing) pair per prompt that has both; the chosen side must be a
    finished answer (ended with the end-of-turn token, not cut at the token limit)."""
    rng = random.Random(seed)
    rows = []
    for spec in specs:
        answers = sorted(samples.get(spec.id, []), key=lambda s: s["sample"])
        passing = sorted({s["text"] for s in answers if s["passed"] and s["finished"]})
        failing = sorted({s["text"] for s in answers if not s["passed"] and s["text"].strip()})
        if not passing or not failing:
            continue
        rows.append({
            "prompt_id": spec.id, "request": spec.request, "prompt": spec.text,
            "chosen": rng.choice(passing), "rejected": rng.choice(failing),
            "family": spec.constraint.family, "constraint": spec.constraint.to_dict(),
        })
    return rows


def split_rows(rows: Sequence[dict], seed: int, heldout_family: str) -> dict[str, list[dict]]:
    """Requests shuffled with ``seed`` and cut 80/10/10; ``heldout_family`` apart."""
    heldout = [row for row in rows if row["family"] == heldout_family]
    rest = [row for row in rows if row["family"] != heldout_family]
    request_order = sorted({row["request"] for row in rest})
    random.Random(seed).shuffle(request_order)
    n_train = round(len(request_order) * SPLIT_SHARES[0])
    n_validation = round(len(request_order) * SPLIT_SHARES[1])
    split_of = {request: "train" if i < n_train else "validation" if i < n_train + n_validation else "test"
                for i, request in enumerate(request_order)}
    splits = {name: [row for row in rest if split_of[row["request"]] == name] for name in SPLITS}
    splits[HELDOUT_SPLIT] = heldout
    return {name: [{"id": f"{name}-{i:05d}", **{k: row[k] for k in ROW_FIELDS[1:]}}
                   for i, row in enumerate(split)] for name, split in splits.items()}


def validate(splits: dict[str, list[dict]], heldout_family: str) -> None:
    """Raise ``AssertionError`` unless every pair is right and the splits are clean."""
    prompts = {name: {row["prompt"] for row in rows} for name, rows in splits.items()}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if prompts[a] & prompts[b]:
                raise AssertionError(f"splits {a} and {b} share {len(prompts[a] & prompts[b])} prompts")
    for name, rows in splits.items():
        for row in rows:
            constraint = Constraint.from_dict(row["constraint"])
            if constraint.family != row["family"]:
                raise AssertionError(f"{row['id']}: family field disagrees with the constraint")
            if (row["family"] == heldout_family) != (name == HELDOUT_SPLIT):
                raise AssertionError(f"{row['id']}: family {row['family']} in split {name}")
            if not check(constraint, row["chosen"]).passed or check(constraint, row["rejected"]).passed:
                raise AssertionError(f"{row['id']}: chosen must pass and rejected fail")


# --- writing ---------------------------------------------------------------------------


def _write_gz(path: Path, lines: Iterable[str]) -> None:
    with gzip.GzipFile(path, "wb", mtime=0) as file:  # mtime=0: byte-identical reruns
        file.write("".join(line + "\n" for line in lines).encode("utf-8"))


def _mean_words(rows: Sequence[dict], field: str) -> str:
    return f"{mean(count_words(row[field]) for row in rows):.1f}" if rows else "-"


def data_card(
    specs: Sequence[PromptSpec], samples: dict[str, list[dict]], splits: dict[str, list[dict]],
    args: argparse.Namespace,
) -> str:
    """The README.md written next to the data."""
    family_of = {spec.id: spec.constraint.family for spec in specs}
    answers = [s for spec in specs for s in samples.get(spec.id, [])]
    prompts_per_family = Counter(spec.constraint.family for spec in specs)
    family_lines = []
    for family in FAMILIES:
        if not prompts_per_family[family]:
            continue
        mine = [s for s in answers if family_of[s["prompt_id"]] == family]
        counts = [sum(row["family"] == family for row in splits[name]) for name in splits]
        family_lines.append(
            f"| `{family}` | {prompts_per_family[family]} | {100 * mean(s['passed'] for s in mine):.1f} "
            f"| {' | '.join(map(str, counts))} | {sum(counts)} |"
        )
    split_lines = [
        f"| {name} | {len(rows)} | {len({row['family'] for row in rows})} | {_mean_words(rows, 'prompt')} "
        f"| {_mean_words(rows, 'chosen')} | {_mean_words(rows, 'rejected')} |"
        for name, rows in splits.items()
    ]
    n_pairs = sum(len(rows) for rows in splits.values())
    id_of = {spec.text: spec.id for spec in specs}
    finished_of = {(s["prompt_id"], s["text"]): s["finished"] for s in answers}
    cut_rejected = sum(not finished_of[id_of[row["prompt"]], row["rejected"]]
                       for rows in splits.values() for row in rows)
    finished = 100 * mean(s["finished"] for s in answers)
    overall = 100 * mean(s["passed"] for s in answers)
    command = (f"python scripts/make_onpolicy_data.py --seed {args.seed} --prompts {args.prompts} "
               f"--samples {args.samples} --heldout-family {args.heldout_family} --dtype {args.dtype}")
    split_names = " | ".join(splits)
    return f"""# On-policy verifiable preference pairs (SmolLM2-135M-Instruct)

Preference pairs whose both sides are answers of slimepo's embedded model,
SmolLM2-135M-Instruct, to instruction-following prompts with one verifiable constraint
each. The preference is decided by a program (`slimepo.constraints.check`), not by a
judge: `chosen` obeys the prompt's constraint, `rejected` does not. Because the answers
are the model's own samples, training SmolLM2-135M-Instruct on them is on-policy
preference optimization, where the shipped demo set (`src/slimepo/data/demo`, templated
answers) is off-policy.

## How it was made

```
{command}
```

1. **Prompts** ({len(specs)}, distinct): an everyday request from the
   {len(ADVICE)} topics of `scripts/make_demo_data.py` ({len(requests())} requests: the
   demo's {sum(len(items) for items in ADVICE.values())} questions, plus two per tip:
   "Why should I <tip>?" and a note to a friend about it), an optional greeting, and the
   instruction of one constraint (`slimepo.constraints.instruction`) of the
   {len(FAMILIES_USED)} families below, which take turns; requests and parameters are
   drawn with the seed. Left out: {", ".join(f"`{f}`" for f in FAMILIES if f not in FAMILIES_USED)},
   which the model (almost) never obeys (0 of 28 answers in a pilot of 7 prompts), so
   their prompts would cost sampling time and give no pairs.
2. **Answers**: {args.samples} per prompt, sampled from SmolLM2-135M-Instruct in {args.dtype}
   on CPU, with its own chat template (its default system turn included), temperature
   {TEMPERATURE}, top-p {TOP_P}, at most {MAX_NEW_TOKENS} new tokens, seeded per batch
   of {PROMPTS_PER_BATCH} prompts (`slimepo.generation.batched.generate`). {finished:.1f}% of
   the answers ended with the end-of-turn token; the rest were cut at the limit.
3. **Labels**: `slimepo.constraints.check` on every answer. All answers, with labels,
   are in `{SAMPLES_FILE}` (`prompt_id`, `sample`, `text`, `passed`, `detail`,
   `tokens`, `finished`); rerunning the command with it present rebuilds the splits
   without the model.
4. **Pairs**: per prompt, one passing answer that ended on its own (`chosen`) and one
   failing answer (`rejected`), each drawn with the seed among the distinct texts.
   Prompts without both are dropped: {n_pairs} of {len(specs)} prompts give a pair.
   {cut_rejected} of the {n_pairs} rejected answers were cut at the token limit (they end
   mid-answer); no chosen one was.
5. **Splits**: the family `{args.heldout_family}` is held out entirely into
   `{HELDOUT_SPLIT}`. The other pairs are split by request (80/10/10 of the requests,
   shuffled with the seed), so no request, and hence no prompt, is in two splits.

Sampling is deterministic for a seed on a given machine and library versions; across
CPUs or versions floating-point differences can change the sampled texts.

**Size.** Sampling is the slow part (on a shared 2-core CPU, a few seconds per prompt),
so the shipped set was sampled with `--max-minutes 40` and holds the prompts sampled in
that time; the command above rebuilds it from `{SAMPLES_FILE}`. The prompt list does not
depend on its length, so a larger `--prompts` keeps these prompts and their answers and
samples only the new ones.

## Fields

`train.jsonl.gz`, `validation.jsonl.gz`, `test.jsonl.gz`, `{HELDOUT_SPLIT}.jsonl.gz`:
one JSON object per line, loadable with `slimepo train --dataset data/onpolicy/train.jsonl.gz
--eval-dataset data/onpolicy/validation.jsonl.gz --eval-split train`:

- `id`: `train-00000`, ...
- `prompt`: the user turn (request + constraint instruction)
- `chosen`, `rejected`: the model's passing and failing answers
- `family`: the constraint family
- `constraint`: `{{"family": ..., "params": {{...}}}}`, loadable with
  `slimepo.constraints.Constraint.from_dict`

## Base model pass rate and pairs per family

Pass rate: the share of all sampled answers that obey the constraint.

| family | prompts | pass rate % | {split_names} | pairs |
|---|---|---|{"---|" * len(splits)}---|
{chr(10).join(family_lines)}

Overall pass rate: {overall:.1f}% of {len(answers)} answers.

## Counts and lengths

Words are counted with `slimepo.constraints.count_words`.

| split | pairs | families | mean prompt words | mean chosen words | mean rejected words |
|---|---|---|---|---|---|
{chr(10).join(split_lines)}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts, sampling, pairs and splits")
    parser.add_argument("--prompts", type=int, default=1040, help="number of prompts (default 1040)")
    parser.add_argument("--samples", type=int, default=4, help="answers sampled per prompt (default 4)")
    parser.add_argument("--heldout-family", default=DEFAULT_HELDOUT_FAMILY, choices=FAMILIES_USED,
                        help=f"family held out into {HELDOUT_SPLIT} (default {DEFAULT_HELDOUT_FAMILY})")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="dtype of the sampling model (default bfloat16: ~1.5x faster on CPUs "
                        "with AMX; use float32 on CPUs without bf16 support)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop sampling after this long and build the data from the prompts "
                        "sampled so far (a rerun continues)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default data/onpolicy)")
    parser.add_argument("--measure", type=int, default=0, metavar="N",
                        help="only time sampling N prompts (in a temporary folder) and print the speed")
    args = parser.parse_args(argv)
    if args.measure:
        measure(args)
        return
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else float("inf")
    specs = build_prompts(args.seed, args.prompts)
    sample_answers(specs, args.out, n_samples=args.samples, seed=args.seed, dtype=args.dtype, deadline=deadline)
    fold_samples(args.out)
    samples = read_samples(args.out)
    # Blocks are sampled in order, so the sampled prompts are a prefix of ``specs``.
    sampled = [spec for spec in specs if len(samples.get(spec.id, ())) >= args.samples]
    args.prompts = len(sampled)
    splits = split_rows(make_pairs(sampled, samples, args.seed), args.seed, args.heldout_family)
    validate(splits, args.heldout_family)
    for name, rows in splits.items():
        _write_gz(args.out / f"{name}.jsonl.gz", (json.dumps(row, ensure_ascii=False) for row in rows))
    (args.out / "README.md").write_text(data_card(sampled, samples, splits, args), encoding="utf-8", newline="\n")
    print(f"wrote {', '.join(f'{len(rows)} {name}' for name, rows in splits.items())} pairs "
          f"from {len(sampled)} prompts to {args.out}")


def measure(args: argparse.Namespace) -> None:
    """Time sampling ``args.measure`` prompts; print the speed and what a full run would take."""
    import tempfile

    specs = build_prompts(args.seed, args.measure)
    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        sample_answers(specs, Path(folder), n_samples=args.samples, seed=args.seed, dtype=args.dtype)
        seconds = time.monotonic() - started
        answers = [s for group in read_samples(Path(folder)).values() for s in group]
    per_prompt = seconds / args.measure
    print(f"{args.measure} prompts x {args.samples} answers ({args.dtype}) in {seconds:.0f} s: "
          f"{per_prompt:.2f} s/prompt, {len(answers) / seconds:.2f} answers/s; "
          f"pass rate {mean(s['passed'] for s in answers):.2f}, "
          f"finished {mean(s['finished'] for s in answers):.2f}; "
          f"{args.prompts} prompts would take about {args.prompts * per_prompt / 60:.0f} min")


if __name__ == "__main__":
    main()
