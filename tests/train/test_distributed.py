"""Two CPU processes (torchrun, gloo) log the same losses as one process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def run(world: int, model, data: Path, out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if world == 1:
        cmd = [sys.executable, str(WORKER)]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--nproc_per_node", str(world), "--master_port", "29533", str(WORKER)]
    result = subprocess.run([*cmd, str(model), str(data), str(out), str(world)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_log_the_same_losses_as_one_with_the_same_global_batch(tiny_model_dir, toy_data, tmp_path):
    data = toy_data["train"].parent
    single = [r for r in run(1, tiny_model_dir, data, tmp_path / "one") if r["split"] == "train"]
    double = [r for r in run(2, tiny_model_dir, data, tmp_path / "two") if r["split"] == "train"]
    assert [r["step"] for r in single] == [r["step"] for r in double] == [1, 2, 3]
    # SLIME with its defaults: the logged loss is the step's, its stabilizer a mean over the
    # rejected tokens of all 4 pairs on either world size. The logged terms are each
    # micro-batch's own means, equal here for the per-pair ones (2 + 2 pairs vs 4). What is
    # left is float32 summation order across processes and padding widths: 1e-4 relative.
    for one, two in zip(single, double):
        for key in ("loss", "loss/margin", "loss/anchor", "accuracy", "grad_norm"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (one["step"], key)
