"""The shipped on-policy preference set (data/onpolicy/) and its generator
(scripts/make_onpolicy_data.py), without running the model."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from slimepo.constraints import Constraint, check, instruction

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "onpolicy"
SPLITS = ("train", "validation", "test", "test_heldout_family")
FIELDS = {"id", "prompt", "chosen", "rejected", "family", "constraint"}


@pytest.fixture(scope="module")
def generator(load_script):
    return load_script("make_onpolicy_data")


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {name: read_jsonl_gz(DATA / f"{name}.jsonl.gz") for name in SPLITS}


# --- the shipped data -------------------------------------------------------------------


def test_every_split_is_there_with_rows_of_the_documented_fields(splits):
    for name, rows in splits.items():
        assert rows, name
        for row in rows:
            assert set(row) == FIELDS, row["id"]
            assert row["id"].startswith(f"{name}-")


def test_every_chosen_passes_and_every_rejected_fails_its_constraint(splits):
    for rows in splits.values():
        for row in rows:
            constraint = Constraint.from_dict(row["constraint"])
            assert constraint.family == row["family"], row["id"]
            assert check(constraint, row["chosen"]).passed, row["id"]
            assert not check(constraint, row["rejected"]).passed, row["id"]


def test_splits_share_no_prompt(splits):
    seen: dict[str, str] = {}
    for name, rows in splits.items():
        for row in rows:
            assert seen.setdefault(row["prompt"], name) == name, f"{row['prompt']!r} in {seen[row['prompt']]} and {name}"


def test_the_held_out_family_appears_only_in_its_split(splits, generator):
    heldout = {row["family"] for row in splits["test_heldout_family"]}
    assert heldout == {generator.DEFAULT_HELDOUT_FAMILY}
    for name in ("train", "validation", "test"):
        assert heldout.isdisjoint(row["family"] for row in splits[name]), name


def test_the_data_covers_at_least_eight_constraint_families(splits):
    assert len({row["family"] for rows in splits.values() for row in rows}) >= 8


def test_data_card_counts_match_the_files(splits):
    card = (DATA / "README.md").read_text(encoding="utf-8")
    for name, rows in splits.items():
        assert f"| {name} | {len(rows)} |" in card, name


def test_shipped_splits_are_rebuilt_from_the_shipped_samples(generator, splits, tmp_path):
    """Rerunning the data card's command with samples.jsonl.gz present needs no model and
    gives the same files."""
    card = (DATA / "README.md").read_text(encoding="utf-8")
    command = next(line for line in card.splitlines() if line.startswith("python scripts/make_onpolicy_data.py"))
    argv = command.split()[2:]
    (tmp_path / generator.SAMPLES_FILE).write_bytes((DATA / generator.SAMPLES_FILE).read_bytes())
    generator.main([*argv, "--out", str(tmp_path)])
    for name in SPLITS:
        assert read_jsonl_gz(tmp_path / f"{name}.jsonl.gz") == splits[name], name


# --- the generator, without the model ---------------------------------------------------


def test_prompts_are_deterministic_for_a_seed_and_change_with_it(generator):
    first, again = generator.build_prompts(0, 120), generator.build_prompts(0, 120)
    assert first == again
    assert [s.text for s in generator.build_prompts(1, 120)] != [s.text for s in first]


def test_more_prompts_extend_the_same_sequence(generator):
    """A larger --prompts resumes a run: the first prompts do not change."""
    assert generator.build_prompts(0, 300)[:100] == generator.build_prompts(0, 100)


def test_prompts_are_distinct_and_cover_the_families_in_turn(generator):
    specs = generator.build_prompts(0, 180)
    assert len({s.text for s in specs}) == len(specs)
    families = generator.FAMILIES_USED
    assert len(families) >= 8
    assert [s.constraint.family for s in specs] == [families[i % len(families)] for i in range(len(specs))]
    for spec in specs:
        assert spec.request in spec.text
        assert spec.text.endswith(instruction(spec.constraint))


def sample(prompt_id: str, index: int, text: str, passed: bool, finished: bool = True) -> dict:
    return {"prompt_id": prompt_id, "sample": index, "text": text, "passed": passed, "finished": finished}


def test_pairs_need_a_finished_passing_answer_and_a_failing_one(generator):
    specs = generator.build_prompts(0, 3)
    samples = {
        specs[0].id: [sample(specs[0].id, 0, "good", True), sample(specs[0].id, 1, "bad", False)],
        specs[1].id: [sample(specs[1].id, 0, "good but cut", True, finished=False),
                      sample(specs[1].id, 1, "bad", False)],
        specs[2].id: [sample(specs[2].id, 0, "good", True), sample(specs[2].id, 1, "also good", True)],
    }
    pairs = generator.make_pairs(specs, samples, seed=0)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [(specs[0].text, "good", "bad")]


def test_split_is_by_request_and_holds_out_one_family(generator):
    rows = [
        {"prompt_id": f"p{i}", "request": f"request {i % 20}", "prompt": f"request {i % 20} #{i}",
         "chosen": "c", "rejected": "r", "family": ("start_word", "max_words", "no_commas")[i % 3],
         "constraint": {"family": "x"}}
        for i in range(120)
    ]
    splits = generator.split_rows(rows, seed=0, heldout_family="start_word")
    assert {row["family"] for row in splits["test_heldout_family"]} == {"start_word"}
    requests = {name: {row["prompt"].split(" #")[0] for row in split} for name, split in splits.items()}
    for a in ("train", "validation", "test"):
        for b in ("train", "validation", "test"):
            assert a == b or requests[a].isdisjoint(requests[b])
    assert sum(len(split) for split in splits.values()) == len(rows)


def test_reading_samples_skips_a_cut_off_line_and_repeats(generator, tmp_path):
    lines = [json.dumps(sample("p00000", 0, "a", True)), json.dumps(sample("p00000", 1, "b", False)),
             json.dumps(sample("p00000", 0, "a again", True)), '{"prompt_id": "p00001", "sam']
    (tmp_path / generator.PARTIAL_FILE).write_text("\n".join(lines), encoding="utf-8")
    found = generator.read_samples(tmp_path)
    assert [s["text"] for s in found["p00000"]] == ["a", "b"]
    assert "p00001" not in found
    generator.fold_samples(tmp_path)
    assert not (tmp_path / generator.PARTIAL_FILE).exists()
    assert generator.read_samples(tmp_path) == found
