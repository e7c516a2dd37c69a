"""Nothing lost: crash-safe checkpoints, and a resumed run equal bit for bit to an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimepo.train.checkpoint import (
    MARKER,
    checkpoint_problem,
    complete_checkpoints,
    latest_complete_checkpoint,
    publish,
    rotate,
    trim_metrics,
)

WORKER = Path(__file__).with_name("kill_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
MAX_STEPS = 12
KILLS = 20


# --- the pieces, fast ---------------------------------------------------------------------

def fake_checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    staged = out / "staging" / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    (staged / "adapter_model.safetensors").write_bytes(b"w" * 100)
    (staged / "optimizer.pt").write_bytes(b"o" * 50)
    if complete:
        return publish(staged, out, step)
    final = out / staged.name
    staged.rename(final)  # what a plain Trainer (or a crash mid-copy) leaves: no marker
    return final


def test_latest_complete_checkpoint_skips_unmarked_truncated_and_mislabelled_folders(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 9, complete=False)
    truncated = fake_checkpoint(tmp_path, 7)
    (truncated / "optimizer.pt").write_bytes(b"o" * 10)
    relabelled = fake_checkpoint(tmp_path, 5)
    relabelled.rename(tmp_path / "checkpoint-8")
    assert "no COMPLETE marker" in checkpoint_problem(tmp_path / "checkpoint-9")
    assert "optimizer.pt has 10 bytes" in checkpoint_problem(truncated)
    assert "for step 5, not 8" in checkpoint_problem(tmp_path / "checkpoint-8")
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_complete_checkpoint(tmp_path / "nothing-here") is None


def test_marker_is_written_last_and_lists_every_file_with_its_size(tmp_path):
    final = fake_checkpoint(tmp_path, 3)
    manifest = json.loads((final / MARKER).read_text())
    assert manifest == {"step": 3, "files": {"adapter_model.safetensors": 100, "optimizer.pt": 50}}
    assert not (tmp_path / "staging" / "checkpoint-3").exists()


def test_rotation_counts_complete_checkpoints_only_and_keeps_the_newest(tmp_path):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 4, complete=False)
    rotate(tmp_path, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    assert (tmp_path / "checkpoint-4").is_dir()  # not ours to delete, and not counted
    rotate(tmp_path, keep=1)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-3"]
    rotate(tmp_path, keep=1)  # the only complete checkpoint stays
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-3"]


def test_trim_metrics_drops_lines_after_the_checkpoint_the_summary_and_a_torn_line(tmp_path):
    lines = [{"step": 1, "split": "train"}, {"step": 2, "split": "train"}, {"step": 2, "split": "eval"},
             {"step": 2, "split": "monitor"}, {"step": 2, "split": "summary"}, {"step": 3, "split": "train"}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "spl')
    assert trim_metrics(path, 2) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:4]
    assert trim_metrics(path, 0) == 4 and path.read_text() == ""


def test_resume_auto_on_a_finished_run_and_on_a_folder_with_only_a_partial_checkpoint(
    tiny_model_dir, toy_data, tmp_path
):
    from slimepo.config import TrainConfig
    from slimepo.train import train
    from slimepo.train.run import OutputExistsError

    out = tmp_path / "run"
    config = TrainConfig(
        model=str(tiny_model_dir), dataset=str(toy_data["train"]), eval_dataset=str(toy_data["test"]),
        eval_split="train", output_dir=str(out), max_steps=2, batch_size=4, logging_steps=1, save_steps=1,
        lora_r=4, lora_alpha=8, lora_dropout=0.0, monitor_steps=0,
    )
    train(config)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert not (out / ".checkpoint-staging").exists()
    config.resume = "auto"
    assert train(config).global_step == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert [r["split"] for r in records].count("summary") == 1

    # A crash mid-save leaves at most an unmarked folder: it is not resumed from. With no complete
    # checkpoint left, a finished run would be trained again from step 0: only with --overwrite.
    for checkpoint in complete_checkpoints(out):
        shutil.rmtree(checkpoint)
    fake_checkpoint(out, 2, complete=False)
    with pytest.raises(OutputExistsError, match="has finished and left no checkpoint"):
        train(config)
    config.overwrite = True
    assert train(config).global_step == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]


class Payload:
    """Unpickling this creates a folder: the proof that a file was unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def plant(checkpoint: Path, name: str, payload: Payload) -> None:
    """Replace a checkpoint file by a malicious pickle and re-mark the folder complete."""
    torch.save({"state": payload}, checkpoint / name)
    manifest = json.loads((checkpoint / MARKER).read_text())
    manifest["files"][name] = (checkpoint / name).stat().st_size
    (checkpoint / MARKER).write_text(json.dumps(manifest))


def test_resume_never_unpickles_code_from_a_checkpoint(tiny_model_dir, toy_data, tmp_path):
    import pickle

    from slimepo.config import TrainConfig
    from slimepo.train import train

    out = tmp_path / "run"
    config = TrainConfig(
        model=str(tiny_model_dir), dataset=str(toy_data["train"]), eval_dataset=str(toy_data["test"]),
        eval_split="train", output_dir=str(out), max_steps=3, batch_size=4, logging_steps=1, save_steps=1,
        lora_r=4, lora_alpha=8, lora_dropout=0.0, monitor_steps=0, save_total_limit=None,
    )
    train(config)
    config.resume = "auto"
    # training_args.bin is a pickle the Trainer writes but never reads back.
    plant(out / "checkpoint-3", "training_args.bin", Payload(tmp_path / "pwned-by-training-args"))
    assert train(config).global_step == 3
    assert not (tmp_path / "pwned-by-training-args").exists()
    # optimizer.pt, scheduler.pt and rng_state.pth are read with torch.load(weights_only=True).
    shutil.rmtree(out / "checkpoint-3")
    shutil.move(out / "checkpoint-2", tmp_path / "pristine")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        shutil.rmtree(out / "checkpoint-2", ignore_errors=True)
        shutil.copytree(tmp_path / "pristine", out / "checkpoint-2")
        plant(out / "checkpoint-2", name, Payload(tmp_path / f"pwned-by-{name}"))
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            train(config)
        assert not (tmp_path / f"pwned-by-{name}").exists(), name


# --- SIGKILL at random moments --------------------------------------------------------------

class Zygote:
    """kill_worker.py --serve: imports once, forks one training process per start()."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV)

    def start(self, argv: list[str], log: Path) -> int:
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        word, pid = self.proc.stdout.readline().split()
        assert word == "pid", word
        return int(pid)

    def exited(self) -> bool:
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def wait(self) -> int:
        """The child's wait status."""
        word, _, status = self.proc.stdout.readline().split()
        assert word == "exit", word
        return int(status)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def read_events(trace: Path) -> list[tuple[float, str, int]]:
    if not trace.exists():
        return []
    events = []
    for line in trace.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            events.append((float(parts[0]), parts[1], int(parts[2])))
    return events


def wait_for_event(zygote: Zygote, trace: Path, name: str, nth: int = 1, timeout: float = 120) -> bool:
    """Wait for the nth ``name`` event from now on; False when the child ended first."""
    since = len(read_events(trace))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(e[1] == name for e in read_events(trace)[since:]) >= nth:
            return True
        if zygote.exited():
            return False
        time.sleep(0.002)
    raise TimeoutError(f"no {name} event within {timeout}s")


def wait_for_a_kill_moment(zygote: Zygote, trace: Path, rng: random.Random, finished: bool, timing: dict) -> bool:
    """Maybe let one checkpoint pass (p = 0.2: a kill costs ~0.7 steps of progress, so 20 kills
    spread over the 12 steps), then wait a random delay into startup, a step, a save or, once
    the run is finished, the final outputs. False when the child ended first."""
    if finished:
        mode = rng.choice(["startup", "outputs"])
    else:
        mode = rng.choices(["startup", "step", "save"], weights=[1, 3, 3])[0]
        if mode != "startup" and rng.random() < 0.2 and not wait_for_event(zygote, trace, "save-end"):
            return False
    if mode == "startup":
        time.sleep(rng.uniform(0, (0.5 if finished else 0.9) * timing["startup"]))
        return True
    name = {"step": "step", "save": "save-begin", "outputs": "outputs-begin"}[mode]
    if not wait_for_event(zygote, trace, name):
        return False
    time.sleep(rng.uniform(0, timing[mode]))
    return True


def durations(events: list[tuple[float, str, int]]) -> dict[str, float]:
    """Seconds from start to the first step, and the longest micro-batch step, save and final save."""
    def longest(begin: str, end: tuple[str, ...]) -> float:
        return max(b[0] - a[0] for a, b in zip(events, events[1:]) if a[1] == begin and b[1] in end)

    return {
        "startup": next(t for t, name, _ in events if name == "step") - events[0][0],
        "step": longest("step", ("step", "save-begin")),
        "save": longest("save-begin", ("save-end",)),
        "outputs": longest("outputs-begin", ("outputs-end",)),
    }


def landing(events: list[tuple[float, str, int]], killed_at: float, out: Path) -> str:
    """Where a kill landed: the last event before it."""
    before = [e for e in events if e[0] <= killed_at]
    if not before:
        return "startup: imports"
    _, name, step = before[-1]
    if name == "save-begin":
        published = (out / f"checkpoint-{step}" / MARKER).exists()
        return f"saving checkpoint-{step} ({'after publish, in rotation' if published else 'before publish'})"
    return {
        "start": "startup: data, model, scoring before training",
        "step": f"step {step}: forward/backward/optimizer",
        "save-end": f"after checkpoint-{step}: logging, eval, next batch",
        "outputs-begin": "writing the final adapter and reports",
        "outputs-end": "after the final outputs",
    }[name]


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


TIMING = ("tokens_per_second", "runtime", "per_second")


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if not any(t in k for t in TIMING)}


@pytest.mark.slow
def test_twenty_sigkills_then_resume_auto_give_the_uninterrupted_weights_bit_for_bit(
    tiny_model_dir, toy_data, tmp_path
):
    data = toy_data["train"].parent
    ref, out = tmp_path / "uninterrupted", tmp_path / "killed"
    ref_trace, trace, log = tmp_path / "ref.trace", tmp_path / "killed.trace", tmp_path / "worker.log"
    zygote = Zygote()
    try:
        zygote.start([tiny_model_dir, data, ref, "--trace", ref_trace], log)
        assert zygote.wait() == 0, log.read_text()[-4000:]
        timing = durations(read_events(ref_trace))

        rng = random.Random(20240611)
        kills, attempts, newest = [], 0, 0
        while len(kills) < KILLS:
            attempts += 1
            assert attempts <= 3 * KILLS, kills
            since = len(read_events(trace))
            pid = zygote.start([tiny_model_dir, data, out, "--resume", "auto", "--trace", trace], log)
            reached = wait_for_a_kill_moment(zygote, trace, rng, newest == MAX_STEPS, timing)
            killed_at = time.time()
            if reached:
                with contextlib.suppress(ProcessLookupError):  # it may have just finished
                    os.kill(pid, signal.SIGKILL)
            status = zygote.wait()
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-4000:]
                continue  # it finished before the kill: not counted
            kills.append(landing(read_events(trace)[since:], killed_at, out))
            # Every folder named checkpoint-N is complete, and progress is never lost.
            for path in out.glob("checkpoint-*"):
                assert checkpoint_problem(path) is None, (kills[-1], path)
            latest = latest_complete_checkpoint(out)
            step = int(latest.name.split("-")[1]) if latest else 0
            assert step >= newest, kills[-1]
            newest = step

        zygote.start([tiny_model_dir, data, out, "--resume", "auto", "--trace", trace], log)
        assert zygote.wait() == 0, log.read_text()[-4000:]
    finally:
        zygote.close()

    report = {"kills": len(kills), "attempts": attempts + 1, "timing": timing, "landed": kills}
    (tmp_path / "kills.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))

    expected, got = adapter(ref), adapter(out)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    # metrics.jsonl: one line per logged step, the same values as without the kills
    # (the monitor's drift is relative to where each process started, so only its steps).
    ref_lines, lines = metrics(ref), metrics(out)
    for split in ("train", "eval"):
        assert [without_timing(r) for r in lines if r["split"] == split] == [
            without_timing(r) for r in ref_lines if r["split"] == split
        ], split
    assert [r["step"] for r in lines if r["split"] == "train"] == list(range(1, MAX_STEPS + 1))
    assert [r["step"] for r in lines if r["split"] == "monitor"] == [4, 8, 12]
    assert [r["split"] for r in lines].count("summary") == 1
    assert json.loads((out / "eval.json").read_text()) == json.loads((ref / "eval.json").read_text())


# --- 2 processes <-> 1 process ----------------------------------------------------------------

def run_worker(world: int, model, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    if world == 1:
        cmd = [sys.executable, str(WORKER)]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--nproc_per_node", str(world), "--master_port", "29547", str(WORKER)]
    # One global batch of 2 pairs x 2 accumulation steps either way; no dropout, whose
    # masks depend on how rows are split across processes.
    args = [str(model), str(data), str(out), "--batch-size", str(2 // world), "--lora-dropout", "0",
            "--max-steps", "6", *extra]
    return subprocess.run([*cmd, *args], env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir, toy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-process") / "run"
    result = run_worker(1, tiny_model_dir, toy_data["train"].parent, out)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_checkpoint_written_by_one_world_size_resumes_under_the_other(
    first, then, one_process_run, tiny_model_dir, toy_data, tmp_path
):
    data, out = toy_data["train"].parent, tmp_path / "run"
    crashed = run_worker(first, tiny_model_dir, data, out, "--crash-after-save", "3")
    assert crashed.returncode != 0 and latest_complete_checkpoint(out) == out / "checkpoint-3", crashed.stderr[-4000:]
    rng_files = sorted(p.name for p in (out / "checkpoint-3").glob("rng_state*.pth"))
    assert rng_files == (["rng_state_0.pth", "rng_state_1.pth"] if first == 2 else ["rng_state.pth"])
    resumed = run_worker(then, tiny_model_dir, data, out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    expected = [r for r in metrics(one_process_run) if r["split"] == "train"]
    got = [r for r in metrics(out) if r["split"] == "train"]
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    # Same data, same schedule; what differs is float32 summation order across processes
    # (and so the weights carried over from the other world size). Measured: < 3e-7 relative.
    for one, other in zip(expected, got):
        for key in ("loss", "loss/margin", "loss/anchor", "grad_norm", "learning_rate"):
            assert other[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (one["step"], key)
