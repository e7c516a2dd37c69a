"""Mixed precision: bf16 autocast over fp32 master weights gives the fp32 numbers to bf16 accuracy.

The references are plain fp32: the model's own forward and ``log_softmax`` without
autocast, and the same training run with ``--mixed-precision no``.
"""

import json
from pathlib import Path

import pytest
import torch

from slimepo.config import ConfigError, TrainConfig
from slimepo.data.collate import PairCollator
from slimepo.logprobs import pair_token_logps
from slimepo.model import load_policy, resolve_mixed_precision
from slimepo.testing import tiny_model
from slimepo.train import run, train

from .test_forward import PAIRS, by_hand


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"),
                                                              (False, False, "no")])
def test_auto_autocasts_in_bf16_exactly_on_cpus_with_bf16_instructions(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_mixed_precision("auto", "auto") == expected
    assert resolve_mixed_precision("float32", "auto") == "no"  # an explicit dtype is taken as meant
    assert resolve_mixed_precision("auto", "no") == "no"
    args = run.training_arguments(TrainConfig(), Path("unused"))
    assert (args.bf16, args.fp16) == (expected == "bf16", False)


@pytest.mark.parametrize("gpu_bf16", [True, False])
def test_auto_follows_the_gpu_when_there_is_one(monkeypatch, gpu_bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: gpu_bf16)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_mixed_precision("auto", "auto") == ("bf16" if gpu_bf16 else "no")


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_autocast_log_probs_are_fp32_and_within_bf16_error_of_the_fp32_forward(chunk_size):
    model = tiny_model("llama")
    reference = by_hand(model, PAIRS)  # fp32, no autocast
    batch = PairCollator(pad_token_id=0, layout="shared")(PAIRS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chosen, rejected = pair_token_logps(model, batch, chunk_size=chunk_size)
    assert chosen.dtype == rejected.dtype == torch.float32
    errors = []
    for i, p in enumerate(PAIRS):
        errors.append((chosen[i, : len(p.chosen_ids)] - reference["chosen"][i]).abs().max())
        errors.append((rejected[i, : len(p.rejected_ids)] - reference["rejected"][i]).abs().max())
    # bf16 rounds the body's matmul outputs to 8 significant bits; measured: 5.2e-4 (exact head), 4.1e-4 (chunked).
    assert 0 < max(errors) < 5e-3


def test_the_chunked_head_stays_fp32_under_autocast_forward_and_backward():
    model = tiny_model("llama")
    batch = PairCollator(pad_token_id=0, layout="separate")(PAIRS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[-1]
        hidden = hidden.detach().requires_grad_(True)
        chosen, rejected = pair_token_logps(_HiddenModel(model, hidden), batch, chunk_size=3)
    # By hand, outside autocast: fp32 logits of the same hidden states, log_softmax in fp64.
    logits = (hidden.reshape(-1, hidden.shape[-1]) @ model.lm_head.weight.t()).double()
    logps = torch.log_softmax(logits, -1)
    labels = batch["input_ids"].reshape(-1)
    expected = {}
    for side in ("chosen", "rejected"):
        mask = batch[f"{side}_mask"]
        rows = batch[f"{side}_source"][mask]
        expected[side] = torch.zeros(mask.shape, dtype=torch.float64).masked_scatter(
            mask, logps[rows, labels[batch[f"{side}_target"][mask]]])
    torch.testing.assert_close(chosen.double(), expected["chosen"], rtol=0, atol=2e-6)
    torch.testing.assert_close(rejected.double(), expected["rejected"], rtol=0, atol=2e-6)
    got = torch.autograd.grad((chosen.sum() + 2 * rejected.sum()), [hidden, model.lm_head.weight])
    want = torch.autograd.grad((expected["chosen"].sum() + 2 * expected["rejected"].sum()),
                               [hidden, model.lm_head.weight])
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


class _HiddenModel(torch.nn.Module):
    """Answers a forward with given final hidden states (the head under test is the chunked one)."""

    def __init__(self, model, hidden):
        super().__init__()
        self.inner, self.hidden = model, hidden

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    @property
    def config(self):
        return self.inner.config

    def forward(self, **kwargs):
        return type("Out", (), {"hidden_states": (self.hidden,)})()


def short_run(tiny_model_dir, toy_data, out, monkeypatch, **overrides) -> tuple[list[dict], dict]:
    """Six logged steps of full fine-tuning; also what dtypes the q_proj forward and the weights had."""
    seen: dict = {"outputs": set()}

    def recording_policy(config, **options):
        model = load_policy(config, **options)
        seen["model"] = model
        model.model.layers[0].self_attn.q_proj.register_forward_hook(
            lambda module, args, output: seen["outputs"].add(output.dtype))
        return model

    monkeypatch.setattr(run, "load_policy", recording_policy)
    config = TrainConfig(**{
        "model": str(tiny_model_dir), "dataset": str(toy_data["train"]), "eval_dataset": str(toy_data["test"]),
        "eval_split": "train", "output_dir": str(out), "max_steps": 6, "batch_size": 4, "learning_rate": 1e-2,
        "logging_steps": 1, "save_steps": 0, "use_lora": False, "warmup_ratio": 0.0, "monitor_steps": 0, "seed": 0,
        **overrides,
    })
    train(config)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seen["weights"] = {p.dtype for p in seen["model"].parameters()}
    return [r for r in lines if r["split"] == "train"], seen


@pytest.mark.slow
def test_a_bf16_autocast_run_logs_the_fp32_losses_to_bf16_accuracy_and_keeps_fp32_weights(
    tiny_model_dir, toy_data, tmp_path, monkeypatch
):
    # lr 1e-3: small steps, so that what differs after step 1 is bf16's arithmetic, not two trajectories
    # that a large learning rate has pulled apart.
    lr = 1e-3
    fp32, fp32_seen = short_run(tiny_model_dir, toy_data, tmp_path / "fp32", monkeypatch, mixed_precision="no",
                                learning_rate=lr)
    mixed, mixed_seen = short_run(tiny_model_dir, toy_data, tmp_path / "bf16", monkeypatch, mixed_precision="bf16",
                                  learning_rate=lr)
    assert fp32_seen["outputs"] == {torch.float32} and mixed_seen["outputs"] == {torch.bfloat16}
    assert fp32_seen["weights"] == mixed_seen["weights"] == {torch.float32}
    assert [r["step"] for r in mixed] == [r["step"] for r in fp32] == [1, 2, 3, 4, 5, 6]
    # Step 1 sees equal weights: only the forward differs. At lr 1e-3 the six steps stay within
    # 6.0e-5 relative of fp32 (measured, 2026-12-02, EPYC with AVX512-BF16); allowed: 5e-4.
    for one, other in zip(fp32, mixed):
        for key in ("loss", "loss/margin", "loss/anchor", "logps/chosen_sum", "logps/rejected_sum"):
            assert other[key] == pytest.approx(one[key], rel=5e-4), (one["step"], key)
    assert mixed[-1]["loss"] != fp32[-1]["loss"]  # bf16 really ran


def test_pure_bf16_weights_still_train(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    lines, seen = short_run(tiny_model_dir, toy_data, tmp_path / "run", monkeypatch, dtype="bfloat16")
    assert seen["weights"] == {torch.bfloat16} and seen["outputs"] == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)


def test_autocast_over_half_precision_weights_is_refused():
    with pytest.raises(ConfigError, match="mixed_precision: bf16 autocasts over float32 weights"):
        TrainConfig(dtype="bfloat16", mixed_precision="bf16").validate()


def test_fp16_autocast_is_refused_before_any_model_is_loaded(monkeypatch, tmp_path):
    monkeypatch.setattr(run, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before the check"))
    with pytest.raises(ConfigError, match="mixed_precision: fp16 is not supported yet"):
        train(TrainConfig(mixed_precision="fp16", output_dir=str(tmp_path / "out")))


def test_the_machine_line_names_the_cpu_from_cpuinfo_and_says_whether_bf16_is_in_hardware(monkeypatch, tmp_path):
    from slimepo.model import describe_machine, machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n"
                       "flags\t\t: fpu avx512_bf16\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    info = machine(cpuinfo)
    assert info["cpu"] == "AMD EPYC 9R14 96-Core Processor" and info["cuda"] is None and info["bf16_hardware"] is True
    record = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "torch": "2.13.0", "torch_threads": 2,
              "python": "3.12.3", "cuda": None, "bf16_hardware": False}
    assert describe_machine(record) == ("2 cores (Intel(R) Xeon(R) Processor), torch 2.13.0, 2 threads, "
                                        "Python 3.12.3, bf16 in hardware: False")
    # A record written before the line had Python and bf16 (the study's first results) still reads.
    assert describe_machine({k: record[k] for k in ("cpu", "cores", "torch", "torch_threads", "cuda")} | {
        "cuda": "NVIDIA H200"}) == "2 cores (Intel(R) Xeon(R) Processor), torch 2.13.0, 2 threads, GPU NVIDIA H200"
    assert machine(tmp_path / "missing")["cpu"]  # no /proc/cpuinfo (not Linux): platform's name, not an error
