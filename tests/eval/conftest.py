import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from slimepo.eval.mtbench import answer_questions, load_questions, write_answers

from .fastchat_oracle import run_fastchat_oracle


@pytest.fixture(scope="session")
def fastchat(tmp_path_factory):
    """Our answers to all of MT-Bench and what FastChat's own code makes of them.

    ``questions``, ``answers`` (our records of model "m"), ``judgments`` (judge replies)
    and ``oracle`` (:func:`run_fastchat_oracle` on them). One child process serves every
    test that compares with FastChat.
    """
    work = tmp_path_factory.mktemp("fastchat")
    questions = load_questions()
    # braces in answers must reach the judge verbatim, not be read as format fields
    answers = answer_questions(questions, lambda batch: [f"ans {{x}} {len(c)}" for c in batch], "m")
    write_answers(answers, work / "answers" / "m.jsonl")
    judgments = [
        "Rating: [[7]]",
        "[[8.5]] then [[2]]",
        "score [9] here",
        "[[10]]",
        "no rating",
        "[[x]]",
    ]
    oracle = run_fastchat_oracle(work, work / "answers", judgments)
    return SimpleNamespace(questions=questions, answers=answers, judgments=judgments, oracle=oracle)


SERVER = Path(__file__).with_name("fake_judge_server.py")


@pytest.fixture(scope="module")
def judge_url():
    """Base URL of the fake judge, a separate process on a free 127.0.0.1 port."""
    server = subprocess.Popen(
        [sys.executable, str(SERVER)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        port = int(server.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(timeout=10)
