"""One round of a loop again, from its archived samples, with another ``--cut-answers``: does the loss still
take the model's end of turn away when no chosen answer was cut?

For round R of LOOP (its working folder in runs/study-loop/, merged weights included): the round's own
samples (no sampling: the same answers, paired again), the round's training options, and the loop's
held-out evaluation of the trained policy (test pairs with their end of turn, greedy answers to their
prompts). ``keep`` is the loop's own setting: its rerun must give the loop's own numbers (checked: the
setup is the loop's).

    python scripts/cut_answers_check.py slime-seed1 2 keep reject drop keep:simpo:1e-3 keep:dpo:3e-4

``keep:simpo:1e-3``: another loss and learning rate on the same pairs from the same start.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from slimepo.config import TrainConfig, config_from_mapping
from slimepo.eval.run import evaluate
from slimepo.iterate.config import IterateConfig
from slimepo.pairs.config import PairsConfig
from slimepo.pairs.run import make_pairs
from slimepo.train import train

sys.path.insert(0, str(Path(__file__).parent))
from loop_study import SAME_SCORES, same_evaluation  # noqa: E402

RUNS = Path("runs/study-loop")
OUT = Path("runs/cut-answers-check")


def check(loop: str, index: int, cut_answers: str, loss: str | None = None, rate: float | None = None) -> dict:
    source = RUNS / loop / f"round-{index}"
    out = OUT / (f"{loop}-round{index}-{cut_answers}" + (f"-{loss}-{rate:g}" if loss else ""))
    if out.exists():
        shutil.rmtree(out)
    (out / "pairs").mkdir(parents=True)
    shutil.copyfile(source / "pairs" / "samples.jsonl", out / "pairs" / "samples.jsonl")
    options = json.loads((source / "pairs" / "provenance.json").read_text())["config"]
    started = time.perf_counter()
    pairs = make_pairs(PairsConfig(**{**options, "out": str(out / "pairs"), "cut_answers": cut_answers}))
    if pairs.counts["prompts_sampled_this_run"]:
        raise RuntimeError(f"{out}: the round's samples were not all reused")
    given = yaml.safe_load((source / "train" / "config.yaml").read_text())
    if loss:  # another loss on the same pairs from the same start (a reference-based loss: the start)
        given = {**given, "loss": loss, "learning_rate": rate}
    config = config_from_mapping({**given, "dataset": str(out / "pairs" / "pairs.jsonl"),
                                  "output_dir": str(out / "train")}, source="round config", cls=TrainConfig)
    train(config)
    loop_config = config_from_mapping(yaml.safe_load((RUNS / loop / "iterate.yaml").read_text()), cls=IterateConfig)
    eval_config = loop_config.eval_config(out / "eval", str(out / "train" / "merged"))
    result = evaluate(eval_config, out_dir=out / "eval")
    if cut_answers == "keep" and not loss:  # the loop's own round, made again: the same weights and numbers
        archived = json.loads((source / "eval" / "eval.json").read_text())
        same_evaluation(archived, result, str(out), settings=("weights_sha256", "base", "dataset"),
                        scores=(*SAME_SCORES, ("generation", "ended_rate"), ("constraint_pass_rate",)))
    rows = [json.loads(line) for line in (out / "pairs" / "pairs.jsonl").read_text().splitlines()]
    return {"loop": loop, "round": index, "cut_answers": cut_answers, "loss": config.loss,
            "learning_rate": config.learning_rate, "pairs": len(rows),
            "chosen_ended": sum(r["chosen_ended"] for r in rows), "rejected_ended": sum(r["rejected_ended"] for r in rows),
            "p_end_chosen": result["end_of_turn"]["chosen"]["p_mean"],
            "p_end_rejected": result["end_of_turn"]["rejected"]["p_mean"],
            "held_out_ended": result["generation"]["ended_rate"], "chosen_drift": result["drift"]["chosen_drift_mean"],
            "constraint_pass_rate": result["constraint_pass_rate"], "seconds": round(time.perf_counter() - started)}


def main(argv: list[str]) -> int:
    loop, index, *settings = argv
    for setting in settings:  # cut_answers, or cut_answers:loss:learning_rate
        cut_answers, *other = setting.split(":")
        loss, rate = (other[0], float(other[1])) if other else (None, None)
        print(json.dumps(check(loop, int(index), cut_answers, loss, rate)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
