"""Composed training prompts: IFEval's own instruction wording and kwargs, checkable by the
official checkers, reproducible, without conflicts, and never a benchmark's request."""

import json

import pytest

from slimepo.eval.ifeval import load_prompts
from slimepo.ifeval_checkers import build_checker, registry, seeded_random
from slimepo.pairs.compose import (
    base_requests,
    benchmark_requests,
    compose_prompts,
    conflicts,
    make_prompts,
    normalize,
)
from slimepo.pairs.config import MakePromptsConfig
from slimepo.pairs.prompts import read_prompts


@pytest.fixture(scope="module")
def demo_prompts(tmp_path_factory):
    out = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    record = make_prompts(MakePromptsConfig(out=str(out), per_request=3))
    return [json.loads(line) for line in out.read_text().splitlines()], record


def test_every_composed_instruction_is_built_by_its_official_checker_from_the_recorded_kwargs(demo_prompts):
    rows, _ = demo_prompts
    assert len(rows) > 300 and len({row["key"] for row in rows}) == len(rows)
    for row in rows:
        assert 1 <= len(row["instruction_id_list"]) <= 3 and len(row["kwargs"]) == len(row["instruction_id_list"])
        assert row["prompt"].startswith(row["request"] + " ")
        for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
            with seeded_random():
                checker = build_checker(instruction_id, kwargs, row["prompt"])
                description = checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
            assert description in row["prompt"], (instruction_id, kwargs)


def test_composed_prompts_hold_no_conflicting_instructions_and_no_impossible_draw(demo_prompts):
    rows, record = demo_prompts
    table = conflicts()
    for row in rows:
        ids = row["instruction_id_list"]
        assert len(set(ids)) == len(ids)
        assert not any(b in table[a] for i, a in enumerate(ids) for b in ids[i + 1 :]), ids
        for instruction_id, kwargs in zip(ids, row["kwargs"]):
            if instruction_id == "length_constraints:nth_paragraph_first_word":
                assert kwargs["nth_paragraph"] <= kwargs["num_paragraphs"]
            if instruction_id == "combination:repeat_prompt":
                assert kwargs == {"prompt_to_repeat": row["request"]}
    used = set(record["instructions"])
    assert used == set(registry("ifeval")), "with 3 prompts per request every IFEval type is drawn"


def test_the_same_seed_composes_the_same_prompts_and_another_seed_others():
    requests = ["How do I water a cactus?", "What should I pack for a hike?"]
    first = compose_prompts(requests, seed=1, per_request=2)
    assert compose_prompts(requests, seed=1, per_request=2) == first
    assert compose_prompts(requests, seed=2, per_request=2) != first
    assert compose_prompts(requests[:1], seed=1, per_request=2) == first[:2], "a request's prompts do not depend on others"
    only = compose_prompts(requests, seed=1, instruction_types=["punctuation:no_comma", "detectable_format:title"],
                           min_instructions=2, max_instructions=2)
    assert all(sorted(r["instruction_id_list"]) == ["detectable_format:title", "punctuation:no_comma"] for r in only)


def test_no_composed_prompts_base_request_appears_in_ifeval_or_ifbench(demo_prompts):
    rows, record = demo_prompts
    benchmark = [normalize(r["prompt"]) for name in ("ifeval", "ifbench") for r in load_prompts(benchmark=name)]
    assert len(benchmark) == 541 + 300
    requests = {normalize(row["request"]) for row in rows}
    assert requests and all(request for request in requests)
    assert not [r for r in requests if any(r in prompt for prompt in benchmark)]
    assert record["requests"]["in_a_benchmark"] == []


def test_a_request_found_in_a_benchmark_prompt_is_left_out_and_counted(tmp_path):
    ifeval_request = load_prompts(benchmark="ifeval")[0]["prompt"].split(".")[0]
    path = tmp_path / "requests.jsonl"
    rows = [{"prompt": ifeval_request.upper() + " !"}, {"prompt": "How do I fold a paper crane?"},
            {"prompt": "How do I fold a  paper crane"}, {"prompt": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, bad = read_prompts(path)
    requests, report = base_requests(records, benchmark_requests())
    assert requests == ["How do I fold a paper crane?"]
    assert report == {"read": 3, "duplicates": 1, "in_a_benchmark": [ifeval_request.upper() + " !"]}
    assert [(b.row.rsplit(":", 1)[1], b.reason) for b in bad] == [("4", "empty_text")]


def test_demo_requests_lose_their_constraint_sentence(demo_prompts):
    rows, record = demo_prompts
    assert record["requests"]["read"] == 403 and record["requests"]["bad_rows"] == []
    assert "Hi! How do I stop waking up tired?" in {row["request"] for row in rows}
    assert not any("Answer in at most" in row["request"] for row in rows)
