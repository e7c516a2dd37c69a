"""Several CPU processes (torchrun, gloo) log the same losses as one process with the same global batch."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimepo import config as config_module
from slimepo.config import FSDP_MIN_VERSIONS, ConfigError, TrainConfig, fsdp_versions_too_old
from slimepo.data.batching import WholeRounds

from .ddp_worker import run_options
from .test_invariance import relative_difference, rows

WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
# Not loss/stabilizer: a logged term is each micro-batch's own mean, and SLIME's default
# stabilizer is a mean over tokens (2 + 2 pairs vs 4); the logged loss is the step's on both.
KEYS = ("loss", "loss/margin", "loss/anchor", "accuracy", "grad_norm")


def free_port() -> str:
    """A port no other test (or agent on this machine) is listening on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def worker_args(model, data: Path, out: Path, world: int, **overrides) -> list[str]:
    return [str(WORKER), str(model), str(data), str(out), str(world), json.dumps(overrides)]


def train_lines(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def run(world: int, model, data: Path, out: Path, **overrides) -> list[dict]:
    if world == 1:
        cmd = [sys.executable]
    else:
        cmd = [TORCHRUN, "--nproc_per_node", str(world), "--master_port", free_port()]
    result = subprocess.run([*cmd, *worker_args(model, data, out, world, **overrides)], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return train_lines(out)


def assert_same_losses(single: list[dict], other: list[dict], steps: int = 3) -> None:
    assert [r["step"] for r in single] == [r["step"] for r in other] == list(range(1, steps + 1))
    # SLIME with its defaults: every mean of the loss divides by the step's counts over all
    # processes (StepTotals), so 2 x 2 pairs give the loss of 4. What is left is float32
    # summation order across processes and padding widths: 1e-4 relative.
    for one, two in zip(single, other):
        for key in KEYS:
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (one["step"], key)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, toy_data, tmp_path_factory) -> Path:
    """The reference: one process, LoRA, batch of 4 pairs; its output folder."""
    out = tmp_path_factory.mktemp("one") / "run"
    run(1, tiny_model_dir, toy_data["train"].parent, out)
    return out


@pytest.mark.slow
def test_two_processes_log_the_same_losses_as_one_with_the_same_global_batch(
    one_process, tiny_model_dir, toy_data, tmp_path
):
    assert_same_losses(train_lines(one_process), run(2, tiny_model_dir, toy_data["train"].parent, tmp_path / "two"))


@pytest.mark.slow
def test_two_nodes_rendezvous_on_localhost_and_log_the_same_losses_as_one_process(
    one_process, tiny_model_dir, toy_data, tmp_path
):
    """Two torchrun launchers, one process each, as on two machines (--nnodes 2 --node-rank 0/1).

    Two independent 1-process runs would log each step twice, with a batch of 2 pairs, not 4."""
    out = tmp_path / "two-nodes"  # one path for both "nodes": a shared file system
    port = free_port()
    launchers = [
        subprocess.Popen(
            [TORCHRUN, "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
             "--master-addr", "127.0.0.1", "--master-port", port,
             *worker_args(tiny_model_dir, toy_data["train"].parent, out, 2)],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    logs = [launcher.communicate(timeout=600)[0] for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert_same_losses(train_lines(one_process), train_lines(out))


@pytest.mark.slow
def test_the_documented_torchrun_command_trains_as_one_process_and_exits_cleanly(
    one_process, tiny_model_dir, toy_data, tmp_path
):
    """``torchrun ... -m slimepo.cli train`` as README and docs/distributed.md give it, with the
    settings ddp_worker.py passes: the same losses as one process, one summary, exit status 0."""
    out = tmp_path / "cli"
    options = run_options(str(tiny_model_dir), toy_data["train"].parent, str(out), world=2)
    flags = [part for name, value in options.items() for part in ("--" + name.replace("_", "-"), str(value))]
    result = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", free_port(),
                             "-m", "slimepo.cli", "train", *flags], env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("3 optimizer steps. Outputs in") == 1, result.stdout  # process 0 alone reports
    assert (out / "adapter_model.safetensors").exists()
    assert_same_losses(train_lines(one_process), train_lines(out))


def test_accelerate_deals_whole_rounds_one_batch_per_process_and_repeats_no_pair():
    """9 pairs in batches of 4 on 2 processes: 4 | 4, then 1 | an empty batch (a stand-in)."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    batches = BatchSampler(range(9), 4, drop_last=False)
    # even_batches=False, as the trainer prepares this loader (accelerate < 1.4 refuses the default for a
    # sampler without a batch size; later versions leave whole rounds alone either way).
    shards = [BatchSamplerShard(WholeRounds(batches, 2), 2, rank, even_batches=False) for rank in (0, 1)]
    assert [list(shard) for shard in shards] == [[[0, 1, 2, 3], [8]], [[4, 5, 6, 7], []]]
    assert [len(shard) for shard in shards] == [2, 2]
    # What accelerate does by itself: the short round is filled from the start of the epoch.
    assert list(BatchSamplerShard(batches, 2, 0))[-1] == [8, 0, 1, 2]


def uneven_data(folder: Path, pairs: int) -> Path:
    """The first ``pairs`` of test_invariance's pairs, responses of 1 to 15 words (train.jsonl); 2 held out."""
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()[:pairs]))
    for name in ("eval.jsonl", "test.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows()[:2]))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("pairs", "batch", "accumulation"), [(7, 4, 1), (5, 2, 2)])
def test_a_short_last_step_on_two_processes_has_the_loss_and_gradient_of_one_process(
    pairs, batch, accumulation, tiny_model_dir, tmp_path
):
    """One optimizer step of 7 pairs as 4 | 3, and of 5 as (2 + 1) | (2 + an empty batch), against
    one process taking them all in a batch of 8 (full fine-tuning, fp32, grad_worker.py).

    With accelerate's own padding the short process repeated pairs from the start of the epoch:
    measured 0.20 (7 pairs) and 0.19 (5 pairs) relative off in gradient; now within 4e-7."""
    data = uneven_data(tmp_path / "data", pairs)
    grad_worker = str(WORKER.with_name("grad_worker.py"))
    outs = {world: tmp_path / f"world{world}" for world in (1, 2)}
    launch = {1: [sys.executable], 2: [TORCHRUN, "--nproc_per_node", "2", "--master_port", free_port()]}
    for world, args in ((1, ["8", "1"]), (2, [str(batch), str(accumulation)])):
        result = subprocess.run([*launch[world], grad_worker, str(tiny_model_dir), str(data), str(outs[world]), *args,
                                 "slime"], env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
    assert relative_difference(torch.load(outs[1] / "slime.pt"), torch.load(outs[2] / "slime.pt")) < 1e-5
    (one,), (two,) = (train_lines(outs[world] / "run-slime") for world in (1, 2))
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def unpaired_data(folder: Path, examples: int) -> Path:
    """``examples`` unpaired rows from test_invariance's pairs (completions of 1 to 15 words), the chosen
    response desirable and the rejected one undesirable in turn (train.jsonl); 2 held out."""
    folder.mkdir(parents=True)
    lines = [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 == 0 else r["rejected"], "label": i % 2 == 0}
             for i, r in enumerate(rows())]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:examples]))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))
    return folder


@pytest.fixture(scope="module")
def kto_one_process(tiny_model_dir, tmp_path_factory):
    """KTO's plain reference: one process takes each data set's one optimizer step whole, at batch 8.

    LoRA, with ``--ref-model`` the tiny model with a 3 times sharper output head: a reference unlike
    the policy at the first step, so the mismatched log-ratios, and z_0, are far from 0 (with the
    adapters' zero update every log-ratio would be 0); β = 1, so that z_0 moves the loss and the
    gradient visibly. Returns ``run(examples, world, batch,
    accumulation) -> (gradients, the step's train line)``, the 1-process runs made once."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("kto-split")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        reference.lm_head.weight.mul_(3.0)
    reference.save_pretrained(root / "sharp-reference")
    options = json.dumps({"use_lora": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                          "ref_model": str(root / "sharp-reference"), "loss_params": {"beta": 1.0}})
    grad_worker = str(WORKER.with_name("grad_worker.py"))
    done = {}

    def run_split(examples: int, world: int, batch: int, accumulation: int):
        key = (examples, world, batch, accumulation)
        if key not in done:
            data = root / f"data-{examples}"
            if not data.exists():
                unpaired_data(data, examples)
            out = root / "-".join(map(str, key))
            launch = [sys.executable] if world == 1 else [TORCHRUN, "--nproc_per_node", "2", "--master_port", free_port()]
            result = subprocess.run([*launch, grad_worker, str(tiny_model_dir), str(data), str(out), str(batch),
                                     str(accumulation), "kto", options], env=ENV, capture_output=True, text=True,
                                    timeout=600)
            assert result.returncode == 0, result.stderr[-4000:]
            (line,) = train_lines(out / "run-kto")
            done[key] = torch.load(out / "kto.pt"), line
        return done[key]

    return run_split


@pytest.mark.slow
@pytest.mark.parametrize(("examples", "world", "batch", "accumulation"), [
    (7, 1, 4, 2),  # 4 + 3 on one process: the step's pairs scored before its first micro-batch
    (7, 2, 4, 1),  # 4 | 3: each process's forward scores its part, summed over the two
    (7, 2, 2, 2),  # (2 + 2) | (2 + 1)
    (5, 2, 2, 2),  # (2 + 1) | (2 + an empty batch, a stand-in weighted 0)
])
def test_kto_reference_point_loss_and_lora_gradient_are_the_steps_however_it_is_split(
    examples, world, batch, accumulation, kto_one_process
):
    """One optimizer step of KTO on 7 (or 5) examples, split over processes and micro-batches, against
    one process taking it whole at batch 8: the same mismatched pairs (the step's examples rotated by
    one, StepRotation), the same z_0, loss and LoRA gradient.

    Before, with the pairs rotated within each micro-batch and z_0 estimated per micro-batch, z_0 was
    0.9851 (4 + 3), 1.0004 (4 | 3) and 0.9540 ((2 + 2) | (2 + 1)) against 0.9988 at batch 8, and the
    gradient 9.4e-4 (4 | 3) to 0.18 (5 examples) relative off; now z_0 is within 2e-6 relative and the
    gradient within 1.6e-6."""
    (expected, one), (got, split) = kto_one_process(examples, 1, 8, 1), kto_one_process(examples, world, batch, accumulation)
    assert one["reference_point"] > 0.1  # z_0 is in play: the clamp at 0 does not hide it
    for key in ("reference_point", "kl", "loss", "loss/desirable", "loss/undesirable"):
        assert split[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
    assert relative_difference(expected, got) < 1e-5


@pytest.mark.slow
def test_a_process_left_with_no_pair_in_the_last_step_trains_and_logs_as_one_process(tiny_model_dir, tmp_path):
    """5 pairs, 2 processes x 2: step 1 is 2 | 2, step 2 is 1 | nothing; one process x 4 takes 4, then 1.

    The empty process runs a stand-in pair weighted 0, so the gradient all-reduce still
    matches, and logs nothing of it; the logged terms, the grad norm and the trained adapter
    equal one process's."""
    data = uneven_data(tmp_path / "data", 5)
    single = run(1, tiny_model_dir, data, tmp_path / "one", max_steps=2)
    assert_same_losses(single, run(2, tiny_model_dir, data, tmp_path / "two", max_steps=2), steps=2)
    assert [r["batches"] for r in parameter_reports(tmp_path / "two", 2)] == [2, 2]
    expected, got = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_token_budget_batches_on_two_processes_train_as_one_process_accumulating_two(
    tiny_model_dir, toy_data, tmp_path
):
    """``--max-tokens-per-batch 150`` cuts the 14 toy pairs into 5 batches (3, 4, 3, 3, 1 pairs):
    one process accumulating 2 steps on (3 + 4), (3 + 3), (1); two processes on 3 | 4, 3 | 3, 1 | nothing."""
    data = toy_data["train"].parent
    single = run(1, tiny_model_dir, data, tmp_path / "one", max_tokens_per_batch=150, gradient_accumulation_steps=2)
    assert parameter_reports(tmp_path / "one", 1)[0]["batches"] == 5
    assert_same_losses(single, run(2, tiny_model_dir, data, tmp_path / "two", max_tokens_per_batch=150))
    assert [r["batches"] for r in parameter_reports(tmp_path / "two", 2)] == [3, 3]


def test_the_train_command_destroys_the_process_group_after_a_finished_run(monkeypatch, capsys, tmp_path):
    """Left to the interpreter's teardown, a live group warns (NCCL) or can abort a finished process (gloo)."""
    import torch.distributed as dist

    from slimepo import cli, train
    from slimepo.train.run import TrainResult

    calls = []
    monkeypatch.setattr(train, "train", lambda config: TrainResult(tmp_path, {}, {}, 3))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroyed"))
    assert cli.main(["train", "--output-dir", str(tmp_path / "out")]) == 0
    assert calls == ["destroyed"]
    assert capsys.readouterr().out == ""  # process 1 leaves the summary to process 0


def parameter_reports(out: Path, world: int) -> list[dict]:
    return [json.loads((out / f"params-rank{rank}.json").read_text()) for rank in range(world)]


@pytest.mark.slow
@pytest.mark.skipif(bool(fsdp_versions_too_old()), reason=f"--fsdp is refused below {FSDP_MIN_VERSIONS}")
@pytest.mark.parametrize("use_lora", [False, True])
def test_fsdp_on_two_processes_shards_the_model_and_logs_the_same_losses_as_one_process(
    use_lora, one_process, tiny_model_dir, toy_data, tmp_path
):
    data = toy_data["train"].parent
    single = one_process if use_lora else tmp_path / "one"
    if not use_lora:
        run(1, tiny_model_dir, data, single, use_lora=False)
    sharded = tmp_path / "fsdp"
    assert_same_losses(train_lines(single), run(2, tiny_model_dir, data, sharded, use_lora=use_lora, fsdp=True))
    # The tiny Llama's 21 weights (head included) are DTensors, each process holding half of
    # every one; LoRA's 28 adapter factors stay replicated (transformers broadcasts them and
    # averages their gradients).
    halves, whole = parameter_reports(sharded, 2), parameter_reports(single, 1)[0]
    assert [(r["sharded"], r["params"]) for r in halves] == [(21, 49 if use_lora else 21)] * 2
    assert whole["sharded"] == 0
    if not use_lora:
        assert sum(r["local_elements"] for r in halves) == whole["local_elements"]
    # The saved model is whole and trained alike (measured: 4.9e-5 full, 5.6e-6 LoRA, after 3 Adam steps at 1e-2).
    name = "adapter_model.safetensors" if use_lora else "model.safetensors"
    expected, got = load_file(single / name), load_file(sharded / name)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=5e-4)


def objective_case(objective: str, tiny_model_dir, toy_data, folder: Path) -> tuple[Path, dict, tuple[str, ...]]:
    """``(data folder, TrainConfig overrides, logged keys to compare)`` of a run with WPO (on the toy
    pairs) or KTO (12 unpaired examples, ``--ref-model`` a 3 times sharper copy of the model, so that
    z_0 is far from 0; β = 1)."""
    from transformers import AutoModelForCausalLM

    if objective == "wpo":
        return toy_data["train"].parent, {"wpo": True}, ("loss", "loss/margin", "loss/anchor", "wpo/weight", "grad_norm")
    data = unpaired_data(folder / "data", 12)
    shutil.copyfile(data / "eval.jsonl", data / "test.jsonl")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        reference.lm_head.weight.mul_(3.0)
    reference.save_pretrained(folder / "sharp-reference")
    overrides = {"loss": "kto", "loss_params": {"beta": 1.0}, "ref_model": str(folder / "sharp-reference")}
    return data, overrides, ("loss", "loss/desirable", "loss/undesirable", "kl", "reference_point", "grad_norm")


def assert_same_objective(objective: str, single: list[dict], other: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in single] == [r["step"] for r in other] == [1, 2, 3]
    if objective == "wpo":
        assert all(0 < r["wpo/weight"] < 1 for r in single)  # the weights are in play, not all 1
    else:
        assert all(r["reference_point"] > 0.1 for r in single)  # z_0 is in play: the clamp at 0 does not hide it
    # Measured on the 2-core AMD EPYC, worst over the keys and 3 steps: WPO 1.8e-7 (FSDP), 4.5e-7 (ZeRO-3);
    # KTO 8.1e-5 (FSDP), 2.3e-5 (ZeRO-3), both z_0 at step 3, after two Adam steps at lr 1e-2 have grown
    # the summation-order differences of the sharded forward (z_0 = 0.165 there).
    tolerance = 1e-5 if objective == "wpo" else 3e-4
    for one, two in zip(single, other):
        for key in keys:
            assert two[key] == pytest.approx(one[key], rel=tolerance, abs=1e-6), (one["step"], key)


@pytest.mark.slow
@pytest.mark.skipif(bool(fsdp_versions_too_old()), reason=f"--fsdp is refused below {FSDP_MIN_VERSIONS}")
@pytest.mark.parametrize("objective", ["wpo", "kto"])
def test_wpo_and_kto_under_fsdp_log_the_numbers_of_one_process(objective, tiny_model_dir, toy_data, tmp_path):
    """LoRA under FSDP2 on 2 processes, 3 steps of global batch 4, against 1 process: WPO's weights come
    from the chunked head's log Σ π² on sharded weights; KTO's z_0 sums the mismatched pairs of both
    processes (a z_0 of each process's own pairs fails: tried)."""
    data, overrides, keys = objective_case(objective, tiny_model_dir, toy_data, tmp_path)
    single = run(1, tiny_model_dir, data, tmp_path / "one", **overrides)
    sharded = run(2, tiny_model_dir, data, tmp_path / "fsdp", fsdp=True, **overrides)
    assert parameter_reports(tmp_path / "fsdp", 2)[0]["sharded"] == 21
    assert_same_objective(objective, single, sharded, keys)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["full", "lora"])
def test_the_chunked_head_under_fsdp2_gives_the_unsharded_log_probs_and_gradients(model, tmp_path):
    """2 gloo processes, decoder layers and root fully_shard-ed; LoRA with a trained head copy.

    Before it read the head after the forward, the chunked path failed under fully_shard:
    'aten.mm.default got mixed torch.Tensor and DTensor'."""
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), ENV.get("PYTHONPATH", "")])}
    result = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", free_port(),
                             str(WORKER.with_name("fsdp_worker.py")), str(tmp_path), model],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["sharded"] and report["grad_names_equal"]
        assert report["lm_head_grad_norm"] > 1  # the head's gradient is part of what is compared
        # Measured: 4.8e-7 (log-probs), 2.0e-6 / 1.1e-6 (full / LoRA gradients, head's norm ~15).
        assert report["logp_error"] < 1e-5 and report["grad_error"] < 2e-5, report


@pytest.mark.skipif(torch.cuda.is_available(), reason="accelerate's FSDP plugin runs on GPUs")
def test_an_accelerate_fsdp_config_on_cpu_is_refused_instead_of_running_ddp(monkeypatch, tmp_path):
    from slimepo.train import run as train_run

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(train_run, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before the check"))
    with pytest.raises(ConfigError, match="fsdp: accelerate .* only on GPUs .* pass --fsdp"):
        train_run.train(TrainConfig(output_dir=str(tmp_path / "out")))


@pytest.mark.parametrize(("overrides", "message"), [
    ({}, "save_steps: must be 0 with --fsdp, got 500"),
    ({"save_steps": 0, "resume": "auto"}, "resume: must be None with --fsdp"),
    ({"save_steps": 0, "merge": True}, "merge: must be False with --fsdp"),
])
def test_fsdp_refuses_checkpoints_resume_and_merge_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(fsdp=True, **overrides).validate()


def test_fsdp_is_refused_below_the_versions_it_was_tested_with(monkeypatch):
    installed = {"transformers": "5.19.0", "accelerate": "1.15.0", "peft": "0.21.2"}
    monkeypatch.setattr(config_module, "installed_version", installed.__getitem__)
    with pytest.raises(ConfigError, match=r"fsdp: sharded training was tested only with transformers >= 5.24, "
                                          r"accelerate >= 1.15, peft >= 0.21.2; .* here: transformers 5.19.0$"):
        TrainConfig(fsdp=True, save_steps=0).validate()
