"""``slimepo iterate`` on the tiny model: each round is plain ``slimepo pairs`` + ``slimepo train`` +
``slimepo eval`` from the previous round's policy; kills at every stage resume to the uninterrupted
loop's outputs bit for bit; options are checked by stage; the rounds report reads what the loop wrote."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from slimepo.cli import main
from slimepo.config import ConfigError, TrainConfig
from slimepo.fingerprint import weights_sha256
from slimepo.iterate import IterateConfig, iterate
from slimepo.iterate.run import _write_round_prompts
from slimepo.pairs.compose import make_prompts
from slimepo.pairs.config import MakePromptsConfig
from slimepo.train import train

WORKER = Path(__file__).with_name("iterate_worker.py")
#: Instruction types whose checks a tiny random model passes now and then, so its answers differ in score.
VARYING_TYPES = ["keywords:letter_frequency", "punctuation:no_comma", "change_case:english_lowercase"]
HELD_OUT = [
    {"prompt": "Describe the sea.", "chosen": "the sea is wide.", "rejected": "The Sea.",
     "constraint": {"family": "lowercase"}},
    {"prompt": "Name a city.", "chosen": "Paris.", "rejected": "The capital of France is Paris.",
     "constraint": {"family": "max_words", "params": {"n": 3}}},
    {"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five."},
]
TRAIN = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "warmup_ratio": 0.0, "save_steps": 1, "logging_steps": 1, "lora_r": 4, "lora_alpha": 8,
         "max_length": 128, "max_prompt_length": 64, "dtype": "float32", "monitor_steps": 0}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("iterate-inputs")
    prompts = root / "prompts.jsonl"
    make_prompts(MakePromptsConfig(out=str(prompts), instruction_types=VARYING_TYPES, max_instructions=2))
    held_out = root / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT), encoding="utf-8")
    return {"model": str(tiny_model_dir), "prompts": str(prompts), "held_out": str(held_out)}


def options(inputs, out, loss="slime", **loop):
    return {
        "model": inputs["model"], "rounds": 2, "out": str(out), "prompts_per_round": 8,
        "pairs": {"prompts": inputs["prompts"], "k": 6, "max_new_tokens": 12, "scorer": "ifeval", "batch_size": 4},
        "train": {**TRAIN, "loss": loss},
        "eval": {"dataset": inputs["held_out"], "split": "train", "max_new_tokens": 6},
        **loop,
    }


@pytest.fixture(scope="module")
def dpo_loop(inputs, tmp_path_factory):
    """A finished 2-round DPO loop (a reference-based loss: the reference matters)."""
    given = options(inputs, tmp_path_factory.mktemp("dpo") / "loop", loss="dpo", benchmarks=["ifeval"])
    given["eval"].update(max_prompts=3, bench_max_new_tokens=8)
    config = IterateConfig(**given)
    return config, iterate(config)


def tensors(folder):
    return load_file(str(next(Path(folder).glob("*.safetensors"))))


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- each round is the plain commands ----------------------------------------------------------


def test_round_two_trains_exactly_as_slimepo_train_on_its_pairs_from_round_one_policy(dpo_loop, tmp_path):
    config, result = dpo_loop
    loop = Path(config.out)
    round1_policy = loop / "round-1" / "train" / "merged"
    assert result.rounds[2]["start"] == str(round1_policy)
    plain = train(TrainConfig(model=str(round1_policy), dataset=str(loop / "round-2" / "pairs" / "pairs.jsonl"),
                              eval_dataset=config.eval["dataset"], eval_split="train", output_dir=str(tmp_path / "plain"),
                              loss="dpo", **TRAIN))
    assert plain.global_step == 2
    assert_same_tensors(tensors(tmp_path / "plain"), tensors(loop / "round-2" / "train"))


def test_each_policy_is_its_start_with_the_round_adapter_merged(dpo_loop):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, _ = dpo_loop
    loop = Path(config.out)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    for start, round_dir in ((Path(config.model), loop / "round-1"), (loop / "round-1" / "train" / "merged", loop / "round-2")):
        base = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32).eval()
        with torch.no_grad():
            before = base(ids).logits
            expected = PeftModel.from_pretrained(base, round_dir / "train").eval()(ids).logits
            merged = AutoModelForCausalLM.from_pretrained(round_dir / "train" / "merged", dtype=torch.float32).eval()
            got = merged(ids).logits
        moved = (got - before).abs().max()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert moved > 1e-4  # the adapter trained: the policy is not its start


def test_each_round_samples_from_the_policy_it_starts_from_under_its_own_seed(dpo_loop):
    from transformers import AutoModelForCausalLM

    config, _ = dpo_loop
    loop = Path(config.out)
    starts = {1: Path(config.model), 2: loop / "round-1" / "train" / "merged"}
    prompt_keys = [json.loads(line)["key"] for line in Path(config.pairs["prompts"]).read_text().splitlines()]
    for index, start in starts.items():
        samples = [json.loads(line) for line in (loop / f"round-{index}" / "pairs" / "samples.jsonl").read_text().splitlines()]
        expected = weights_sha256(AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32))
        assert {s["made_by"]["weights_sha256"] for s in samples} == {expected}
        assert {s["made_by"]["decoding"]["seed"] for s in samples} == {index - 1}
        keys = {s["key"] for s in samples}
        assert keys == set(prompt_keys[(index - 1) * 8 : index * 8])  # fresh prompts each round


def test_every_round_answers_the_benchmarks_into_its_own_folder_and_records_their_scores(dpo_loop):
    config, result = dpo_loop
    for index in (0, 1, 2):
        folder = Path(config.out) / f"round-{index}" / "eval-ifeval"
        answered = json.loads((folder / "eval.json").read_text())
        assert answered["ifeval"]["prompts"] == 3
        assert answered["settings"]["model"] == result.rounds[index]["policy"]
        assert result.rounds[index]["eval"]["ifeval"]["prompt_level_strict"] == answered["ifeval"]["prompt_level_strict"]
        assert not (folder / "generations.jsonl").exists()  # the eval stage generated on the held-out prompts


def test_drift_is_measured_against_the_initial_model_every_round(dpo_loop):
    config, result = dpo_loop
    zero = json.loads((Path(config.out) / "round-0" / "eval" / "eval.json").read_text())
    assert zero["drift"]["chosen_drift_mean"] == 0.0  # the initial model against itself
    for index in (1, 2):
        evaluation = json.loads((Path(config.out) / f"round-{index}" / "eval" / "eval.json").read_text())
        assert evaluation["settings"]["base"] == config.model
        assert evaluation["settings"]["model"] == str(Path(config.out) / f"round-{index}" / "train" / "merged")
        assert result.rounds[index]["eval"]["drift"] == evaluation["drift"]
        # chosen drift is the policy's mean chosen log-lik minus the initial model's
        assert evaluation["drift"]["chosen_drift_mean"] == pytest.approx(
            evaluation["chosen_logp_mean"] - zero["chosen_logp_mean"], abs=1e-6)


@pytest.mark.parametrize("reference, expected", [("previous", None), ("initial", "initial")])
def test_the_reference_of_later_rounds_is_the_previous_policy_or_the_initial_model(inputs, tmp_path, reference, expected):
    config = IterateConfig(**options(inputs, tmp_path / "loop", loss="dpo", reference=reference))
    assert config.stage_configs(1, "start-1")[1].ref_model is None  # round 1: the initial model either way
    round2 = config.stage_configs(2, "start-2")[1]
    assert round2.ref_model == (inputs["model"] if expected == "initial" else None)


def test_a_dpo_round_records_its_reference_and_a_slime_round_none(dpo_loop, inputs):
    _, result = dpo_loop
    assert [r.get("reference") for r in result.rounds[1:]] == [r["start"] for r in result.rounds[1:]]
    config = IterateConfig(**options(inputs, "unused"))
    from slimepo.iterate.run import _reference

    assert _reference(config.stage_configs(2, "x")[1], "x") is None


# --- resuming ----------------------------------------------------------------------------------


def run_worker(config_file, point=None):
    command = [sys.executable, str(WORKER), str(config_file), *(["--die-at", point] if point else [])]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_kills_at_every_stage_resume_to_the_uninterrupted_loop_bit_for_bit(inputs, tmp_path):
    # Both loops run in subprocesses alike (same threads, same process start).
    reference_file, killed_file = tmp_path / "reference.json", tmp_path / "killed.json"
    reference_file.write_text(json.dumps(options(inputs, tmp_path / "reference")))
    killed_file.write_text(json.dumps(options(inputs, tmp_path / "killed")))
    done = run_worker(reference_file)
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-3000:]

    # In loop order: round 0's evaluation, round 1's sampling, a checkpoint, the model card, round 1's
    # evaluation, round 1's record, then round 2's training before its first checkpoint.
    for point in ("eval", "sampling", "checkpoint", "model-card", "eval", "round-record", "before-checkpoint"):
        died = run_worker(killed_file, point)
        assert died.returncode == 9, f"{point}: {died.returncode}\n{died.stderr[-3000:]}"
    landed = {r: json.loads((tmp_path / "killed" / f"round-{r}" / "round.json").read_text()) for r in (0, 1)}
    assert not (tmp_path / "killed" / "round-2" / "round.json").exists()
    assert landed[0]["resumed_stages"] == ["eval"]
    assert landed[1]["resumed_stages"] == ["pairs", "train", "train", "eval"]
    done = run_worker(killed_file)
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-3000:]

    for index in (1, 2):
        ours, theirs = tmp_path / "killed" / f"round-{index}", tmp_path / "reference" / f"round-{index}"
        assert (ours / "pairs" / "pairs.jsonl").read_bytes() == (theirs / "pairs" / "pairs.jsonl").read_bytes()
        # every answer, in the same order; rows are named by their file, which is in each loop's own folder
        assert (ours / "pairs" / "samples.jsonl").read_text().replace(str(tmp_path / "killed"), "LOOP") == \
            (theirs / "pairs" / "samples.jsonl").read_text().replace(str(tmp_path / "reference"), "LOOP")
        assert_same_tensors(tensors(ours / "train"), tensors(theirs / "train"))
        assert_same_tensors(tensors(ours / "train" / "merged"), tensors(theirs / "train" / "merged"))
    for index in (0, 1, 2):
        ours = json.loads((tmp_path / "killed" / f"round-{index}" / "eval" / "eval.json").read_text())
        theirs = json.loads((tmp_path / "reference" / f"round-{index}" / "eval" / "eval.json").read_text())
        ours["settings"].pop("model"), theirs["settings"].pop("model")
        assert ours == theirs


def test_a_finished_loop_given_more_rounds_continues_and_other_options_are_refused(dpo_loop, tmp_path):
    config, _ = dpo_loop
    copy = tmp_path / "loop"
    shutil.copytree(config.out, copy)
    saved = yaml.safe_load((copy / "iterate.yaml").read_text())
    with pytest.raises(FileExistsError, match=r"train: .*learning_rate"):
        iterate(IterateConfig(**{**saved, "out": str(copy), "train": {**saved["train"], "learning_rate": 0.5}}))
    yaml_text = yaml.safe_dump({**saved, "out": str(copy)})
    (copy / "iterate.yaml").write_text(yaml_text)  # the copy's own folder
    before = {i: (copy / f"round-{i}" / "round.json").read_text() for i in (0, 1, 2)}
    # round 3 needs prompt rows 17-24: the composed set has them
    result = iterate(IterateConfig(**{**saved, "out": str(copy), "rounds": 3}))
    assert [r["round"] for r in result.rounds] == [0, 1, 2, 3]
    assert {i: (copy / f"round-{i}" / "round.json").read_text() for i in (0, 1, 2)} == before
    assert result.rounds[3]["start"] == result.rounds[2]["policy"]


def test_a_folder_that_is_not_a_loop_is_refused(inputs, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a loop folder"):
        iterate(IterateConfig(**options(inputs, tmp_path / "busy")))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_prompts_beyond_the_set_are_refused_naming_the_rows(inputs, tmp_path):
    config = IterateConfig(**options(inputs, tmp_path / "loop", prompts_per_round=1000))
    _write_round_prompts(config, 1, tmp_path / "p1.jsonl")
    with pytest.raises(ConfigError, match=r"round 2 needs prompt rows 1001-2000"):
        _write_round_prompts(config, 2, tmp_path / "p2.jsonl")


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"train": {"model": "x"}}, r"train: the loop sets model itself"),
    ({"train": {"output_dir": "x"}}, r"train: the loop sets output_dir itself; use out"),
    ({"pairs": {"out": "x"}}, r"pairs: the loop sets out itself"),
    ({"eval": {"base": "x"}}, r"eval: the loop sets base itself; use nothing: drift is always measured against the initial"),
    ({"train": {"learnig_rate": 1.0}}, r"train \(slimepo iterate\): unknown option 'learnig_rate'; did you mean 'learning_rate'"),
    ({"pairs": {"k": 0}}, r"pairs: k:"),
    ({"train": {"loss": "kto"}}, r"train: loss kto trains on unpaired examples"),
    ({"train": {"load_in_4bit": True}}, r"train: load_in_4bit: the loop merges"),
    ({"train": {"frozen_dtype": "bfloat16", "mixed_precision": "bf16"}}, r"train: frozen_dtype: bfloat16 rounds"),
    ({"pairs": {"max_prompts": 3}}, r"pairs: max_prompts and prompts_per_round both"),
    ({"rounds": 0}, r"rounds: must be a whole number >= 1"),
    ({"reference": "best"}, r"reference"),
    ({"eval": {"bench": "ifeval"}}, r"eval: the loop sets bench itself; use benchmarks"),
    ({"benchmarks": ["ifeval", "nope"]}, r"benchmarks: each once, of mt-bench"),
    ({"benchmarks": ["ifeval", "ifeval"]}, r"benchmarks: each once"),
    ({"eval": {"max_new_tokens": 0}}, r"eval: max_new_tokens"),
    ({"eval": {"engine": "openai", "engine_url": "http://127.0.0.1:9/v1"}, "benchmarks": ["ifeval"]},
     r"eval: engine: every round evaluates"),
    ({"eval": {"engine": "vllm"}}, r"eval: engine answer or judge the benchmarks; add benchmarks"),
])
def test_options_are_checked_before_anything_runs_and_name_their_stage(inputs, tmp_path, change, message):
    given = options(inputs, tmp_path / "loop")
    for key, value in change.items():
        given[key] = {**given[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=message):
        IterateConfig(**given).validate()
    assert not (tmp_path / "loop").exists()


# --- command line and report -------------------------------------------------------------------


def test_cli_merges_stage_flags_over_the_file_and_reports_loops_side_by_side(inputs, dpo_loop, tmp_path, capsys):
    given = options(inputs, tmp_path / "slime", rounds=1)
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(given))
    assert main(["iterate", "--config", str(tmp_path / "loop.yaml"), "--train", "learning_rate=0.0002"]) == 0
    saved = yaml.safe_load((tmp_path / "slime" / "iterate.yaml").read_text())
    assert saved["train"] == {**TRAIN, "loss": "slime", "learning_rate": 0.0002}
    printed = capsys.readouterr().out
    assert "| round | pairs | chosen drift vs initial" in printed

    config, result = dpo_loop
    assert main(["report", config.out, str(tmp_path / "slime"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "`loop` (dpo" in report and "`slime` (slime" in report
    dpo_table = report.split("## loop", 1)[1].split("Each round's pairs", 1)[0]
    header = next(line for line in dpo_table.splitlines() if line.startswith("| round"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in dpo_table.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    for index, row in enumerate(rows):
        drift = result.rounds[index]["eval"]["drift"]["chosen_drift_mean"]
        assert row[columns.index("chosen drift vs initial (nats/token)")] == f"{drift:.4g}"
        strict = result.rounds[index]["eval"]["ifeval"]["prompt_level_strict"]
        assert row[columns.index("IFEval prompt strict")] == f"{strict:.4g}"
        answers = [json.loads(line) for line in
                   (Path(config.out) / f"round-{index}" / "eval-ifeval" / "ifeval" / "answers.jsonl").read_text().splitlines()]
        ended = sum(bool(a["health"]["ended"]) for a in answers) / len(answers)  # by hand from the answers
        assert row[columns.index("IFEval answers ended")] == f"{ended:.4g}"
        written = json.loads((Path(config.out) / f"round-{index}" / "eval" / "eval.json").read_text())
        p_end = written["end_of_turn"]["chosen"]["p_mean"]
        assert row[columns.index("p(end of turn) at held-out chosen ends")] == f"{p_end:.4g}"
    for image in ("drift.png", "end_of_turn.png"):
        assert (tmp_path / "report" / image).stat().st_size > 1000


def test_report_refuses_a_loop_beside_a_training_run(dpo_loop, tmp_path, capsys):
    config, _ = dpo_loop
    run = Path(config.out) / "round-1" / "train"
    assert main(["report", config.out, str(run), "--out", str(tmp_path / "r")]) == 2
    assert "is not a slimepo iterate folder" in capsys.readouterr().err


def test_the_option_table_of_docs_iterate_is_generated_from_iterate_config():
    from slimepo.options_doc import options_markdown

    text = (Path(__file__).resolve().parents[2] / "docs" / "iterate.md").read_text(encoding="utf-8")
    block = text.split("<!-- iterate-options:start -->\n", 1)[1].split("<!-- iterate-options:end -->", 1)[0]
    assert block == options_markdown(IterateConfig), f"replace the block with:\n{options_markdown(IterateConfig)}"


def test_a_run_is_finished_only_by_slimepos_model_card_not_by_pefts_readme(tmp_path):
    from slimepo.train.run import is_finished

    (tmp_path / "README.md").write_text("---\nlibrary_name: peft\n---\n# Model Card for Model ID\n")
    assert not is_finished(tmp_path)  # what PEFT's save_pretrained writes before slimepo's card
    (tmp_path / "README.md").write_text("# run\n\nTrained with [slimepo](https://pypi.org/project/slimepo/) using the")
    assert is_finished(tmp_path)


def test_the_shipped_loop_config_is_valid():
    from slimepo.config import load_yaml

    root = Path(__file__).resolve().parents[2]
    config = IterateConfig(**load_yaml(root / "configs" / "iterate-demo.yaml"))
    config.validate()
    assert config.benchmarks == ["ifeval"] and config.stage_configs(2, "x")[0].seed == 1
