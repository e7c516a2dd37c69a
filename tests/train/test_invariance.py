"""The loss does not depend on how an optimizer step is split: one process, accumulation, two processes.

Every batch mean divides by the whole step's counts (``StepTotals``), so for the same 8 pairs
the gradient the optimizer receives is the same for 1 process x batch 8, 1 process x
batch 4 x accumulation 2, and 2 gloo processes x batch 4, for every loss with its defaults.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimepo.losses import StepTotals, get_loss

WORKER = Path(__file__).with_name("grad_worker.py")
LOSSES = ["slime", "sft", "dpo", "ipo", "hinge", "simpo", "cpo", "orpo"]

# Responses of very different lengths: a per-micro-batch token mean would weigh them differently.
WORDS = ["the", "garden", "is", "good", "and", "the", "river", "is", "calm", "while", "the", "forest", "is", "dark", "and", "the", "bridge", "is", "old"]


def rows() -> list[dict]:
    return [
        {"prompt": f"Tell me about the {w}?", "chosen": " ".join(WORDS[: 1 + 2 * i]), "rejected": " ".join(WORDS[: 12 - i])}
        for i, w in enumerate(["river", "garden", "train", "letter", "forest", "window", "market", "bridge"])
    ]


def run(world: int, batch: int, accumulation: int, model: Path, data: Path, out: Path, losses: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if world == 1:
        cmd = [sys.executable, str(WORKER)]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--nproc_per_node", str(world), "--master_port", "29541", str(WORKER)]
    args = [str(model), str(data), str(out), str(batch), str(accumulation), ",".join(losses)]
    result = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    diff = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a))
    norm = torch.sqrt(sum((a[k] ** 2).sum() for k in a))
    assert norm > 0
    return float(diff / norm)


@pytest.fixture(scope="module")
def gradients(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    data = tmp_path_factory.mktemp("split-data")
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()))
    (data / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()[:2]))
    losses = LOSSES
    outs = {}
    for label, world, batch, accumulation in (("b8", 1, 8, 1), ("b4x2", 1, 4, 2), ("2x4", 2, 4, 1)):
        outs[label] = tmp_path_factory.mktemp(label)
        run(world, batch, accumulation, tiny_model_dir, data, outs[label], losses)
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("split", ["b4x2", "2x4"])
@pytest.mark.parametrize("loss", LOSSES)
def test_one_step_gradient_is_the_same_however_the_batch_is_split(gradients, split, loss):
    reference = torch.load(gradients["b8"] / f"{loss}.pt")
    other = torch.load(gradients[split] / f"{loss}.pt")
    assert relative_difference(reference, other) < 1e-5


def test_the_split_data_makes_a_per_micro_batch_token_mean_wrong():
    """Sensitivity of the proof above: on these lengths, local means give a different stabilizer gradient."""
    lengths = [12 - i for i in range(8)]
    logps = -torch.arange(1, 13, dtype=torch.float32).repeat(8, 1) / 2
    mask = torch.arange(12).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    chosen, chosen_mask = torch.full((8, 1), -1.0), torch.ones(8, 1, dtype=torch.bool)
    loss_fn = get_loss("slime", margin_weight=0.0, anchor_weight=0.0, stabilizer_weight=1.0)

    def grad(parts: list[slice], totals: bool) -> torch.Tensor:
        rejected = logps.clone().requires_grad_(True)
        for part in parts:
            step = StepTotals(pairs=8.0, chosen_tokens=8.0, rejected_tokens=float(sum(lengths))) if totals else None
            out = loss_fn(chosen[part], chosen_mask[part], rejected[part], mask[part], step_totals=step)
            (out.loss if totals else out.loss / len(parts)).backward()
        return rejected.grad

    whole = grad([slice(0, 8)], totals=False)
    halves = [slice(0, 4), slice(4, 8)]
    torch.testing.assert_close(grad(halves, totals=True), whole, rtol=1e-6, atol=0)
    assert (grad(halves, totals=False) - whole).abs().max() > 1e-3 * whole.abs().max()
