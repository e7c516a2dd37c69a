"""The training step's review (issue 27.8): who scores held-out pairs, a sharded reference, one bf16 check,
layer windows computed once, a frozen base stored in bf16."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimepo.config import FSDP_MIN_VERSIONS, fsdp_versions_too_old

from .test_distributed import ENV, TORCHRUN, free_port, train_lines

STEP_WORKER = Path(__file__).with_name("step_worker.py")
#: The toy held-out split: 6 pairs; the monitor scores them as one batch (monitor_pairs 8, batch 8).
HELD_OUT = 6


def run_scoring(world: int, model, data: Path, out: Path, **overrides) -> list[dict]:
    """step_worker.py on ``world`` processes; each process's counts of scored batches."""
    launch = [sys.executable] if world == 1 else [TORCHRUN, "--nproc_per_node", str(world), "--master_port", free_port()]
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(STEP_WORKER.parent), ENV.get("PYTHONPATH", "")])}
    result = subprocess.run([*launch, str(STEP_WORKER), str(model), str(data), str(out), str(world),
                             json.dumps({"monitor_steps": 1, **overrides})], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / f"step-rank{rank}.json").read_text()) for rank in range(world)]


def phases(counts: dict) -> dict[str, int]:
    """Batches scored before training, by the monitor during it, after it."""
    return {"before": counts["train_begin"], "monitor": counts["train_end"] - counts["train_begin"],
            "after": counts["batches"] - counts["train_end"]}


def held_out_results(out: Path) -> dict:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    monitor = [(r["step"], r["monitor/chosen_drift"], r["monitor/collapse"]) for r in lines if r["split"] == "monitor"]
    return {"eval": json.loads((out / "eval.json").read_text()), "monitor": monitor}


def assert_close_results(expected, got, path="") -> None:
    if isinstance(expected, dict):
        assert expected.keys() == got.keys(), path
        for key in expected:
            assert_close_results(expected[key], got[key], f"{path}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(got), path
        for i, (one, two) in enumerate(zip(expected, got)):
            assert_close_results(one, two, f"{path}[{i}]")
    else:
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6), path


@pytest.fixture(scope="module")
def scored_on_one_process(tiny_model_dir, toy_data, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("scores-one") / "run"
    return out, run_scoring(1, tiny_model_dir, toy_data["train"].parent, out)


@pytest.mark.slow
def test_ddp_processes_split_the_held_out_scoring_score_no_batch_twice_and_give_one_process_results(
    scored_on_one_process, tiny_model_dir, toy_data, tmp_path
):
    """2 processes at batch 2: the 6 held-out pairs are 3 batches before and after training, the monitor's 1.

    Before, every process scored every batch (10 each, 20 in all); now rank 0 scores batches 0
    and 2, rank 1 batch 1, and the monitor's one batch is rank 0's alone: no batch twice."""
    single_out, (single,) = scored_on_one_process
    assert phases(single) == {"before": 2, "monitor": 4, "after": 2}  # batches of 4; start + 3 steps
    out = tmp_path / "two"
    ranks = [phases(counts) for counts in run_scoring(2, tiny_model_dir, toy_data["train"].parent, out)]
    assert ranks == [{"before": 2, "monitor": 4, "after": 2}, {"before": 1, "monitor": 0, "after": 1}]
    assert_close_results(held_out_results(single_out), held_out_results(out))
    assert [r["step"] for r in train_lines(out)] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.skipif(bool(fsdp_versions_too_old()), reason=f"--fsdp is refused below {FSDP_MIN_VERSIONS}")
def test_under_fsdp_every_process_joins_every_scoring_forward_and_results_stay_one_process(
    scored_on_one_process, tiny_model_dir, toy_data, tmp_path
):
    """Each forward of a sharded model gathers weights from all processes: a process with no batch
    of its own (the 3rd of 3, the monitor's only one) runs a stand-in batch beside the others."""
    single_out, _ = scored_on_one_process
    out = tmp_path / "fsdp"
    ranks = [phases(counts) for counts in run_scoring(2, tiny_model_dir, toy_data["train"].parent, out, fsdp=True)]
    assert ranks == [{"before": 2, "monitor": 4, "after": 2}] * 2
    assert_close_results(held_out_results(single_out), held_out_results(out))


@pytest.mark.slow
@pytest.mark.skipif(bool(fsdp_versions_too_old()), reason=f"--fsdp is refused below {FSDP_MIN_VERSIONS}")
def test_a_separate_reference_under_fsdp_is_sharded_like_the_policy_and_trains_as_one_process(
    tiny_model_dir, toy_data, tmp_path
):
    """DPO against ``--ref-model``, full fine-tuning, 3 steps. The reference used to load whole on every
    process (0 of its 21 weights sharded); now each process holds half of it, and the losses stay one
    process's."""
    data, options = toy_data["train"].parent, {"loss": "dpo", "ref_model": str(tiny_model_dir), "use_lora": False}
    (single,) = run_scoring(1, tiny_model_dir, data, tmp_path / "one", **options)
    halves = run_scoring(2, tiny_model_dir, data, tmp_path / "fsdp", **options, fsdp=True)
    whole = single["reference"]
    assert whole["sharded"] == 0
    assert [(r["reference"]["sharded"], r["reference"]["params"]) for r in halves] == [(whole["params"],) * 2] * 2
    assert sum(r["reference"]["local_elements"] for r in halves) == whole["local_elements"]
    for one, two in zip(train_lines(tmp_path / "one"), train_lines(tmp_path / "fsdp"), strict=True):
        for key in ("loss", "accuracy", "grad_norm", "logps/chosen_sum", "logps/rejected_sum"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (one["step"], key)


@pytest.mark.parametrize("bf16", [True, False])
def test_the_inference_dtype_asks_the_one_bf16_check(monkeypatch, bf16):
    """``resolve_dtype`` used to ask CUDA itself, a second copy of :func:`bf16_hardware`'s GPU branch."""
    from slimepo import model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: not bf16)  # ignored: bf16_hardware decides
    monkeypatch.setattr(model, "bf16_hardware", lambda: bf16)
    assert model.resolve_dtype("auto", training=False) == (torch.bfloat16 if bf16 else torch.float32)
    assert model.resolve_dtype("auto") == torch.float32  # training: fp32 master weights, whatever the hardware
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert model.resolve_dtype("auto", training=False) == torch.float32  # a bf16 CPU infers in fp32 still


def test_layer_windows_are_computed_once_per_configuration_not_at_every_forward():
    """Three scored batches and a training forward on a Gemma-3 model (local and global layers) in the
    shared layout: the windows are worked out once, and a change to the config is still seen."""
    from slimepo import logprobs
    from slimepo.data.collate import PairCollator
    from slimepo.scoring import score_pairs

    from .test_sliding_window import PAIRS, windowed_model

    model = windowed_model("gemma3_text")
    logprobs._windows_of.cache_clear()
    score_pairs(model, PAIRS, pad_token_id=0, batch_size=1, chunk_size=2, layout="shared")
    chosen, _ = logprobs.pair_token_logps(model, PairCollator(pad_token_id=0, layout="packed")(PAIRS), chunk_size=2)
    chosen.sum().backward()
    computed = logprobs._windows_of.cache_info()
    assert (computed.misses, computed.hits) == (1, 3)
    assert logprobs.layer_windows(model) == {"sliding_attention": 5, "full_attention": None}
    model.config.sliding_window = 3
    assert logprobs.layer_windows(model) == {"sliding_attention": 3, "full_attention": None}
    assert logprobs._windows_of.cache_info().misses == 2


def lora_policy(modules_to_save: list[str] | None):
    from peft import LoraConfig, get_peft_model

    from slimepo.model import quiet_peft
    from slimepo.testing import tiny_model

    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                        modules_to_save=modules_to_save, init_lora_weights=False)  # B != 0: the adapters count
    with quiet_peft():
        return get_peft_model(tiny_model("llama"), config)


@pytest.mark.parametrize("modules_to_save", [None, ["lm_head"]])
def test_a_frozen_base_stored_in_bf16_gives_the_fp32_base_s_numbers_under_bf16_autocast(modules_to_save):
    """Autocast casts each fp32 frozen weight to bf16 at every forward; stored in bf16, the same weights
    give the same log-probs and adapter gradients, bit for bit, policy and reference (adapters disabled)."""
    import copy

    from slimepo.data.collate import PairCollator
    from slimepo.logprobs import output_projection, pair_token_logps
    from slimepo.model import store_frozen_linears

    from .test_forward import PAIRS, weighted_sum

    fp32 = lora_policy(modules_to_save)
    bf16 = copy.deepcopy(fp32)
    assert store_frozen_linears(bf16, torch.bfloat16) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    kept = {n: p.dtype for n, p in bf16.named_parameters() if p.dtype != torch.bfloat16}
    assert all(".base_layer." not in n for n in kept)
    assert all(p.dtype == torch.float32 for p in bf16.parameters() if p.requires_grad)  # LoRA and the head copy
    assert output_projection(bf16)[0].dtype == torch.float32 and "model.embed_tokens.weight" in " ".join(kept)
    batch = PairCollator(pad_token_id=0, layout="shared")(PAIRS)
    results = []
    for model in (fp32, bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            chosen, rejected = pair_token_logps(model, batch, chunk_size=3)
            weighted_sum(chosen, rejected).backward()
            with torch.no_grad(), model.disable_adapter():
                reference = pair_token_logps(model, batch, chunk_size=3)
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((chosen.detach(), rejected.detach(), *reference, grads))
    for one, two in zip(results[0][:4], results[1][:4], strict=True):
        assert torch.equal(one, two)
    assert results[0][4].keys() == results[1][4].keys()
    for name, grad in results[0][4].items():
        assert torch.equal(grad, results[1][4][name]), name


@pytest.mark.slow
@pytest.mark.skipif(bool(fsdp_versions_too_old()), reason=f"--fsdp is refused below {FSDP_MIN_VERSIONS}")
def test_a_sharded_reference_scored_before_training_does_not_stay_gathered_through_it(
    tiny_model_dir, toy_data, tmp_path
):
    """FSDP2 keeps a root module's weights (embeddings, head) gathered after a forward until a backward
    reshards them; a reference scored once under ``--precompute-ref-logps`` has none, so it held them whole
    for the whole run (19 of 21 weights sharded after training). ``score_pairs`` now reshards."""
    options = {"loss": "dpo", "ref_model": str(tiny_model_dir), "use_lora": False, "precompute_ref_logps": True,
               "ref_logps_cache": "off", "monitor_steps": 0}
    halves = run_scoring(2, tiny_model_dir, toy_data["train"].parent, tmp_path / "fsdp", **options, fsdp=True)
    assert [r["reference_after_training"] for r in halves] == [r["reference"] for r in halves]
    assert all(r["reference"]["sharded"] == r["reference"]["params"] == 21 for r in halves)
    assert [r["step"] for r in train_lines(tmp_path / "fsdp")] == [1, 2, 3]
