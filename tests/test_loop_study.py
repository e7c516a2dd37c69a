"""scripts/loop_study.py: the loops' plan and options, round 0 shared, the archive, and the report section."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def loop_study(load_script):
    load_script("study")
    return load_script("loop_study")


def test_the_plan_runs_one_seed_of_every_loss_before_the_next_seed_then_the_ablations_then_the_control(loop_study):
    names = [loop.name for loop in loop_study.plan()]
    assert names[:4] == ["slime-seed0", "dpo-seed0", "simpo-seed0", "slime-seed1"]
    assert len(names) == 12 and names[9:] == ["slime-no-anchor-seed0", "slime-no-stabilizer-seed0", "dpo-lr1e-3-seed0"]
    ablation = loop_study.loop_config(loop_study.Loop("slime-no-anchor", 0), Path("runs"), Path("p.jsonl"))
    _, train, _ = ablation.stage_configs(1, "default")
    assert (train.loss, train.learning_rate) == ("slime-no-anchor", 1e-3)
    control = loop_study.loop_config(loop_study.Loop("dpo-lr1e-3", 0), Path("runs"), Path("p.jsonl"))
    _, train, _ = control.stage_configs(1, "default")
    assert (train.loss, train.learning_rate, control.reference) == ("dpo", 1e-3, "previous")
    assert control.out == str(Path("runs") / "dpo-lr1e-3-seed0")


def test_only_loss_rate_and_seed_differ_between_loops(loop_study, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    configs = {loop.name: loop_study.loop_config(loop, tmp_path / "runs", prompts) for loop in loop_study.plan()}
    slime, dpo = configs["slime-seed1"], configs["dpo-seed2"]
    assert (slime.train["loss"], slime.train["learning_rate"], slime.train["seed"]) == ("slime", 1e-3, 1)
    assert (dpo.train["loss"], dpo.train["learning_rate"], dpo.train["seed"]) == ("dpo", 3e-4, 2)
    assert (slime.pairs["seed"], dpo.pairs["seed"]) == (10, 20)  # round r samples under seed + r - 1: no overlap
    assert slime.eval == dpo.eval and slime.benchmarks == dpo.benchmarks == ["ifeval", "ifbench"]
    strip = ("loss", "learning_rate", "seed")
    assert {k: v for k, v in slime.train.items() if k not in strip} == {k: v for k, v in dpo.train.items()
                                                                         if k not in strip}
    assert slime.out != dpo.out and slime.pairs["prompts"] == dpo.pairs["prompts"] == str(prompts)
    # round 1 of a loop is a valid slimepo pairs / train / eval run
    pairs, train, evaluation = slime.stage_configs(1, "default")
    assert (pairs.seed, train.loss, train.learning_rate, evaluation.dtype) == (10, "slime", 1e-3, "bfloat16")


def test_a_new_loop_gets_round_zero_of_a_finished_one_and_iterate_accepts_the_folder(loop_study, tmp_path):
    from slimepo.iterate.run import check_loop_dir

    donor = tmp_path / "runs" / "slime-seed0"
    (donor / "round-0" / "eval").mkdir(parents=True)
    (donor / "round-0" / "round.json").write_text('{"round": 0}')
    (donor / "round-0" / "eval" / "eval.json").write_text("{}")
    config = loop_study.loop_config(loop_study.Loop("dpo", 0), tmp_path / "runs", tmp_path / "p.jsonl")
    loop_study.seed_round_zero(config, donor)
    out = Path(config.out)
    assert (out / "round-0" / "round.json").read_text() == '{"round": 0}'
    assert (out / "round-0" / "eval" / "eval.json").is_file()
    check_loop_dir(config, out)  # its iterate.yaml is the loop's own: no refusal
    assert yaml.safe_load((out / "iterate.yaml").read_text())["train"]["loss"] == "dpo"
    # an existing folder is never touched, and a donor without a finished round 0 gives nothing
    (out / "round-0" / "round.json").write_text("kept")
    loop_study.seed_round_zero(config, donor)
    assert (out / "round-0" / "round.json").read_text() == "kept"
    other = loop_study.loop_config(loop_study.Loop("simpo", 0), tmp_path / "runs", tmp_path / "p.jsonl")
    loop_study.seed_round_zero(other, tmp_path / "nowhere")
    assert not Path(other.out).exists()


def test_round_zero_comes_from_an_archived_loop_unpacked_when_runs_has_none(loop_study, tmp_path):
    import gzip

    results, runs = tmp_path / "results", tmp_path / "runs"
    assert loop_study.round_zero_donor(results, runs, loop_study.Loop("dpo", 2)) is None
    kept = results / "loops" / "simpo-seed1" / "round-0"
    (kept / "eval-ifeval" / "ifeval").mkdir(parents=True)
    (kept / "round.json").write_text('{"round": 0}')
    (kept / "eval-ifeval" / "eval.json").write_text('{"x": 1}')
    with gzip.open(kept / "eval-ifeval" / "ifeval" / "answers.jsonl.gz", "wb") as out:
        out.write(b'{"prompt": "a"}\n')
    (results / "loops" / "simpo-seed0").mkdir(parents=True)  # no finished round 0: never the donor
    loop = loop_study.Loop("dpo", 2)
    donor = loop_study.round_zero_donor(results, runs, loop)
    assert donor == results / "loops" / "simpo-seed1"
    config = loop_study.loop_config(loop, runs, tmp_path / "p.jsonl")
    loop_study.seed_round_zero(config, donor)
    out = Path(config.out) / "round-0"
    assert (out / "eval-ifeval" / "ifeval" / "answers.jsonl").read_bytes() == b'{"prompt": "a"}\n'
    assert not list(out.rglob("*.gz")) and (out / "eval-ifeval" / "eval.json").read_text() == '{"x": 1}'
    assert not Path(config.out).with_name(Path(config.out).name + ".seeding").exists()
    # a loop folder in runs/ is preferred to the archive
    (runs / "slime-seed0" / "round-0").mkdir(parents=True)
    (runs / "slime-seed0" / "round-0" / "round.json").write_text("{}")
    assert loop_study.round_zero_donor(results, runs, loop) == runs / "slime-seed0"


def test_run_only_runs_the_loops_named_and_refuses_an_unknown_name(loop_study, tmp_path, monkeypatch):
    import slimepo.iterate

    ran = []

    def fake_iterate(config):
        ran.append(Path(config.out).name)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "iterate.yaml").write_text(config.to_yaml())

    monkeypatch.setattr(slimepo.iterate, "iterate", fake_iterate)
    monkeypatch.setattr(loop_study, "make_prompts", lambda results: tmp_path / "p.jsonl")
    with pytest.raises(SystemExit, match="--only: no loop named simpo-seed9 in the plan"):
        loop_study.run(tmp_path / "results", tmp_path / "runs", None, None, only=["simpo-seed9"])
    assert ran == []
    done = loop_study.run(tmp_path / "results", tmp_path / "runs", None, None, only=["simpo-seed2", "dpo-seed2"])
    assert done == ran == ["dpo-seed2", "simpo-seed2"]  # the plan's order
    assert (tmp_path / "results" / "loops" / "simpo-seed2" / "loop.json").is_file()
    assert loop_study.run(tmp_path / "results", tmp_path / "runs", None, None, only=["simpo-seed2"]) == []  # archived


def test_the_cost_counts_only_rounds_run_whole(loop_study, tmp_path):
    fake_loop(loop_study, tmp_path, "slime", 0, [0.0] * 4, [[0, 1]] * 4)  # 3 rounds of 3 minutes
    path = loop_study.archived(tmp_path, loop_study.Loop("slime", 0)) / "round-1" / "round.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "seconds": {"pairs": 5.0, "train": 60.0, "eval": 60.0},
                                "resumed_stages": ["pairs"]}))  # 2 min 5 s, but its pairs were not made here
    lines = [line for line in loop_study.section(tmp_path, ending=None) if line.startswith("- Cost:")]
    assert lines == ["- Cost: 2 rounds run whole in one attempt, median 3 min each (pairs + training + evaluation; "
                     "AMD EPYC, 2 cores)."]


def test_round_one_takes_the_samples_of_a_finished_loop_of_the_same_seed_only(loop_study, tmp_path):
    import gzip

    results, runs = tmp_path / "results", tmp_path / "runs"
    for loss, seed in (("slime", 1), ("slime", 2)):  # seed 1's samples must never reach a seed-2 loop
        kept = results / "loops" / f"{loss}-seed{seed}" / "round-1"
        (kept / "pairs").mkdir(parents=True)
        (kept / "round.json").write_text("{}")
        with gzip.open(kept / "pairs" / "samples.jsonl.gz", "wb") as out:
            out.write(f'{{"key": "a", "sample": 0, "seed": {seed}}}\n'.encode())
    (results / "loops" / "dpo-seed0" / "round-1" / "pairs").mkdir(parents=True)  # unfinished: not a donor
    loop = loop_study.Loop("dpo", 2)
    assert loop_study.round_one_donor(results, runs, loop) == results / "loops" / "slime-seed2"
    assert loop_study.round_one_donor(results, runs, loop_study.Loop("dpo", 0)) is None
    config = loop_study.loop_config(loop, runs, tmp_path / "p.jsonl")
    loop_study.seed_round_one(config, loop_study.round_one_donor(results, runs, loop))
    assert not Path(config.out).exists()  # no loop folder (no iterate.yaml) yet: nothing written
    loop_study.seed_round_zero(config, None)
    Path(config.out).mkdir(parents=True)
    (Path(config.out) / "iterate.yaml").write_text(config.to_yaml())
    (Path(config.out) / "round-1.seeding" / "pairs").mkdir(parents=True)  # a copy killed half way
    (Path(config.out) / "round-1.seeding" / "pairs" / "samples.jsonl").write_text("torn")
    loop_study.seed_round_one(config, loop_study.round_one_donor(results, runs, loop))
    samples = Path(config.out) / "round-1" / "pairs" / "samples.jsonl"
    assert not (Path(config.out) / "round-1.seeding").exists()
    assert samples.read_text() == '{"key": "a", "sample": 0, "seed": 2}\n'
    assert sorted(p.name for p in samples.parent.iterdir()) == ["samples.jsonl"]
    # a round 1 already begun is never touched
    samples.write_text("mine")
    loop_study.seed_round_one(config, loop_study.round_one_donor(results, runs, loop))
    assert samples.read_text() == "mine"


def test_the_archive_keeps_records_and_answers_gzipped_and_no_weights(loop_study, tmp_path):
    work = tmp_path / "work"
    files = {
        "iterate.yaml": "x", "round-1/round.json": "{}", "round-1/pairs/pairs.jsonl": '{"a": 1}\n',
        "round-1/eval-ifeval/ifeval/answers.jsonl": '{"b": 2}\n', "round-1/train/merged/model.safetensors": "w",
        "round-1/train/adapter_model.safetensors": "w", "round-1/train/checkpoint-5/optimizer.pt": "o",
        "round-1/train/metrics.jsonl": "{}\n",
    }
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    target = tmp_path / "kept"
    loop_study.archive(work, target, {"loss": "slime"})
    kept = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert kept == ["iterate.yaml", "loop.json", "round-1/eval-ifeval/ifeval/answers.jsonl.gz",
                    "round-1/pairs/pairs.jsonl.gz", "round-1/round.json", "round-1/train/metrics.jsonl.gz"]
    with gzip.open(target / "round-1/pairs/pairs.jsonl.gz", "rt") as f:
        assert f.read() == '{"a": 1}\n'
    assert json.loads((target / "loop.json").read_text()) == {"loss": "slime"}


def fake_loop(loop_study, results: Path, loss: str, seed: int, drift: list[float], passes: list[list[int]],
              keys: list[str] | None = None, sha256: str | None = None) -> None:
    """An archived loop: round r's chosen drift ``drift[r]`` and IFEval strict passes ``passes[r]`` (one per prompt,
    keyed ``keys`` or p0, p1, ...; ``sha256``: the prompts file its evaluations record)."""
    folder = loop_study.archived(results, loop_study.Loop(loss, seed))
    (folder).mkdir(parents=True)
    (folder / "iterate.yaml").write_text(yaml.safe_dump({"train": {"loss": loss}}))
    for index in range(loop_study.ROUNDS + 1):
        passed = passes[index]
        record = {"round": index, "seconds": {"pairs": 60.0, "train": 60.0, "eval": 60.0} if index else {},
                  "eval": {"drift": {"chosen_drift_mean": drift[index]},
                           "ifeval": {"prompt_level_strict": sum(passed) / len(passed),
                                      "generation": {"ended_rate": 0.75}}}}
        round_dir = folder / f"round-{index}"
        (round_dir / "eval-ifeval").mkdir(parents=True)
        (round_dir / "round.json").write_text(json.dumps(record))
        per_prompt = {(keys[i] if keys else f"p{i}"): {"strict": [bool(p)], "loose": [bool(p)]} for i, p in enumerate(passed)}
        result = {"per_prompt": per_prompt, "provenance": {"questions_sha256": sha256}}
        (round_dir / "eval-ifeval" / "eval.json").write_text(json.dumps({"ifeval": result}))
    (folder / "loop.json").write_text(json.dumps({"machine": {"cpu": "AMD EPYC"}}))


def test_the_section_reads_the_archived_loops(loop_study, tmp_path, monkeypatch):
    initial = [0, 0, 1, 0]
    fake_loop(loop_study, tmp_path, "slime", 0, [0.0, -0.1, -0.2, -0.3], [initial, [1, 0, 1, 0], [1, 1, 1, 0],
                                                                          [1, 1, 1, 1]])
    fake_loop(loop_study, tmp_path, "slime", 1, [0.0, -0.3, -0.4, -0.5], [initial, [1, 0, 1, 0], [1, 1, 1, 0],
                                                                          [1, 1, 1, 0]])
    fake_loop(loop_study, tmp_path, "dpo", 0, [0.0, -0.2, -0.4, -0.8], [initial, [0, 0, 1, 0], [0, 0, 1, 0],
                                                                        [0, 0, 1, 1]])
    text = "\n".join(loop_study.section(tmp_path))
    assert "3 of 12 loops done (slime-seed0, dpo-seed0, slime-seed1)" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    headers = rows["loop, round"]
    drift = headers.index("chosen drift vs initial (nats/token)")
    ifeval = headers.index("IFEval prompt strict")
    cut = headers.index("IFEval answers cut")
    # by hand: SLIME round 1 drift −0.1 and −0.3: mean −0.200, sample std 0.141
    assert rows["SLIME, round 1"][drift] == "-0.200 ± 0.141"
    assert rows["SLIME, round 3"][ifeval] == "0.875 ± 0.177"  # 1.0 and 0.75
    assert rows["DPO, round 3"][ifeval] == "0.500" and rows["DPO, round 3"][0] == "1"
    assert rows["initial model (round 0)"][ifeval] == "0.250" and rows["SLIME, round 2"][cut] == "0.25 ± 0.00"
    assert "SimPO, round 1" not in rows
    # paired differences, only where both sides have loops (no SimPO, no ablation column):
    # round 1, SLIME − DPO = 0.5 − 0.25; DPO − initial = 0.25 − 0.25
    assert rows["round"] == ["SLIME − DPO", "SLIME − initial", "DPO − initial"]
    assert rows["round 1"][0].startswith("+0.250 [")
    assert rows["round 1"][2].startswith("+0.000 [")
    assert "m = 9 comparisons" in text  # 3 comparisons with both sides (no SimPO loop), 3 rounds: IFEval only
    assert "DPO has one seed so far: there the interval resamples the prompts only" in text  # SLIME has two
    assert ("Not run yet: simpo-seed0, dpo-seed1, simpo-seed1, slime-seed2, dpo-seed2, simpo-seed2, "
            "slime-no-anchor-seed0, slime-no-stabilizer-seed0, dpo-lr1e-3-seed0.") in text
    # with every loop of the plan done the section ends on its setup and cost, with no empty "not run" line
    monkeypatch.setattr(loop_study, "pending", lambda results: [])
    done = loop_study.section(tmp_path)
    assert not any("Not run yet" in line for line in done) and done[-1] == ""


def test_an_ablation_loop_gets_its_rows_and_its_comparison_with_slime(loop_study, tmp_path):
    initial = [0, 0, 1, 0]
    fake_loop(loop_study, tmp_path, "slime", 0, [0.0, -0.1, -0.2, -0.3], [initial, [1, 0, 1, 0], [1, 1, 1, 0],
                                                                          [1, 1, 1, 1]])
    fake_loop(loop_study, tmp_path, "slime-no-anchor", 0, [0.0, -0.4, -0.6, -0.9],
              [initial, [0, 0, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0]])
    text = "\n".join(loop_study.section(tmp_path))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    drift = rows["loop, round"].index("chosen drift vs initial (nats/token)")
    assert rows["SLIME without anchor, round 3"][drift] == "-0.900"
    assert rows["round"] == ["SLIME − initial", "SLIME − SLIME without anchor"]
    assert "SLIME, SLIME without anchor have one seed so far" in text
    assert rows["round 2"][1].startswith("+0.250 [")  # 0.75 − 0.5
    assert "SLIME without anchor 0.001, SLIME without stabilizer 0.001, seed 0" in text



def test_ifeval_on_the_prompts_with_no_instruction_on_the_answers_end_has_its_column_and_its_table(loop_study, tmp_path):
    initial = [0, 0, 1, 0]
    fake_loop(loop_study, tmp_path, "slime", 0, [0.0] * 4, [initial, [1, 0, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    fake_loop(loop_study, tmp_path, "slime", 1, [0.0] * 4, [initial, [1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0]])
    fake_loop(loop_study, tmp_path, "dpo", 0, [0.0] * 4, [initial, [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]])
    text = "\n".join(loop_study.section(tmp_path, ending={"p0"}))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    column = rows["loop, round"].index("IFEval prompt strict, the 3 prompts with no instruction on the answer's end")
    # by hand, without p0: initial 1 of 3; SLIME round 3: 3 of 3 and 2 of 3 (mean 0.833, std 0.236); DPO round 1: 0 of 3
    assert rows["initial model (round 0)"][column] == "0.333"
    assert rows["SLIME, round 3"][column] == "0.833 ± 0.236"
    assert rows["DPO, round 1"][column] == "0.000"
    assert "### Paired differences, IFEval, the 3 of 4 prompts with no instruction on the answer's end" in text
    table = text.split("the 3 of 4 prompts with no instruction on the answer's end")[1]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ")}
    # round 1, without p0: SLIME 1/3 in both seeds, DPO 0 -> +0.333 (with p0 it would be +0.250)
    assert rows["round 1"][0].startswith("+0.333 [")
    text = "\n".join(loop_study.section(tmp_path, ending=None))
    assert "prompts with no instruction on the answer's end |" in text and "| 0.333 |" not in text
    assert "### Paired differences, IFEval, the" not in text


def test_the_prompts_on_the_answers_end_come_from_the_installed_ifeval_file_the_loops_answered(loop_study, tmp_path):
    import hashlib

    from slimepo.eval import ifeval

    sha = hashlib.sha256(ifeval.find_prompts("ifeval").read_bytes()).hexdigest()
    keys = ["1000", "1040", "1075"]  # 1040 asks for double quotation marks, 1075 for JSON; 1000 for neither
    fake_loop(loop_study, tmp_path / "a", "slime", 0, [0.0] * 4, [[0, 1, 0]] * 4, keys=keys, sha256=sha)
    ending = loop_study.ending_prompts(loop_study.load_loops(tmp_path / "a"))
    assert len(ending) == 132 and {"1040", "1075"} <= ending and "1000" not in ending
    fake_loop(loop_study, tmp_path / "b", "slime", 0, [0.0] * 4, [[0, 1, 0]] * 4, keys=keys, sha256="0" * 64)
    assert loop_study.ending_prompts(loop_study.load_loops(tmp_path / "b")) is None  # another prompts file
    fake_loop(loop_study, tmp_path / "c", "slime", 0, [0.0] * 4, [[0, 1]] * 4, keys=["1000", "x"], sha256=sha)
    assert loop_study.ending_prompts(loop_study.load_loops(tmp_path / "c")) is None  # a prompt it does not have


def test_the_step_size_control_is_compared_with_dpo_and_with_slime(loop_study, tmp_path):
    initial = [0, 0, 1, 0]
    fake_loop(loop_study, tmp_path, "slime", 0, [0.0, -0.1, -0.2, -0.3], [initial, [1, 1, 1, 0], [1, 1, 1, 0],
                                                                          [1, 1, 1, 1]])
    fake_loop(loop_study, tmp_path, "dpo", 0, [0.0, 0.0, 0.0, 0.0], [initial, [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]])
    fake_loop(loop_study, tmp_path, "dpo-lr1e-3", 0, [0.0, -0.5, -0.7, -0.9],
              [initial, [1, 0, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]])
    text = "\n".join(loop_study.section(tmp_path, ending=None))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    drift = rows["loop, round"].index("chosen drift vs initial (nats/token)")
    assert rows["DPO at 1e-3, round 2"][drift] == "-0.700" and rows["DPO, round 2"][drift] == "+0.000"
    assert rows["round"] == ["SLIME − DPO", "SLIME − initial", "DPO − initial", "SLIME − DPO at 1e-3",
                             "DPO at 1e-3 − DPO"]
    assert rows["round 1"][3].startswith("+0.250 [")  # 0.75 − 0.5
    assert rows["round 3"][4].startswith("-0.250 [")  # 0 − 0.25
    assert "A step-size control, last: DPO at 1e-3 (the rate of SLIME and SimPO), seed 0." in text


def archived_eval(sha="abc", chosen=-1.5):
    return {"pairs": 45, "accuracy": 0.5, "chosen_logp_mean": chosen, "rejected_logp_mean": -2.0,
            "margin": {"mean": 0.5}, "collapse": {"rejected_p_lt_1e-4": 0.01, "rejected_min_logp": -20.0},
            "drift": {"chosen_drift_mean": -0.1, "rejected_drift_mean": -0.2},
            "base": {"chosen_logp_mean": -1.4, "rejected_logp_mean": -1.8, "accuracy": 0.6},
            "generation": {"ended_rate": 0.3},
            "settings": {"model": "runs/x/round-1/train/merged", "base": "default", "dataset": "t.jsonl",
                         "weights_sha256": sha}}


def test_the_end_of_turn_is_added_to_an_archived_evaluation_only_from_the_same_model_giving_the_same_scores(loop_study):
    end = {"chosen": {"count": 45, "logp_mean": -0.5, "p_mean": 0.6}, "rejected": {"count": 45, "logp_mean": -2.0,
                                                                                  "p_mean": 0.2}}
    base_end = {"chosen": {"count": 45, "logp_mean": -0.4, "p_mean": 0.67}, "rejected": end["rejected"]}
    rescored = archived_eval(chosen=-1.5 + 1e-9)
    rescored.pop("generation")  # scored again without answering
    rescored["end_of_turn"], rescored["base"]["end_of_turn"] = end, base_end

    merged = loop_study.with_end_of_turn(archived_eval(), rescored, "eval.json")

    assert merged == {**archived_eval(), "end_of_turn": end,
                      "base": {**archived_eval()["base"], "end_of_turn": base_end}}
    with pytest.raises(ValueError, match="eval.json: the weights_sha256 made again is 'other'"):
        loop_study.with_end_of_turn(archived_eval(), {**rescored, "settings": {**rescored["settings"],
                                                                                "weights_sha256": "other"}}, "eval.json")
    with pytest.raises(ValueError, match="eval.json: chosen_logp_mean is -1.5 archived and -1.49 made again"):
        loop_study.with_end_of_turn(archived_eval(), {**rescored, "chosen_logp_mean": -1.49}, "eval.json")
    drifted = {**rescored, "drift": {**rescored["drift"], "chosen_drift_mean": -0.11}}
    with pytest.raises(ValueError, match="drift.chosen_drift_mean is -0.1 archived and -0.11 made again"):
        loop_study.with_end_of_turn(archived_eval(), drifted, "eval.json")


def test_a_round_made_again_is_compared_on_the_settings_and_scores_asked_for(loop_study):
    """scripts/cut_answers_check.py's check of a loop's own round made again: its own merged folder (another
    model path), the same weights and every score, the answers' end rate included."""
    again = {**archived_eval(chosen=-1.5 - 1e-9), "settings": {**archived_eval()["settings"], "model": "elsewhere"}}
    scores = (*loop_study.SAME_SCORES, ("generation", "ended_rate"))

    loop_study.same_evaluation(archived_eval(), again, "check", settings=("weights_sha256", "base"), scores=scores)
    with pytest.raises(ValueError, match="check: the model made again is 'elsewhere'"):
        loop_study.same_evaluation(archived_eval(), again, "check", scores=scores)
    with pytest.raises(ValueError, match="check: generation.ended_rate is 0.3 archived and 0.31 made again"):
        loop_study.same_evaluation(archived_eval(), {**again, "generation": {"ended_rate": 0.31}}, "check",
                                   settings=("weights_sha256",), scores=scores)
    with pytest.raises(ValueError, match="check: base.accuracy is 0.6 archived and None made again"):
        loop_study.same_evaluation(archived_eval(), {**again, "base": {**again["base"], "accuracy": None}}, "check",
                                   settings=(), scores=(("base", "accuracy"),))


def test_the_round_table_has_the_probability_of_ending_where_held_out_chosen_answers_end(loop_study, tmp_path):
    fake_loop(loop_study, tmp_path, "slime", 0, [0.0, -0.1, -0.2, -0.3], [[0, 1]] * 4)
    fake_loop(loop_study, tmp_path, "slime", 1, [0.0, -0.1, -0.2, -0.3], [[0, 1]] * 4)
    for seed, p_end in ((0, 0.2), (1, 0.4)):
        path = loop_study.archived(tmp_path, loop_study.Loop("slime", seed)) / "round-2" / "round.json"
        record = json.loads(path.read_text())
        record["eval"]["end_of_turn"] = {"chosen": {"count": 45, "logp_mean": -1.0, "p_mean": p_end}}
        path.write_text(json.dumps(record))

    text = "\n".join(loop_study.section(tmp_path, ending=None))

    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    column = rows["loop, round"].index("p(end of turn) at held-out chosen ends")
    assert rows["SLIME, round 2"][column] == "0.300 ± 0.141"  # by hand: 0.2 and 0.4
    assert rows["SLIME, round 1"][column] == "—"  # archived before it was measured


def test_rounds_made_again_are_tabled_under_their_start_and_the_loops_own_round(loop_study, tmp_path):
    fake_loop(loop_study, tmp_path, "slime", 1, [0.0, -0.1, -0.5, -0.4], [[0, 1]] * 4)
    folder = loop_study.archived(tmp_path, loop_study.Loop("slime", 1))
    for index, p_end in ((1, 0.611), (2, 0.016)):
        record = json.loads((folder / f"round-{index}" / "round.json").read_text())
        record["eval"]["end_of_turn"] = {"chosen": {"p_mean": p_end}}
        record["pairs"] = {"counts": {"pairs": 51}}
        (folder / f"round-{index}" / "round.json").write_text(json.dumps(record))
    pairs = folder / "round-2" / "pairs"  # the loop's own pairs: chosen and rejected ended from the samples
    pairs.mkdir()
    samples = [{"key": key, "sample": n, "ended": ended} for key, n, ended in
               (("a", 0, True), ("a", 1, False), ("a", 2, True), ("b", 0, False), ("b", 1, True), ("c", 0, True))]
    with gzip.open(pairs / "samples.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    with gzip.open(pairs / "pairs.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"key": k, "chosen_sample": c, "rejected_sample": r}) + "\n"
                     for k, c, r in (("a", 0, 1), ("b", 1, 0), ("a", 2, 1)))
    (tmp_path / "cut-answers-check.jsonl").write_text(json.dumps(
        {"loop": "slime-seed1", "round": 2, "cut_answers": "drop", "loss": "simpo", "learning_rate": 0.001,
         "pairs": 40, "chosen_ended": 40, "rejected_ended": 40, "p_end_chosen": 0.4731, "held_out_ended": 0.4889,
         "chosen_drift": -0.1712}) + "\n")

    text = "\n".join(loop_study.section(tmp_path, ending=None))

    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| slime-seed1")}
    assert rows["slime-seed1 round 2: its start (round 1's model)"] == ["—", "—", "0.611", "—", "-0.100"]
    assert rows["slime-seed1 round 2: the loop's own (SLIME, cut answers kept)"] == ["51", "3 / 0", "0.016", "—", "-0.500"]
    assert rows["slime-seed1 round 2: SimPO at 0.001, cut answers drop"] == ["40", "40 / 40", "0.473", "0.49", "-0.171"]


def test_the_copy_is_named_by_its_destination_and_a_gzipped_source_is_unpacked(loop_study, tmp_path):
    source = tmp_path / "donor" / "answers.jsonl.gz"
    source.parent.mkdir()
    with gzip.open(source, "wb") as out:
        out.write(b'{"a": 1}\n')
    loop_study.copy_unpacked(source, tmp_path / "new" / "samples.jsonl")
    loop_study.copy_unpacked(source, tmp_path / "new" / "kept.jsonl.gz")
    plain = tmp_path / "donor" / "round.json"
    plain.write_text("{}")
    loop_study.copy_unpacked(plain, tmp_path / "new" / "other.json")
    assert sorted(f.name for f in (tmp_path / "new").iterdir()) == ["kept.jsonl", "other.json", "samples.jsonl"]
    assert (tmp_path / "new" / "samples.jsonl").read_bytes() == b'{"a": 1}\n'
    assert (tmp_path / "new" / "kept.jsonl").read_bytes() == b'{"a": 1}\n'
