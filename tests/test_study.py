"""scripts/study.py: the job plan, the learning-rate choice, resuming, and the report."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def study(load_script, tmp_path_factory):
    module = load_script("study")
    # The page's loop section reads this folder: none of the repository's archived loops in these tests.
    module.LOOP_RESULTS = tmp_path_factory.mktemp("no-loops") / "study-loop"
    return module


#: What study.py records of the tokenization it made a result with (today's: see ``study.TOKENIZATION``).
TODAY = "responses end at their end-of-turn token"


def write_eval(results: Path, name: str, split: str, decoding: str, **values) -> None:
    """An evaluation made with today's tokenization unless ``tokenization=None`` is given."""
    path = results / "runs" / name / f"eval-{split}-{decoding}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    values.setdefault("tokenization", TODAY)
    path.write_text(json.dumps({k: v for k, v in values.items() if v is not None}))


def grid_results(study, results: Path, scores: dict[tuple[str, float], tuple[float, float]]) -> None:
    for (loss, lr), (pass_rate, accuracy) in scores.items():
        write_eval(results, study.run_name(loss, lr, 0), "validation", "greedy",
                   constraint_pass_rate=pass_rate, accuracy=accuracy)


def test_plan_starts_with_the_base_model_then_the_grid_with_the_middle_rate_first(study, tmp_path):
    jobs = study.pending(tmp_path)
    assert jobs[0].name == "base/seed0"
    assert jobs[0].evals == (("validation", "greedy"), ("test", "greedy"), ("test", "sampled"),
                             ("heldout", "greedy"), ("heldout", "sampled"))
    grid = [job.name for job in jobs[1:10]]
    assert grid == ["slime/lr3e-04-seed0", "dpo/lr3e-04-seed0", "simpo/lr3e-04-seed0",
                    "slime/lr1e-04-seed0", "dpo/lr1e-04-seed0", "simpo/lr1e-04-seed0",
                    "slime/lr1e-03-seed0", "dpo/lr1e-03-seed0", "simpo/lr1e-03-seed0"]
    assert all(job.evals == (("validation", "greedy"),) for job in jobs[1:10])
    # Nothing is trained at a chosen rate before the grid has chosen one.
    assert not any(("test", "greedy") in job.evals for job in jobs[1:])
    assert len(study.undecided(tmp_path)) == 12  # every loss (IPO, CPO, ORPO: nor their family's rate either)


def test_the_rate_is_chosen_on_validation_pass_rate_then_accuracy_then_the_smaller_rate(study, tmp_path):
    grid_results(study, tmp_path, {
        ("slime", 3e-4): (0.5, 0.6), ("slime", 1e-4): (0.6, 0.5), ("slime", 1e-3): (0.4, 0.9),
        ("dpo", 3e-4): (0.5, 0.6), ("dpo", 1e-4): (0.5, 0.7), ("dpo", 1e-3): (0.5, 0.6),
        ("simpo", 3e-4): (0.5, 0.6), ("simpo", 1e-4): (0.3, 0.6), ("simpo", 1e-3): (0.5, 0.6),
    })
    assert study.chosen_rates(tmp_path) == {"slime": 1e-4, "dpo": 1e-4, "simpo": 3e-4}


def test_an_incomplete_grid_chooses_nothing_for_that_loss(study, tmp_path):
    grid_results(study, tmp_path, {("slime", 3e-4): (0.9, 0.9), ("slime", 1e-4): (0.1, 0.1)})
    assert study.chosen_rates(tmp_path) == {}


def test_after_the_grid_every_loss_runs_every_seed_at_its_familys_rate(study, tmp_path):
    grid_results(study, tmp_path, {
        (loss, lr): ((0.7 if lr == 1e-3 else 0.2) if loss == "simpo" else (0.7 if lr == 1e-4 else 0.2), 0.5)
        for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)
    })
    jobs = {job.name: job for job in study.pending(tmp_path)}
    # The grid's seed-0 run at the chosen rate is reused: only its test evaluations are owed.
    assert jobs["slime/lr1e-04-seed0"].evals == study.TEST
    assert "slime/lr3e-04-seed0" not in jobs
    for loss in ("slime-no-anchor", "slime-no-stabilizer", "slime-hard", "slime-soft", "ipo"):
        assert {f"{loss}/lr1e-04-seed{s}" for s in (0, 1, 2)} <= set(jobs)
    for loss in ("cpo", "orpo"):
        assert {f"{loss}/lr1e-03-seed{s}" for s in (0, 1, 2)} <= set(jobs)
    order = list(jobs)
    # Seeds of the compared losses come before the ablations and other baselines.
    assert order.index("simpo/lr1e-03-seed2") < order.index("base/seed1") < order.index("slime-no-anchor/lr1e-04-seed0")
    # The review's losses: their own grid comes before the ablations' seeds (it decides whether their
    # seeds stand); until it is complete IPO, CPO and ORPO keep their family's rate (above), the new IPO
    # variant has none.
    assert order.index("base/seed2") < order.index("ipo/lr3e-04-seed0") < order.index("orpo/lr1e-03-seed0")
    assert order.index("orpo/lr1e-03-seed0") < order.index("slime-no-anchor/lr1e-04-seed0")
    assert jobs["orpo/lr1e-03-seed0"].evals == study.VALIDATION + study.TEST  # one run at both rates' places
    assert {f"{loss}/lr{lr:.0e}-seed0" for loss in ("ipo", "ipo-tau0.01", "cpo", "orpo")
            for lr in (3e-4, 1e-4, 1e-3)} <= set(jobs)
    assert study.undecided(tmp_path) == ["ipo-tau0.01 (seeds 0, 1, 2): rate not chosen yet"] + [
        f"{loss} (seeds 0, 1, 2) at the rate of its own grid, once that is complete (until then at {family}'s)"
        for loss, family in (("ipo", "dpo"), ("cpo", "simpo"), ("orpo", "simpo"))]


def test_the_reviewed_losses_run_every_seed_at_the_rate_of_their_own_grid(study, tmp_path):
    scores = {(loss, lr): (0.7 if lr == 1e-4 else 0.2, 0.5) for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)}
    best = {"ipo": 1e-3, "ipo-tau0.01": 3e-4, "cpo": 1e-4, "orpo": 3e-4}
    scores |= {(loss, lr): (0.6 if lr == best[loss] else 0.1, 0.5) for loss in best for lr in (3e-4, 1e-4, 1e-3)}
    grid_results(study, tmp_path, scores)
    rate = study.rates(tmp_path)
    assert {loss: rate[loss] for loss in best} == best
    assert rate["simpo-paper"] == rate["slime-soft"] == 1e-4
    jobs = {job.name: job for job in study.pending(tmp_path)}
    for loss, lr in best.items():
        assert jobs[study.run_name(loss, lr, 0)].evals == study.TEST  # the grid's run is reused
        assert {study.run_name(loss, lr, seed) for seed in (1, 2)} <= set(jobs)
    assert "ipo/lr1e-04-seed1" not in jobs  # the family's rate (DPO's) is no longer IPO's
    assert study.undecided(tmp_path) == []
    config = study.train_config(study.Job("ipo-tau0.01", 3e-4, 1, study.TEST), tmp_path / "runs")
    assert (config.loss, config.loss_params, config.learning_rate, config.seed) == ("ipo", {"tau": 0.01}, 3e-4, 1)
    config = study.train_config(study.Job("simpo-paper", 1e-4, 0, study.TEST), tmp_path / "runs")
    assert (config.loss, config.loss_params) == ("simpo", {"beta": 2.5, "gamma": 1.375})
    assert config.mixed_precision == "no"  # float32, as the study first trained
    assert study.loss_hyperparameters("simpo-paper").startswith("beta=2.5, gamma=1.375")


def test_a_run_trained_again_drops_the_results_of_its_earlier_training_and_evaluates_them_anew(study, tmp_path, monkeypatch):
    import types

    import slimepo.train

    results, runs = tmp_path / "results", tmp_path / "runs"
    name = study.run_name("ipo", 3e-4, 0)
    write_eval(results, name, "test", "greedy", constraint_pass_rate=0.1, old=True)
    write_generations(results, name, "test", "greedy", [False])
    (results / "runs" / name / "train.json").write_text("{}")  # trained once; its adapter is gone
    trained, evaluated = [], []

    def train(config):
        trained.append(config.output_dir)
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.output_dir) / "metrics.jsonl").write_text("")
        return types.SimpleNamespace(global_step=2, after={})

    def evaluate_one(model, split, decoding, seed, out_dir):
        evaluated.append((split, decoding))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "generations.jsonl").write_text("")
        return {"constraint_pass_rate": 0.9}

    monkeypatch.setattr(slimepo.train, "train", train)
    monkeypatch.setattr(study, "evaluate_one", evaluate_one)
    study.run_job(study.Job("ipo", 3e-4, 0, study.VALIDATION), results, runs)
    assert trained == [str(runs / name)]
    assert evaluated == [("validation", "greedy"), ("test", "greedy")]
    assert json.loads((results / "runs" / name / "eval-test-greedy.json").read_text())["constraint_pass_rate"] == 0.9


def test_results_made_before_the_tokenization_fix_are_made_again_after_everything_else(study, tmp_path, monkeypatch):
    import types

    import slimepo.train

    results, runs = tmp_path / "results", tmp_path / "runs"
    for e in (*study.VALIDATION, *study.TEST):
        write_eval(results, "base/seed0", *e, tokenization=None)  # the base model's, before the fix
    for seed in (1, 2):
        write_eval(results, "base/seed" + str(seed), "test", "sampled")
        write_eval(results, "base/seed" + str(seed), "heldout", "sampled")
    old_options = {"options": {"loss": "slime"}}  # a train.json from before the fix: no mixed_precision option
    new_options = {"options": {"loss": "slime", "mixed_precision": "no"}}  # trained after it (no field yet)
    for lr in (3e-4, 1e-4, 1e-3):
        for loss in ("slime", "dpo", "simpo"):
            name = study.run_name(loss, lr, 0)
            write_eval(results, name, "validation", "greedy", constraint_pass_rate=0.5 if lr == 3e-4 else 0.1,
                       accuracy=0.5, tokenization=None)
            (results / "runs" / name / "train.json").write_text(json.dumps(old_options if loss != "dpo" else new_options))
    for e in study.TEST:  # a DPO seed at its rate, trained before the fix
        write_eval(results, "dpo/lr3e-04-seed1", *e, tokenization=None)
    (results / "runs" / "dpo/lr3e-04-seed1" / "train.json").write_text(json.dumps(old_options))
    for e in study.TEST:  # and an IPO seed at DPO's rate (its family's), before the fix too
        write_eval(results, "ipo/lr3e-04-seed1", *e, tokenization=None)
    (results / "runs" / "ipo/lr3e-04-seed1" / "train.json").write_text(json.dumps(old_options))
    jobs = study.pending(results)
    names = [job.name for job in jobs]
    # DPO's grid is all current: its choice stands, and what its seeds lack is owed first.
    assert names[0] == "dpo/lr3e-04-seed0" and jobs[0].evals == study.TEST
    assert "dpo/lr3e-04-seed2" in names and "ipo/lr3e-04-seed1" in names  # IPO keeps its family's rate (DPO's)
    # SLIME's and SimPO's grids predate the fix: they choose nothing for the plan until they are made
    # again, so no seed of theirs (or of a loss taking their rate) is trained meanwhile...
    assert study.rates(results)["slime"] == 3e-4  # (what the old results chose, shown by the report)
    assert study.rates(results, current_only=True)["slime"] is None
    assert not any(job.name.startswith(("slime", "simpo", "cpo/", "orpo/")) and job.evals != study.VALIDATION
                   for job in jobs)  # CPO and ORPO would take SimPO's rate (until their own grid is done)
    assert "slime (seeds 0, 1, 2): rate not chosen yet (the grid that sets it is made again with today's " \
           "tokenization; its earlier results chose 3e-04)" in study.undecided(results)
    # ...then, after every missing result, the outdated ones, those of the compared losses first, in
    # the plan's order: the base model's evaluations, SLIME's and SimPO's grid runs (not DPO's: its
    # train.json has the option that came after the fix), then DPO's seed at the rate that stands.
    first_outdated = names.index("base/seed0")
    assert jobs[first_outdated].evals == study.VALIDATION + study.TEST
    assert names[first_outdated + 1:] == [study.run_name(loss, lr, 0) for lr in (3e-4, 1e-4, 1e-3)
                                          for loss in ("slime", "simpo")] + ["dpo/lr3e-04-seed1", "ipo/lr3e-04-seed1"]
    assert all(job.evals == study.VALIDATION for job in jobs[first_outdated + 1:-2])
    assert jobs[-2].evals == jobs[-1].evals == study.TEST

    # An outdated run is trained again even where its adapter is still there, and its results say so.
    name = "slime/lr1e-04-seed0"
    (runs / name).mkdir(parents=True)
    (runs / name / "adapter_config.json").write_text("{}")
    trained = []

    def train(config):
        trained.append(config.output_dir)
        (Path(config.output_dir) / "metrics.jsonl").write_text("")
        return types.SimpleNamespace(global_step=2, after={})

    def evaluate_one(model, split, decoding, seed, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "generations.jsonl").write_text("")
        return {"constraint_pass_rate": 0.9}

    monkeypatch.setattr(slimepo.train, "train", train)
    monkeypatch.setattr(study, "evaluate_one", evaluate_one)
    study.run_job(next(job for job in jobs if job.name == name), results, runs)
    assert trained == [str(runs / name)]
    assert json.loads((results / "runs" / name / "train.json").read_text())["tokenization"] == TODAY
    assert json.loads((results / "runs" / name / "eval-validation-greedy.json").read_text())["tokenization"] == TODAY
    # Its new validation result (0.9) beats the old ones, but SLIME's grid is not whole again: no seed
    # is planned at 1e-4 (nor at 3e-4) until the other two rates are made again too.
    assert not any(job.name.startswith("slime/lr1e-04-seed") and job.evals != study.VALIDATION
                   for job in study.pending(results))
    for lr in (3e-4, 1e-3):
        (results / "runs" / study.run_name("slime", lr, 0) / "train.json").write_text(json.dumps(new_options))
    jobs = {job.name: job for job in study.pending(results)}
    assert jobs[name].evals == study.TEST
    assert {"slime/lr1e-04-seed1", "slime-soft/lr1e-04-seed2"} <= set(jobs)


def test_a_reviewed_loss_whose_own_grid_is_made_again_waits_for_it_not_for_its_familys_rate(study, tmp_path):
    old = {"options": {"loss": "cpo"}}  # train.json of a run from before the tokenization fix
    grid_results(study, tmp_path, {(loss, lr): (0.7 if lr == 1e-4 else 0.2, 0.5)
                                   for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)})
    write_eval(tmp_path, "cpo/lr3e-04-seed0", "validation", "greedy", constraint_pass_rate=0.5, tokenization=None)
    (tmp_path / "runs" / "cpo/lr3e-04-seed0" / "train.json").write_text(json.dumps(old))
    assert study.rates(tmp_path)["cpo"] == 1e-4  # what the report shows: its family's (SimPO's) rate
    assert study.rates(tmp_path, current_only=True)["cpo"] is None
    jobs = {job.name: job for job in study.pending(tmp_path)}
    assert not any(name.startswith("cpo/") and job.evals != study.VALIDATION for name, job in jobs.items())
    assert jobs["orpo/lr1e-04-seed1"].evals == study.TEST  # ORPO's own grid has not started: SimPO's rate
    assert jobs["cpo/lr3e-04-seed0"].evals == study.VALIDATION  # made again, after what is missing
    assert list(jobs).index("cpo/lr3e-04-seed0") > list(jobs).index("orpo/lr1e-04-seed2")

    # A run that failed before the fix is tried again; one that failed since is not.
    (tmp_path / "runs" / "cpo/lr1e-03-seed0").mkdir(parents=True)
    (tmp_path / "runs" / "cpo/lr1e-03-seed0" / "failed.json").write_text(json.dumps({"error": "NaN"}))
    assert study.failed(tmp_path, "cpo/lr1e-03-seed0") is None and "cpo/lr1e-03-seed0" in {
        job.name for job in study.pending(tmp_path)}
    (tmp_path / "runs" / "cpo/lr1e-03-seed0" / "failed.json").write_text(json.dumps({"error": "NaN", "tokenization": TODAY}))
    assert "cpo/lr1e-03-seed0" not in {job.name for job in study.pending(tmp_path)}


def test_a_grid_half_made_again_neither_moves_the_tables_nor_is_called_chosen(study, tmp_path):
    results = tmp_path / "results"
    old = {"options": {"loss": "slime"}}  # train.json of a run from before the tokenization fix
    for lr, pass_rate in ((3e-4, 0.6), (1e-4, 0.5), (1e-3, 0.7)):  # the old grid chose 1e-3...
        write_eval(results, study.run_name("slime", lr, 0), "validation", "greedy", constraint_pass_rate=pass_rate,
                   accuracy=0.5, tokenization=None)
        (results / "runs" / study.run_name("slime", lr, 0) / "train.json").write_text(json.dumps(old))
    for seed in (0, 1, 2):  # ...and its seeds ran there
        write_eval(results, study.run_name("slime", 1e-3, seed), "test", "greedy", constraint_pass_rate=0.8,
                   tokenization=None)
        (results / "runs" / study.run_name("slime", 1e-3, seed) / "train.json").write_text(json.dumps(old))
    runs = study.load_results(results)
    assert study.table_rates(results, runs)["slime"] == 1e-3
    assert "| slime | 1e-03 | 0.700 | 0.500 | — | — | before the fix | chosen before the fix |" in study.grid_section(
        results, runs)

    # 3e-4 made again today beats the old 1e-3: the plan waits, the tables stay where the seeds are.
    name = study.run_name("slime", 3e-4, 0)
    (results / "runs" / name / "train.json").write_text(json.dumps({"tokenization": TODAY}))
    write_eval(results, name, "validation", "greedy", constraint_pass_rate=0.9, accuracy=0.5)
    runs = study.load_results(results)
    assert study.rates(results)["slime"] == 3e-4 and study.rates(results, current_only=True)["slime"] is None
    assert study.table_rates(results, runs)["slime"] == 1e-3
    grid = study.grid_section(results, runs)
    assert "| slime | 3e-04 | 0.900 | 0.500 | — | — | today | best so far (grid being made again) |" in grid
    assert not any(row.startswith("| slime |") and row.endswith("| **chosen** |") for row in grid)

    # The whole grid made again: its choice is the plan's and the tables'.
    for lr in (1e-4, 1e-3):
        (results / "runs" / study.run_name("slime", lr, 0) / "train.json").write_text(json.dumps({"tokenization": TODAY}))
    runs = study.load_results(results)
    assert study.table_rates(results, runs)["slime"] == 3e-4
    assert "| slime | 3e-04 | 0.900 | 0.500 | — | — | today | **chosen** |" in study.grid_section(results, runs)


def test_the_cost_left_counts_what_a_retrained_run_evaluates_again_and_what_waits_on_a_grid(study, tmp_path, monkeypatch):
    for name, value in (("GRID_LOSSES", ("slime",)), ("OWN_GRID_LOSSES", ()), ("FAMILY", {}), ("INHERIT", {}),
                        ("MAIN_LOSSES", ("slime",)), ("RUNS", tmp_path / "adapters")):
        monkeypatch.setattr(study, name, value)
    results = tmp_path / "results"
    for e in (*study.VALIDATION, *study.TEST):
        write_eval(results, "base/seed0", *e)
    for seed in (1, 2):
        for e in study.TEST[1::2]:  # the sampled ones
            write_eval(results, f"base/seed{seed}", *e)
    xeon, epyc = {"cpu": "Xeon"}, {"cpu": "EPYC"}
    old = {"options": {}, "wall_seconds": 600.0, "machine": xeon}  # a train.json from before the tokenization fix
    for lr in (3e-4, 1e-4, 1e-3):  # SLIME's grid, all before the fix: made again
        write_eval(results, study.run_name("slime", lr, 0), "validation", "greedy", constraint_pass_rate=0.5,
                   wall_seconds=60.0, tokenization=None, machine=xeon)
        (results / "runs" / study.run_name("slime", lr, 0) / "train.json").write_text(json.dumps(old))
    for seed in (0, 1, 2):  # the seeds at the rate it chose before, on a slower machine
        for e in study.TEST:
            write_eval(results, study.run_name("slime", 1e-4, seed), *e, tokenization=None, wall_seconds=120.0,
                       machine=epyc)
        (results / "runs" / study.run_name("slime", 1e-4, seed) / "train.json").write_text(
            json.dumps({**old, "wall_seconds": 1200.0, "machine": epyc}))
    jobs = study.pending(results)
    assert [job.name for job in jobs] == [study.run_name("slime", lr, 0) for lr in (3e-4, 1e-4, 1e-3)]
    # 3 grid runs trained again, evaluating validation and (1e-4, seed 0) its 4 test evaluations again;
    # seeds 1 and 2 wait for the grid: 2 runs, 8 evaluations. On the EPYC 20 min per training run and 2 per
    # evaluation, on the Xeon 10 and 1.
    assert study.remaining_cost(study.load_results(results), jobs, results) == [
        "3 runs to train and 7 evaluations, about 1.2 h on the EPYC (median 20.0 min per training run, 2.0 min per "
        "evaluation there), 0.6 h on the Xeon (median 10.0 min per training run, 1.0 min per evaluation there); "
        "then, once the grids being made again have chosen (at the rates chosen before, if they choose them again), "
        "2 runs to train and 8 evaluations, about 0.9 h on the EPYC (median 20.0 min per training run, 2.0 min per "
        "evaluation there), 0.5 h on the Xeon (median 10.0 min per training run, 1.0 min per evaluation there) "
        "more:", ""]


def test_report_gives_mean_and_std_over_seeds_and_lists_what_is_missing(study, tmp_path):
    results, doc = tmp_path / "results", tmp_path / "docs" / "results.md"
    grid_results(study, results, {(loss, lr): (0.5 if lr == 3e-4 else 0.1, 0.5)
                                  for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)})
    for seed, rate in ((0, 0.5), (1, 0.7)):
        for split in ("test", "heldout"):
            for decoding in ("greedy", "sampled"):
                write_eval(results, study.run_name("slime", 3e-4, seed), split, decoding,
                           constraint_pass_rate=rate, accuracy=0.8, drift={"chosen_drift_mean": -0.1 * (seed + 1)},
                           constraint_pass_rate_by_family={"max_words": rate})
    write_eval(results, study.run_name("dpo", 3e-4, 0), "test", "greedy", constraint_pass_rate=0.4,
               tokenization=None)  # made before the tokenization fix
    (results / "reading.md").write_text("## Reading\n\nHand-written words.")
    study.report(results, doc, tmp_path / "docs" / "img", tmp_path / "ifeval", tmp_path / "ifbench")
    text = doc.read_text()
    slime_row = next(line for line in text.splitlines() if line.startswith("| slime (lr 3e-04)"))
    cells = [c.strip() for c in slime_row.strip("|").split("|")]
    assert cells[1] == "0.600 ± 0.141 (2)"  # mean and sample std of 0.5 and 0.7
    assert cells[6] == "-0.150 ± 0.071 (2)"  # chosen drift -0.1, -0.2
    assert cells[-1] == "2/2"  # both seeds made with today's tokenization
    assert next(line for line in text.splitlines() if line.startswith("| dpo (lr 3e-04)")).endswith("| 0/1 |")
    assert "0 of the 0 stored verdicts differ from what their run wrote" in text  # no answers stored here
    assert "Hand-written words." in text
    assert "| slime | 3e-04 | 0.500 | 0.500 |" in text.replace("**chosen**", "").replace("  ", " ")
    assert "- slime/lr3e-04-seed2: test/greedy" in text  # the missing seed
    assert "- base/seed0: validation/greedy" in text
    assert (tmp_path / "docs" / "img" / "study-pass-rates.png").stat().st_size > 1000


@pytest.mark.slow
def test_run_trains_evaluates_and_skips_finished_jobs_on_a_tiny_model(study, tmp_path, tiny_model_dir, monkeypatch):
    import slimepo.model

    data = tmp_path / "data"
    data.mkdir()
    words = ["river", "garden", "train", "letter", "forest", "window", "market", "bridge"]
    for file in (*study.SPLITS.values(), "train.jsonl.gz"):
        rows = [{"prompt": f"Say something about the {w}. Use the word 'good'.", "chosen": f"The {w} is good.",
                 "rejected": f"The {w} is bad.", "constraint": {"family": "include_word", "params": {"word": "good"}}}
                for w in words]
        with gzip.open(data / file, "wt") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    monkeypatch.setattr(study, "MODEL", str(tiny_model_dir))
    monkeypatch.setattr(study, "DATA", data)
    monkeypatch.setattr(study, "BASE_OPTIONS", {
        **study.BASE_OPTIONS, "dataset": str(data / "train.jsonl.gz"),
        "eval_dataset": str(data / "validation.jsonl.gz"), "monitor_steps": 1,
    })
    monkeypatch.setattr(study, "GRID_LOSSES", ("slime",))
    monkeypatch.setattr(study, "LEARNING_RATES", (1e-3,))
    monkeypatch.setattr(study, "INHERIT", {})
    monkeypatch.setattr(study, "MAIN_LOSSES", ("slime",))
    monkeypatch.setattr(study, "OWN_GRID_LOSSES", ())
    monkeypatch.setattr(study, "FAMILY", {})
    monkeypatch.setattr(study, "SEEDS", (0,))
    monkeypatch.setattr(study, "MAX_NEW_TOKENS", 4)
    monkeypatch.setattr(slimepo.model, "machine", lambda: {  # what train.json records of the machine
        "cpu": "Test CPU", "cores": 3, "torch": "9.9", "torch_threads": 5, "cuda": "Test GPU"})
    results, runs = tmp_path / "results", tmp_path / "runs"

    # The base model; slime's grid run on validation; the same run (not retrained) on test once chosen.
    assert study.run(results, runs, max_minutes=None, max_jobs=None) == 3
    assert study.pending(results) == []
    run = results / "runs" / "slime" / "lr1e-03-seed0"
    train = json.loads((run / "train.json").read_text())
    assert train["steps"] == 2 and train["learning_rate"] == 1e-3
    for split, decoding in (("validation", "greedy"), *study.TEST):
        evaluation = json.loads((run / f"eval-{split}-{decoding}.json").read_text())
        assert evaluation["constraints_checked"] == 8 and evaluation["pairs"] == 8
        assert "drift" in evaluation  # measured against the base model
        with gzip.open(run / f"generations-{split}-{decoding}.jsonl.gz", "rt") as f:
            assert len(f.readlines()) == 8
    assert (run / "metrics.jsonl").is_file()
    # Finished jobs are not redone.
    assert study.run(results, runs, max_minutes=None, max_jobs=None) == 0
    doc = study.report(results, tmp_path / "results.md", tmp_path / "img", tmp_path / "ifeval", tmp_path / "ifbench")
    assert "Every planned job is done." in doc.read_text()
    assert "- Machine(s), fp32: 3 cores (Test CPU), torch 9.9, 5 threads, GPU Test GPU: 1 run." in doc.read_text()


def test_a_failing_job_is_recorded_skipped_and_reported_while_the_study_goes_on(study, tmp_path, monkeypatch):
    calls = []

    def run_job(job, results, runs):
        calls.append(job.name)
        if job.name == "slime/lr3e-04-seed0":
            raise RuntimeError("loss diverged")
        for split, decoding in job.evals:
            write_eval(results, job.name, split, decoding, constraint_pass_rate=0.5, accuracy=0.5)

    monkeypatch.setattr(study, "run_job", run_job)
    results = tmp_path / "results"
    assert study.run(results, tmp_path / "runs", max_minutes=None, max_jobs=3) == 3
    assert calls == ["base/seed0", "slime/lr3e-04-seed0", "dpo/lr3e-04-seed0"]
    failure = json.loads((results / "runs" / "slime" / "lr3e-04-seed0" / "failed.json").read_text())
    assert failure == {"error": "RuntimeError: loss diverged", "tokenization": TODAY}
    assert "slime/lr3e-04-seed0" not in [job.name for job in study.pending(results)]
    # In the grid, a failed rate loses: the other two decide.
    grid_results(study, results, {("slime", 1e-4): (0.2, 0.5), ("slime", 1e-3): (0.1, 0.5)})
    assert study.chosen_rates(results)["slime"] == 1e-4
    study.report(results, tmp_path / "results.md", tmp_path / "img", tmp_path / "ifeval", tmp_path / "ifbench")
    assert "- slime/lr3e-04-seed0: failed (RuntimeError: loss diverged)" in (tmp_path / "results.md").read_text()


def test_the_study_results_are_not_ignored_by_git_but_the_adapters_are(study):
    """Results are the study's record and must be committable; adapters (hundreds of MB) must not be."""
    root = study.ROOT
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: Path) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", str(path)], cwd=root).returncode == 0

    assert not ignored(study.RESULTS / "runs" / "slime" / "lr1e-03-seed0" / "train.json")
    assert not ignored(study.RESULTS / "runs" / "base" / "seed0" / "generations-test-greedy.jsonl.gz")
    assert ignored(study.RUNS / "slime" / "lr1e-03-seed0" / "adapter_model.safetensors")


def write_generations(results: Path, name: str, split: str, decoding: str, passed: list[bool]) -> None:
    path = results / "runs" / name / f"generations-{split}-{decoding}.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"origin": f"/somewhere/{split}.jsonl.gz:{i + 1}", "prompt": f"p{i}", "response": "r",
             "checks": {"constraint": {"family": "max_words", "passed": ok}}} for i, ok in enumerate(passed)]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def stats(load_script):
    return load_script("study_stats")


def test_paired_bootstrap_pairs_prompts_and_averages_seeds(stats):
    def difference(a, b):
        found = stats.paired_bootstrap(a, b)
        return None if found is None else found[:3]

    a = [{"x:1": 1.0, "x:2": 1.0, "x:3": 0.0, "x:4": 0.0}, {"x:1": 1.0, "x:2": 1.0, "x:3": 1.0, "x:4": 0.0}]
    b = [{"x:1": 1.0, "x:2": 0.0, "x:3": 0.0, "x:4": 0.0, "x:5": 1.0}]  # x:5 has no partner: left out
    diff, low, high = difference(a, b)
    assert diff == pytest.approx(0.625 - 0.25)
    assert low < diff < high and low >= -1 and high <= 1
    # One seed a side, identical answers: 0 in every draw. Two seeds: each side's seeds are drawn on
    # their own, so the interval widens around 0. Opposite sides differ by exactly 1.
    assert difference(b, b) == (0.0, 0.0, 0.0)
    diff, low, high = difference(a, a)
    assert diff == 0.0 and low < 0 < high
    ones, zeros = [{"x:1": 1.0, "x:2": 1.0}], [{"x:1": 0.0, "x:2": 0.0}]
    assert difference(ones, zeros) == (1.0, 1.0, 1.0)
    assert difference(a, []) is None
    assert difference(a, [{"y:1": 1.0}]) is None  # no prompt in common


def test_report_has_slime_minus_each_run_from_the_generations(study, tmp_path):
    results, doc = tmp_path / "results", tmp_path / "docs" / "results.md"
    grid_results(study, results, {(loss, lr): (0.5 if lr == 3e-4 else 0.1, 0.5)
                                  for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)})
    for loss, passed in (("slime", [True, True, False, False]), ("dpo", [True, False, False, False])):
        name = study.run_name(loss, 3e-4, 0)
        write_eval(results, name, "test", "greedy", constraint_pass_rate=sum(passed) / 4)
        write_generations(results, name, "test", "greedy", passed)
    study.report(results, doc, tmp_path / "docs" / "img", tmp_path / "ifeval", tmp_path / "ifbench")
    row = next(line for line in doc.read_text().splitlines() if line.startswith("| slime − dpo"))
    # 2/4 − 1/4. Only prompt 2 differs: a draw's difference is (times prompt 2 is drawn) / 4, 0 with
    # probability (3/4)^4 = 0.316 and never below: p = 2 × 0.316 (one comparison: Holm's p is p).
    cell = row.split("|")[2].strip()
    assert cell.startswith("+0.250 [+0.00, +0.75] p ")
    p_value, holm_p = (float(x) for x in cell.split(" p ")[1].split(", Holm "))
    assert p_value == pytest.approx(2 * 0.75 ** 4, abs=0.02) and holm_p == p_value
    assert [c.strip() for c in row.split("|")[3:6]] == ["—", "—", "—"]  # no answers stored for those
    assert "for the m = 1 comparisons of this table" in doc.read_text()
    assert "| slime − simpo" not in doc.read_text()  # no simpo run at its rate: no row


def test_paired_bootstrap_gives_a_two_sided_p_value_and_holm_adjusts_over_a_table(stats):
    ones, zeros = [{"x:1": 1.0, "x:2": 1.0}], [{"x:1": 0.0, "x:2": 0.0}]
    # Every draw is +1: no draw at or below 0, so p = 2 (0 + 1) / (10,000 + 1), the smallest there is.
    assert stats.paired_bootstrap(ones, zeros) == (1.0, 1.0, 1.0, pytest.approx(2 / 10_001))
    assert stats.paired_bootstrap(zeros, zeros)[3] == 1.0  # every draw 0: on both sides
    a, b = [{"x:1": 1.0, "x:2": 0.0}], [{"x:1": 0.0, "x:2": 0.0}]
    # A draw's difference is (times x:1 is drawn) / 2: 0 with probability 1/4, never below: p = 2/4.
    diff, low, high, p = stats.paired_bootstrap(a, b)
    assert (diff, low, high) == (0.5, 0.0, 1.0) and p == pytest.approx(0.5, abs=0.03)
    assert stats.paired_bootstrap(a, b, prompts=["x:2"]) == (0.0, 0.0, 0.0, 1.0)  # only the prompts given
    assert stats.paired_bootstrap(a, b, prompts=["y:1"]) is None
    # Holm: the i-th smallest of m times m − i + 1, never below a smaller one's, at most 1.
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([]) == []
    cells, m = stats.corrected_cells([[(0.5, 0.1, 0.9, 0.01), None], [(0.1, -0.1, 0.3, 0.04), (0.0, -0.2, 0.2, 0.9)]])
    assert m == 3
    assert cells == [["+0.500 [+0.10, +0.90] p 0.01, Holm 0.03", "—"],
                     ["+0.100 [-0.10, +0.30] p 0.04, Holm 0.08", "+0.000 [-0.20, +0.20] p 0.9, Holm 0.9"]]


def test_the_ifeval_part_runs_the_base_model_then_each_seed_of_every_compared_loss_at_its_chosen_rate(study, tmp_path):
    assert [job.name for job in study.ifeval_plan(tmp_path)] == ["base/seed0"]  # no rate chosen yet
    grid_results(study, tmp_path, {(loss, lr): (0.7 if (loss, lr) in (("slime", 1e-3), ("dpo", 3e-4)) else 0.2, 0.5)
                                   for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)})
    jobs = study.ifeval_plan(tmp_path)
    assert [job.name for job in jobs] == [
        "base/seed0",  # SimPO at its authors' β and γ: SimPO's rate, as in the constraint study
        "slime/lr1e-03-seed0", "dpo/lr3e-04-seed0", "simpo/lr1e-04-seed0", "simpo-paper/lr1e-04-seed0",
        "slime/lr1e-03-seed1", "dpo/lr3e-04-seed1", "simpo/lr1e-04-seed1", "simpo-paper/lr1e-04-seed1",
        "slime/lr1e-03-seed2", "dpo/lr3e-04-seed2", "simpo/lr1e-04-seed2", "simpo-paper/lr1e-04-seed2",
    ]
    assert all(job.evals == (("ifeval", "greedy"),) for job in jobs)
    assert study.train_config(jobs[4], tmp_path).loss_params == {"beta": 2.5, "gamma": 1.375}
    # The IFBench part: the same runs, IFBench's evaluation instead.
    ifbench = study.ifeval_plan(tmp_path, "ifbench")
    assert [job.name for job in ifbench] == [job.name for job in jobs]
    assert all(job.evals == (("ifbench", "greedy"),) for job in ifbench)
    # Results of the IFEval part live in a tree of their own: the study's own files say nothing of them.
    write_eval(tmp_path / "ifeval", "base/seed0", "ifeval", "greedy", ifeval={})
    assert [job.name for job in study.pending(tmp_path / "ifeval", jobs)][:1] == ["slime/lr1e-03-seed0"]
    assert study.pending(tmp_path, jobs)[0].name == "base/seed0"


def write_ifeval(results: Path, name: str, flags: dict[str, list[bool]], per_instruction: dict,
                 benchmark: str = "ifeval", **values) -> None:
    per_prompt = {key: {"strict": f, "loose": [True] * len(f)} for key, f in flags.items()}
    write_eval(results, name, benchmark, "greedy", wall_seconds=60.0, machine={"cpu": "Test CPU"},
               **{benchmark: {"per_prompt": per_prompt, "per_instruction": per_instruction, **values}})


def test_the_ifeval_section_gives_accuracies_trained_and_other_types_and_slime_minus_each_run(study, tmp_path):
    results, ifeval_results, doc = tmp_path / "results", tmp_path / "ifeval", tmp_path / "docs" / "results.md"
    grid_results(study, results, {(loss, lr): (0.5 if lr == 3e-4 else 0.1, 0.5)
                                  for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)})
    types = {"punctuation:no_comma": {"count": 2, "strict": 1.0, "loose": 1.0},  # a trained type
             "change_case:english_capital": {"count": 3, "strict": 1 / 3, "loose": 1.0},
             "detectable_format:title": {"count": 1, "strict": 0.0, "loose": 0.0}}
    write_ifeval(ifeval_results, "base/seed0", {"1": [False], "2": [False], "3": [True, False], "4": [False]},
                 types, prompt_level_strict=0.0)
    for seed, level in ((0, 0.5), (1, 0.7)):
        write_ifeval(ifeval_results, study.run_name("slime", 3e-4, seed),
                     {"1": [True], "2": [True], "3": [True, True], "4": [seed == 1]}, types, prompt_level_strict=level)
    (ifeval_results / "reading.md").write_text("IFEval words by hand.")
    study.report(results, doc, tmp_path / "docs" / "img", ifeval_results, tmp_path / "ifbench")
    text = doc.read_text()
    section = text[text.index("## The study re-scored on IFEval"):]
    assert "IFEval words by hand." in section
    slime = [c.strip() for c in next(line for line in section.splitlines()
                                      if line.startswith("| slime (lr 3e-04)")).strip("|").split("|")]
    assert slime[1] == "0.600 ± 0.141 (2)"  # prompt-level strict of the two seeds: 0.5, 0.7
    assert slime[7] == "1.000 ± 0.000 (2)"  # trained types: no_comma, 2 of 2
    assert slime[8] == "0.250 ± 0.000 (2)"  # other types: (1/3 * 3 + 0 * 1) / 4
    base = [c.strip() for c in next(line for line in section.splitlines() if line.startswith("| base ")).strip("|").split("|")]
    assert base[1] == "0.000 (1)"
    # Per prompt: SLIME follows 3 of 4 (seed 0) and 4 of 4 (seed 1), the base 0 of 4: +0.875 strict;
    # loose is all-true on both sides: 0.
    diff = next(line for line in section.splitlines() if line.startswith("| slime (lr 3e-04) − base"))
    strict, loose = (c.strip() for c in diff.strip("|").split("|")[1:3])
    # Identical sides: every draw is 0, so p is 1 (Holm's adjustment cannot raise it further).
    assert strict.startswith("+0.875 [") and loose == "+0.000 [+0.00, +0.00] p 1, Holm 1"
    assert ("Not run yet: dpo/lr3e-04-seed0, simpo/lr3e-04-seed0, simpo-paper/lr3e-04-seed0, dpo/lr3e-04-seed1, "
            "simpo/lr3e-04-seed1, simpo-paper/lr3e-04-seed1, slime/lr3e-04-seed2, dpo/lr3e-04-seed2, "
            "simpo/lr3e-04-seed2, simpo-paper/lr3e-04-seed2.") in section
    assert "Test CPU" in section

    # SLIME's grid made again, half-way (1e-4 today, now ahead): the IFEval part plans nothing at a rate
    # from mixed results, and the section still shows the runs it has.
    (results / "runs" / "slime/lr1e-04-seed0" / "train.json").write_text(json.dumps({"tokenization": TODAY}))
    write_eval(results, "slime/lr1e-04-seed0", "validation", "greedy", constraint_pass_rate=0.9, accuracy=0.5)
    for name in ("slime/lr3e-04-seed0", "slime/lr1e-03-seed0"):
        (results / "runs" / name / "train.json").write_text(json.dumps({"options": {}}))  # before the fix
    assert not any(job.loss == "slime" for job in study.ifeval_plan(results))
    section = study.ifeval_section(ifeval_results, results)
    assert any(line.startswith("| slime (lr 3e-04) | 0.600 ± 0.141 (2)") for line in section)


def test_the_ifbench_section_gives_accuracies_per_category_and_each_run_minus_each_other(study, tmp_path):
    results, ifbench_results, doc = tmp_path / "results", tmp_path / "ifbench", tmp_path / "docs" / "results.md"
    grid_results(study, results, {(loss, lr): (0.5 if lr == 3e-4 else 0.1, 0.5)
                                  for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)})
    study.report(results, doc, tmp_path / "docs" / "img", tmp_path / "ifeval", ifbench_results)
    assert "No IFBench result yet (`python scripts/study.py ifbench` runs them)." in doc.read_text()
    types = {"count:numbers": {"count": 2, "strict": 0.5, "loose": 0.5},
             "count:pronouns": {"count": 2, "strict": 1.0, "loose": 1.0},
             "format:emoji": {"count": 1, "strict": 0.0, "loose": 1.0}}
    write_ifeval(ifbench_results, "base/seed0", {"1": [False], "2": [True, False]}, types, "ifbench",
                 prompt_level_strict=0.0)
    for seed, level in ((0, 0.5), (1, 1.0)):
        write_ifeval(ifbench_results, study.run_name("slime", 3e-4, seed), {"1": [True], "2": [seed == 1, True]},
                     types, "ifbench", prompt_level_strict=level)
    write_ifeval(ifbench_results, study.run_name("dpo", 3e-4, 0), {"1": [True], "2": [False, True]}, types, "ifbench",
                 prompt_level_strict=0.5)
    (ifbench_results / "reading.md").write_text("IFBench words by hand.")
    study.report(results, doc, tmp_path / "docs" / "img", tmp_path / "ifeval", ifbench_results)
    text = doc.read_text()
    start = text.index("## The same study on IFBench (282 of 300 prompts")
    section = text[start : text.index("\n## ", start + 1)]
    assert "IFBench words by hand." in section and "No IFBench result yet" not in section
    assert "| run | count (4) | format (1) |" in section  # instructions per category
    rows = [line for line in section.splitlines() if line.startswith("| slime (lr 3e-04) |")]
    accuracy, category = ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    assert accuracy[1] == "0.750 ± 0.354 (2)"  # prompt-level strict of the two seeds: 0.5, 1.0
    assert category[1:] == ["0.750 ± 0.000 (2)", "0.000 ± 0.000 (2)"]  # count: (0.5 * 2 + 1.0 * 2) / 4
    # Per prompt: SLIME follows 1 of 2 (seed 0) and 2 of 2 (seed 1), DPO 1 of 2, the base 0 of 2. SLIME's
    # rows first, then the other pair, the later row of the table minus the earlier.
    diffs = [[c.strip() for c in line.strip("|").split("|")[:2]] for line in section.splitlines()
             if " − " in line and line.startswith("| ")]
    assert [(name, strict.split(" [")[0]) for name, strict in diffs] == [
        ("slime (lr 3e-04) − base", "+0.750"), ("slime (lr 3e-04) − dpo (lr 3e-04)", "+0.250"),
        ("dpo (lr 3e-04) − base", "+0.500")]
    assert "| cut at 256 | length (tokens) |" in section and "Test CPU" in section
    assert "no run here has its answers stored, so how many were cut is not known" in section
    assert "m = 6 comparisons of this table" in section  # 3 pairs x strict and loose
    assert "IFBench evaluations" in section and "for 282 of 300 prompts" in section
    assert "Not run yet: simpo/lr3e-04-seed0," in section


def write_answers(results: Path, name: str, health: dict[str, tuple[bool, int]], benchmark: str = "ifeval") -> None:
    """Stored answers of a benchmark part: per prompt key, ``(ended, length_tokens)`` of its health."""
    path = results / "runs" / name / f"generations-{benchmark}-greedy.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"key": int(key), "prompt": "p", "response": "r", "health": {
            "ended": ended, "empty": False, "repetition": 0.0, "degenerate": False, "length_tokens": length}}) + "\n"
            for key, (ended, length) in health.items())


def write_metrics(results: Path, name: str, losses: list[float], **train) -> None:
    folder = results / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": i + 1, "split": "train", "loss": loss, "grad_norm": 1.0, "tokens_per_second": 100.0 + i * len(train)})
        + "\n" for i, loss in enumerate(losses)))
    if train:
        (folder / "train.json").write_text(json.dumps(train))


def test_the_ifeval_section_shows_each_runs_cut_answers_and_the_prompts_no_cut_fails_by_itself(study, tmp_path,
                                                                                                 monkeypatch):
    results, ifeval_results = tmp_path / "results", tmp_path / "ifeval"
    grid_results(study, results, {(loss, lr): (0.5 if lr == 3e-4 else 0.1, 0.5)
                                  for loss in ("slime", "dpo", "simpo") for lr in (3e-4, 1e-4, 1e-3)})
    types = {"punctuation:no_comma": {"count": 5, "strict": 0.5, "loose": 0.5},
             "change_case:english_capital": {"count": 1, "strict": 0.0, "loose": 0.0}}
    write_ifeval(ifeval_results, "base/seed0", {"1": [False], "2": [False], "3": [True, False], "4": [False]},
                 types, prompt_level_strict=0.0, provenance={"decoding": {"max_new_tokens": 256}})
    # The base model: prompts 1 and 2 cut at the budget; 3 did not end but stopped short of it (not cut).
    write_answers(ifeval_results, "base/seed0", {"1": (False, 256), "2": (False, 256), "3": (False, 100), "4": (True, 9)})
    for seed in (0, 1):
        name = study.run_name("slime", 3e-4, seed)
        write_ifeval(ifeval_results, name, {"1": [True], "2": [True], "3": [True, True], "4": [seed == 1]}, types,
                     prompt_level_strict=0.5)
        write_answers(ifeval_results, name, {"1": (seed == 1, 256), "2": (True, 50), "3": (True, 50), "4": (True, 50)})
        # Seed 0 trained as the constraint study's run did; seed 1 on another CPU (its losses differ a little).
        write_metrics(ifeval_results, name, [0.7, 0.5], wall_seconds=60.0)
        write_metrics(results, name, [0.7, 0.5 + 0.001 * seed])
    # Prompts 1 and 3 have an instruction about how the answer ends.
    monkeypatch.setattr(study, "bench_instruction_ids", lambda runs, benchmark: {
        "1": ["startend:end_checker"], "2": ["punctuation:no_comma"],
        "3": ["detectable_content:postscript", "keywords:existence"], "4": ["change_case:english_capital"]})
    section = study.ifeval_section(ifeval_results, results)
    headers = next(line for line in section if line.startswith("| run |"))
    assert headers.endswith("| cut at 256 | length (tokens) | instr. strict, trained types | instr. strict, other types "
                            "| prompt-level strict, the 2 prompts with no instruction on the answer's end |")
    base = [c.strip() for c in next(line for line in section if line.startswith("| base |")).strip("|").split("|")]
    slime = [c.strip() for c in next(line for line in section if line.startswith("| slime (lr 3e-04) |")).strip("|").split("|")]
    assert base[5] == "0.500 (1)" and slime[5] == "0.125 ± 0.177 (2)"  # cut: 2 of 4; 1 of 4 and 0 of 4
    # On prompts 2 and 4: the base follows neither; SLIME's seed 0 one of two, seed 1 both.
    assert base[9] == "0.000 (1)" and slime[9] == "0.750 ± 0.354 (2)"
    text = "\n".join(section)
    assert "the runs are not cut alike" in text and "base 0.50, slime 0.00–0.25." in text
    assert "all but the 2 that have an instruction of one of the types" in text
    # Cut answers to those prompts: the base model's to prompt 1 (end_checker not followed), SLIME seed 0's (followed).
    assert "over every run, these many still followed the instruction: `end_checker` 1 of 2)" in text
    diff = next(line for line in section if line.startswith("| slime (lr 3e-04) − base"))
    assert diff.split("|")[4].strip().startswith("+0.750 [")  # strict on prompts 2 and 4: 0.75 − 0
    assert "| difference | strict | loose | strict, the 2 prompts with no instruction on the answer's end |" in text
    assert "m = 3 comparisons of this table" in text  # one pair, three columns
    assert ("1 of the 2 logged the very training of the run of the same name in the tables above (every logged loss, "
            "log-probability and gradient norm equal at every logged step: slime seed 0); 1 did not (slime seed 1; "
            "their logged losses differ from it by at most 0.001") in text
    # Without the prompts file (or with another one) the column is left out, and the page says why.
    monkeypatch.setattr(study, "bench_instruction_ids", lambda runs, benchmark: None)
    section = study.ifeval_section(ifeval_results, results)
    assert not any("no instruction on the answer's end |" in line for line in section)
    assert any("The column of the prompts with no instruction on the answer's end is left out" in line
               for line in section)


def test_training_difference_tells_the_same_training_from_another_cpus(study, tmp_path):
    write_metrics(tmp_path / "a", "r", [0.7, 0.5])
    write_metrics(tmp_path / "b", "r", [0.7, 0.5], wall_seconds=1.0)  # other timings: not compared
    write_metrics(tmp_path / "c", "r", [0.7, 0.52])
    write_metrics(tmp_path / "d", "r", [0.7])
    a = tmp_path / "a" / "runs" / "r"
    assert study.training_difference(a, tmp_path / "b" / "runs" / "r") == (True, 0.0)
    same, gap = study.training_difference(a, tmp_path / "c" / "runs" / "r")
    assert not same and gap == pytest.approx(0.02)
    assert study.training_difference(a, tmp_path / "d" / "runs" / "r") is None  # other steps
    assert study.training_difference(a, tmp_path / "missing") is None


def test_the_grid_says_which_losses_chose_its_largest_rate(study, tmp_path):
    grid_results(study, tmp_path, {
        ("slime", 3e-4): (0.5, 0.5), ("slime", 1e-4): (0.4, 0.5), ("slime", 1e-3): (0.7, 0.5),
        ("dpo", 3e-4): (0.6, 0.5), ("dpo", 1e-4): (0.4, 0.5), ("dpo", 1e-3): (0.5, 0.5),
        ("simpo", 3e-4): (0.2, 0.5), ("simpo", 1e-4): (0.1, 0.5), ("simpo", 1e-3): (0.3, 0.5),
    })
    text = "\n".join(study.grid_section(tmp_path, study.load_results(tmp_path)))
    assert ("2 of the 3 grids chose their largest rate, 1e-03: slime, simpo. A grid cannot see past its end: for these "
            "losses the best rate may lie above 1e-03, which no run tried. Validation pass rate from 3e-04 to 1e-03: "
            "slime 0.50 → 0.70; simpo 0.20 → 0.30.") in text
    grid_results(study, tmp_path, {("slime", 1e-3): (0.1, 0.5), ("simpo", 1e-3): (0.1, 0.5)})
    assert "largest rate" not in "\n".join(study.grid_section(tmp_path, study.load_results(tmp_path)))


def test_topic_overlap_counts_prompts_that_share_a_tip_with_a_training_prompt(study, load_script, tmp_path):
    assert study.TIP_TEMPLATES == load_script("make_onpolicy_data").TIP_REQUESTS
    note = "Write a short note to a friend who wants to know whether to {}."
    prompts = {
        "train.jsonl.gz": ["Why should I drink water? Answer in at most 20 words.", note.format("sleep early") + " No commas."],
        "validation.jsonl.gz": ["Hi! Why should I sleep early? Use 2 bullets."],  # the other request of a trained tip
        "test.jsonl.gz": [note.format("drink water") + " Use 3 bullets.", "Why should I walk daily?", "Any tips for sleep?"],
        # Split by family: a training prompt's very request, with another constraint; and a tip of another request.
        "test_heldout_family.jsonl.gz": ["Why should I drink water? Include the word 'fresh'.",
                                         "Why should I sleep early? Include the word 'calm'."],
    }
    for file, texts in prompts.items():
        with gzip.open(tmp_path / file, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"prompt": text}) + "\n" for text in texts)
    assert study.tip_overlap(tmp_path) == {"validation": (1, 1, 0), "test": (1, 3, 0), "heldout": (2, 2, 1)}
    assert ("Prompts that ask about a tip a training prompt asks about: validation 1 of 1; test 1 of 3; held-out "
            "family 2 of 2 (1 of them in the very request of a training prompt, with another constraint).") in (
        study.overlap_note(tmp_path))
    assert study.overlap_note(tmp_path / "missing") == ""


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["ifeval", "ifbench"])
def test_the_ifeval_part_trains_answers_scores_and_resumes_on_a_tiny_model(study, tmp_path, tiny_model_dir, monkeypatch,
                                                                            benchmark):
    from slimepo.eval import ifeval

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"prompt": f"Say something about the {w}.", "chosen": f"The {w} is good.", "rejected": f"The {w} is bad."}
            for w in ["river", "garden", "train", "letter", "forest", "window", "market", "bridge"]]
    with gzip.open(data / "train.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    records = ifeval.scorable(ifeval.load_prompts(benchmark=benchmark), benchmark)[0][:3]

    def load_prompts(path=None, benchmark="ifeval"):
        assert path is None and benchmark == asked  # the part's own benchmark
        return [dict(r) for r in records]

    asked = benchmark
    monkeypatch.setattr(ifeval, "load_prompts", load_prompts)
    monkeypatch.setattr(study, "MODEL", str(tiny_model_dir))
    monkeypatch.setattr(study, "BASE_OPTIONS", {**study.BASE_OPTIONS, "dataset": str(data / "train.jsonl.gz"),
                                                "eval_dataset": None, "eval_split": "train", "monitor_steps": 0})
    monkeypatch.setattr(study, "BENCH_LOSSES", ("slime",))
    monkeypatch.setattr(study, "SEEDS", (0,))
    monkeypatch.setattr(study, "IFEVAL_MAX_NEW_TOKENS", 4)
    study_results, results, runs = tmp_path / "study", tmp_path / "ifeval", tmp_path / "runs"
    grid_results(study, study_results, {("slime", lr): (0.9 if lr == 1e-3 else 0.1, 0.5) for lr in (3e-4, 1e-4, 1e-3)})
    monkeypatch.setattr(study, "GRID_LOSSES", ("slime",))

    assert study.run(results, runs, None, None, plan_jobs=lambda: study.ifeval_plan(study_results, benchmark)) == 2
    for name in ("base/seed0", "slime/lr1e-03-seed0"):
        evaluation = json.loads((results / "runs" / name / f"eval-{benchmark}-greedy.json").read_text())[benchmark]
        assert evaluation["prompts"] == 3 and set(evaluation["per_prompt"]) == {str(r["key"]) for r in records}
        strict = [all(f["strict"]) for f in evaluation["per_prompt"].values()]
        assert evaluation["prompt_level_strict"] == sum(strict) / 3
        assert evaluation["provenance"]["decoding"] == {"max_new_tokens": 4, "sampling": False, "seed": 0}
        assert evaluation["settings"]["dtype"] == "bfloat16"
        assert evaluation["provenance"]["questions_file"] == str(ifeval.find_prompts(benchmark))
        assert ("left_out" in evaluation) == (benchmark == "ifbench")
        with gzip.open(results / "runs" / name / f"generations-{benchmark}-greedy.jsonl.gz", "rt") as f:
            assert len(f.readlines()) == 3
    train = json.loads((results / "runs" / "slime" / "lr1e-03-seed0" / "train.json").read_text())
    assert train["options"]["mixed_precision"] == "no" and train["learning_rate"] == 1e-3
    assert study.run(results, runs, None, None, plan_jobs=lambda: study.ifeval_plan(study_results, benchmark)) == 0


def test_rescore_checks_stored_answers_again_and_keeps_what_the_run_wrote(study, tmp_path):
    name = "slime/lr1e-03-seed0"
    rows = [  # the first verdict is wrong (three bullets, two asked), as an older checker could have had it
        {"origin": "test.jsonl.gz:1", "response": "* a\n* b\n* c",
         "checks": {"health": {"ended": True}, "constraint": {"family": "bullet_count", "params": {"n": 2},
                                                               "passed": True, "detail": "ok"}}},
        {"origin": "test.jsonl.gz:2", "response": "No commas here.",
         "checks": {"health": {"ended": True}, "constraint": {"family": "no_commas", "params": {},
                                                               "passed": True, "detail": "ok"}}},
    ]
    as_run = {"constraint_pass_rate": 1.0, "constraint_pass_rate_by_family": {"bullet_count": 1.0, "no_commas": 1.0},
              "constraints_checked": 2, "constraints_invalid": 0}
    write_eval(tmp_path, name, "test", "greedy", accuracy=0.7, **as_run)
    generations = tmp_path / "runs" / name / "generations-test-greedy.jsonl.gz"
    with gzip.open(generations, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    assert study.rescore(tmp_path) == ["slime/lr1e-03-seed0 test/greedy: 1 verdict(s) changed, pass rate 1.000 -> 0.500"]
    evaluation = json.loads((tmp_path / "runs" / name / "eval-test-greedy.json").read_text())
    assert evaluation["constraint_pass_rate"] == 0.5 and evaluation["accuracy"] == 0.7
    assert evaluation["constraint_pass_rate_by_family"] == {"bullet_count": 0.0, "no_commas": 1.0}
    assert evaluation["constraints_as_run"] == as_run
    with gzip.open(generations, "rt", encoding="utf-8") as f:
        first, second = (json.loads(line) for line in f)
    assert first["checks"]["constraint"]["passed"] is False
    assert first["checks"]["constraint"]["as_run"] == {"passed": True, "detail": "ok"}
    assert first["checks"]["health"] == {"ended": True} and second == rows[1]
    assert study.prompt_passes(tmp_path, name, "test", "greedy") == {"test.jsonl.gz:1": 0.0, "test.jsonl.gz:2": 1.0}
    assert study.rescore(tmp_path) == []  # nothing left to change
    assert study.rescored(tmp_path) == (1, 2)
