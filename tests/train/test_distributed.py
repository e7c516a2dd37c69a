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

WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
KEYS = ("loss", "loss/margin", "loss/anchor", "loss/stabilizer", "accuracy", "grad_norm")


def free_port() -> str:
    """A port no other test (or agent on this machine) is listening on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def worker_args(model, data: Path, out: Path, world: int) -> list[str]:
    return [str(WORKER), str(model), str(data), str(out), str(world)]


def train_lines(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def run(world: int, model, data: Path, out: Path) -> list[dict]:
    if world == 1:
        cmd = [sys.executable]
    else:
        cmd = [TORCHRUN, "--nproc_per_node", str(world), "--master_port", free_port()]
    result = subprocess.run([*cmd, *worker_args(model, data, out, world)], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return train_lines(out)


def assert_same_losses(single: list[dict], other: list[dict]) -> None:
    assert [r["step"] for r in single] == [r["step"] for r in other] == [1, 2, 3]
    # Every SLIME term is a per-pair mean here (stabilizer_reduction=sequence), so the
    # gradient average over 2 x 2 pairs equals the 1-process mean over 4 pairs. What is
    # left is float32 summation order across processes and padding widths: 1e-4 relative.
    for one, two in zip(single, other):
        for key in KEYS:
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (one["step"], key)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, toy_data, tmp_path_factory) -> list[dict]:
    return run(1, tiny_model_dir, toy_data["train"].parent, tmp_path_factory.mktemp("one") / "run")


@pytest.mark.slow
def test_two_processes_log_the_same_losses_as_one_with_the_same_global_batch(
    one_process, tiny_model_dir, toy_data, tmp_path
):
    assert_same_losses(one_process, run(2, tiny_model_dir, toy_data["train"].parent, tmp_path / "two"))


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
    assert_same_losses(one_process, train_lines(out))


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs on GPUs")
@pytest.mark.parametrize("env", [{}, {"ACCELERATE_USE_FSDP": "true"}])
def test_fsdp_on_cpu_is_refused_before_any_model_is_loaded_instead_of_running_ddp(env, monkeypatch, tmp_path):
    from slimepo.config import ConfigError, TrainConfig
    from slimepo.train import run as train_run

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(train_run, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before the check"))
    config = TrainConfig(fsdp=not env, output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="fsdp: accelerate .* shards with FSDP only on GPUs"):
        train_run.train(config)
