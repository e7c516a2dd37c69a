import argparse
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from slimepo.cli_eval import register, run
from slimepo.config import EvalConfig
from slimepo.constraints import Constraint, check
from slimepo.data import prepare_pairs
from slimepo.eval import alpacaeval
from slimepo.eval.judge import JudgeClient
from slimepo.eval.run import evaluate, format_eval_table
from slimepo.fingerprint import weights_sha256
from slimepo.generation.batched import end_of_turn_ids, generate
from slimepo.model import load_model
from slimepo.testing import TINY_MODEL_KINDS, FixedJudge, tiny_model, tiny_tokenizer

from .judges import server_stats

HIDDEN = 32  # tiny_model's hidden size


def context_free_llama(tokenizer, head_weights):
    """A model whose next-token distribution is the same at every position.

    Layers zeroed (the residual stream is the token embedding), every embedding e_0, and
    the final norm keeps dimension 0 only, so every hidden state is h0·e_0 with
    h0 = 1/sqrt(1/HIDDEN + eps) and the logit of token t is h0 · head_weights.get(t, 0).
    """
    model = tiny_model("llama").eval()
    with torch.no_grad():
        for param in model.model.layers.parameters():
            param.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        for token, weight in head_weights.items():
            model.lm_head.weight[token, 0] = weight
    return model


def h0(model):
    return 1.0 / math.sqrt(1.0 / HIDDEN + model.config.rms_norm_eps)


def config(model, dataset, **options):
    """``slimepo eval``'s options for ``model`` on ``dataset``."""
    return EvalConfig(model=str(model), dataset=str(dataset), **options)


def save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


CONSTRAINED_ROWS = [
    {"prompt": "Describe the sea.", "chosen": "the sea is wide.", "rejected": "The Sea.",
     "constraint": {"family": "lowercase"}},
    {"prompt": "Shout about the wind.", "chosen": "THE WIND IS COLD.", "rejected": "the wind.",
     "constraint": {"family": "uppercase"}},
    {"prompt": "Name a city.", "chosen": "Paris.", "rejected": "The capital of France is Paris.",
     "constraint": {"family": "max_words", "params": {"n": 3}}},
    {"prompt": "Say something about a cat.", "chosen": "The cat sat on the mat.", "rejected": "A cat sat.",
     "constraint": {"family": "include_word", "params": {"word": "the"}}},
    {"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five."},
]


def test_evaluate_writes_eval_json_and_one_generation_per_prompt(tmp_path):
    tokenizer = tiny_tokenizer()
    the = tokenizer.encode(" the")[0]
    model_dir = save(context_free_llama(tokenizer, {the: 10.0}), tokenizer, tmp_path / "model")
    data = write_jsonl(tmp_path / "test.jsonl", CONSTRAINED_ROWS)

    result = evaluate(config(model_dir, data, split="train", max_new_tokens=6, batch_size=2), out_dir=tmp_path / "out")

    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written == json.loads(json.dumps(result))
    for key in ("pairs", "accuracy", "margin", "chosen_logp_mean", "rejected_logp_mean", "collapse",
                "generation", "constraint_pass_rate", "constraint_pass_rate_by_family", "settings"):
        assert key in written, key
    assert "base" not in written and "drift" not in written
    assert written["pairs"] == len(CONSTRAINED_ROWS)

    lines = (tmp_path / "out" / "generations.jsonl").read_text().splitlines()
    generations = [json.loads(line) for line in lines]
    assert len(generations) == len(CONSTRAINED_ROWS)
    assert [g["prompt"] for g in generations] == [row["prompt"] for row in CONSTRAINED_ROWS]
    # greedy on a model that always prefers " the": six of them, no end of turn
    assert {g["response"] for g in generations} == {"the the the the the the"}

    # 6 words -> 4 word trigrams, all the same: repetition 1 - 1/4
    assert written["generation"] == {
        "count": 5, "ended_rate": 0.0, "empty_rate": 0.0, "degenerate_rate": 1.0,
        "repetition_mean": 0.75, "length_tokens_mean": 6.0,
    }
    expected = [check(Constraint.from_dict(row["constraint"]), "the the the the the the").passed
                for row in CONSTRAINED_ROWS if "constraint" in row]
    assert expected == [True, False, False, True]
    assert written["constraint_pass_rate"] == 0.5
    assert written["constraint_pass_rate_by_family"] == {
        "include_word": 1.0, "lowercase": 1.0, "max_words": 0.0, "uppercase": 0.0,
    }
    assert written["constraints_checked"] == 4
    assert generations[-1]["checks"]["constraint"] is None


def test_model_that_ends_at_once_gives_empty_ended_generations_failing_every_constraint(tmp_path):
    tokenizer = tiny_tokenizer()
    model_dir = save(context_free_llama(tokenizer, {tokenizer.eos_token_id: 10.0}), tokenizer, tmp_path / "m")
    data = write_jsonl(tmp_path / "test.jsonl", CONSTRAINED_ROWS)

    result = evaluate(config(model_dir, data, split="train", max_new_tokens=5), out_dir=tmp_path / "out")

    assert result["generation"]["ended_rate"] == 1.0
    assert result["generation"]["empty_rate"] == 1.0
    assert result["generation"]["length_tokens_mean"] == 1.0  # the end-of-turn token itself
    assert result["constraint_pass_rate"] == 0.0


DRIFT_ROWS = [
    {"prompt": "What is the capital of France?", "chosen": "It is Paris.", "rejected": "I do not know."},
    {"prompt": "Where is the train going?", "chosen": "The train goes to Paris today.", "rejected": "To the sea."},
    {"prompt": "Name a city.", "chosen": "I like Paris and Paris likes me.", "rejected": "A good city."},
]


def expected_chosen_drift(tokenizer, data, token, logit):
    """Per pair: mean over chosen tokens of log p_model − log p_base, base uniform over V,
    model uniform except ``token`` whose logit is ``logit``."""
    vocab = len(tokenizer)
    log_z = math.log(vocab - 1 + math.exp(logit))
    pairs, _ = prepare_pairs(data, tokenizer)
    drifts = []
    for pair in pairs:
        assert token in pair.chosen_ids and token not in pair.rejected_ids  # the construction
        per_token = [(logit if t == token else 0.0) - log_z + math.log(vocab) for t in pair.chosen_ids]
        drifts.append(sum(per_token) / len(per_token))
    return drifts, math.log(vocab) - log_z


def test_lowering_one_chosen_token_gives_negative_drift_and_full_unlearning(tmp_path):
    tokenizer = tiny_tokenizer()
    paris = tokenizer.encode(" Paris")[0]
    base_dir = save(context_free_llama(tokenizer, {}), tokenizer, tmp_path / "base")
    lowered = context_free_llama(tokenizer, {paris: -1.0})
    model_dir = save(lowered, tokenizer, tmp_path / "model")
    data = write_jsonl(tmp_path / "pairs.jsonl", DRIFT_ROWS)
    drifts, rejected_drift = expected_chosen_drift(tokenizer, data, paris, -h0(lowered))

    result = evaluate(config(model_dir, data, split="train", base=str(base_dir), generate=False), out_dir=tmp_path / "out")

    vocab = len(tokenizer)
    assert result["base"]["chosen_logp_mean"] == pytest.approx(-math.log(vocab))
    assert result["base"]["margin"]["mean"] == pytest.approx(0.0, abs=1e-5)  # uniform: equal r
    assert "collapse" in result["base"] and "collapse" in result
    assert max(drifts) < 0
    assert result["drift"]["chosen_drift_mean"] == pytest.approx(sum(drifts) / len(drifts), abs=1e-5)
    assert result["drift"]["unlearning_rate"] == 1.0
    assert result["drift"]["rejected_drift_mean"] == pytest.approx(rejected_drift, abs=1e-5)
    assert rejected_drift > 0
    assert not (tmp_path / "out" / "generations.jsonl").exists()

    table = format_eval_table(result)
    assert "| metric | model | base |" in table
    assert "unlearning rate | 1 |" in table


def test_the_end_of_turn_is_the_probability_of_ending_where_each_answer_ends_and_a_cut_answer_has_none(tmp_path):
    tokenizer = tiny_tokenizer()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    base_dir = save(context_free_llama(tokenizer, {}), tokenizer, tmp_path / "base")
    model = context_free_llama(tokenizer, {im_end: -2.0})
    model_dir = save(model, tokenizer, tmp_path / "model")
    long = {"prompt": "Name a city.", "chosen": "Paris. " * 40, "rejected": "Rome."}
    data = write_jsonl(tmp_path / "pairs.jsonl", [*DRIFT_ROWS, long])

    result = evaluate(config(model_dir, data, split="train", base=str(base_dir), generate=False),
                      out_dir=tmp_path / "out", prepare_options={"max_length": 64, "max_prompt_length": 32})

    # Every position: logit of <|im_end|> is -2·h0, every other token's 0.
    vocab, logit = len(tokenizer), -2.0 * h0(model)
    p_end = math.exp(logit) / (vocab - 1 + math.exp(logit))
    assert result["end_of_turn"]["chosen"] == {"count": 3, "logp_mean": pytest.approx(math.log(p_end), abs=1e-5),
                                               "p_mean": pytest.approx(p_end, rel=1e-5)}
    assert result["end_of_turn"]["rejected"]["count"] == 4
    assert result["base"]["end_of_turn"]["chosen"]["p_mean"] == pytest.approx(1 / vocab, rel=1e-5)


def test_the_end_of_turn_log_prob_equals_the_models_own_forward_at_the_answers_last_token(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", seed=5).eval()
    model_dir = save(model, tokenizer, tmp_path / "model")
    data = write_jsonl(tmp_path / "pairs.jsonl", DRIFT_ROWS)

    result = evaluate(config(model_dir, data, split="train", generate=False, batch_size=2), out_dir=tmp_path / "out")

    expected = {"chosen": [], "rejected": []}
    for pair in prepare_pairs(data, tokenizer)[0]:
        for side, response in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
            ids = torch.tensor([pair.prompt_ids + response])
            with torch.no_grad():
                logps = torch.log_softmax(model(ids).logits[0, -2].double(), -1)
            expected[side].append(logps[response[-1]].item())
    for side, values in expected.items():
        assert result["end_of_turn"][side]["logp_mean"] == pytest.approx(sum(values) / len(values), abs=1e-5)
        assert result["end_of_turn"][side]["p_mean"] == pytest.approx(
            sum(math.exp(v) for v in values) / len(values), rel=1e-5)


def test_adapter_folder_is_evaluated_on_its_base_and_base_scores_disable_the_adapter(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    import slimepo.eval.run as run_module

    tokenizer = tiny_tokenizer()
    base_dir = save(context_free_llama(tokenizer, {}), tokenizer, tmp_path / "base")
    lora = LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), lora)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    save(peft_model, tokenizer, tmp_path / "run")
    data = write_jsonl(tmp_path / "pairs.jsonl", DRIFT_ROWS)
    import slimepo.model

    loaded = []
    load = run_module.load_causal_lm
    counted = lambda name, **kw: loaded.append(name) or load(name, **kw)  # noqa: E731
    monkeypatch.setattr(run_module, "load_causal_lm", counted)  # a separate base (drift)
    monkeypatch.setattr(slimepo.model, "load_causal_lm", counted)  # the evaluated model and an adapter's base

    result = evaluate(config(tmp_path / "run", data, split="train", base=str(base_dir), generate=False),
                      out_dir=tmp_path / "out")

    assert loaded == [str(base_dir)]  # one copy of the base: under the adapter, scored with it disabled

    assert result["base"]["chosen_logp_mean"] == pytest.approx(-math.log(len(tokenizer)))
    assert result["chosen_logp_mean"] != pytest.approx(-math.log(len(tokenizer)))
    assert result["settings"]["model"] == str(tmp_path / "run")


@pytest.mark.parametrize("kind", TINY_MODEL_KINDS)
def test_left_padded_batched_greedy_generation_equals_one_by_one(kind):
    tokenizer = tiny_tokenizer()
    model = tiny_model(kind, seed=3).eval()
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        for text in ("Hi", "What is the capital of France?", "Please write a short poem about the sea and the wind.",
                     "Good morning", "Is this true or false?")
    ]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded

    batched = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=5)
    single = [generate(model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]

    assert batched == single
    assert sum(len(g.token_ids) for g in batched) > 2 * len(prompts)


def test_generations_stop_at_the_first_end_of_turn_and_keep_it():
    tokenizer = tiny_tokenizer()
    model = context_free_llama(tokenizer, {tokenizer.eos_token_id: 10.0})
    [generation] = generate(model, tokenizer, [[5, 6, 7]], max_new_tokens=8)
    assert generation.token_ids == [tokenizer.eos_token_id]
    assert generation.text == ""


def test_end_of_turn_ids_are_eos_plus_known_turn_tokens_in_the_vocab():
    tokenizer = tiny_tokenizer()
    assert end_of_turn_ids(tokenizer) == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    tokenizer.eos_token = "<|endoftext|>"
    assert end_of_turn_ids(tokenizer) == {
        tokenizer.convert_tokens_to_ids(token) for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")
    }


def test_sampling_is_reproducible_for_a_seed():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", seed=4).eval()
    prompts = [[5, 6, 7], [8, 9]]
    options = dict(max_new_tokens=10, sampling=True, temperature=1.5, top_p=0.95)
    first = generate(model, tokenizer, prompts, seed=1, **options)
    assert generate(model, tokenizer, prompts, seed=1, **options) == first
    assert generate(model, tokenizer, prompts, seed=2, **options) != first


def test_mt_bench_answers_and_judge_summary_go_into_eval_json(tmp_path):
    tokenizer = tiny_tokenizer()
    the = tokenizer.encode(" the")[0]
    model_dir = save(context_free_llama(tokenizer, {the: 10.0}), tokenizer, tmp_path / "model")
    questions = write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
        {"question_id": 2, "category": "roleplay", "turns": ["Be a cat.", "Now a dog."]},
    ])
    judge = FixedJudge("Fine answer. Rating: [[7]]")

    result = evaluate(config(model_dir, write_jsonl(tmp_path / "d.jsonl", DRIFT_ROWS), split="train", generate=False,
                             bench="mt-bench", questions=str(questions), bench_max_new_tokens=3),
                      out_dir=tmp_path / "out", judge=judge)

    bench = json.loads((tmp_path / "out" / "eval.json").read_text())["mt_bench"]
    answers = [json.loads(line) for line in Path(bench["answers"]).read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [1, 2]
    assert answers[0]["choices"][0]["turns"] == ["the the the", "the the the"]
    assert len(judge.requests) == 4
    assert len(Path(bench["judgments"]).read_text().splitlines()) == 4
    assert bench["overall"] == 7.0 and bench["questions"] == 2
    assert result["mt_bench"] == bench
    assert bench["provenance"]["questions_sha256"] == hashlib.sha256(questions.read_bytes()).hexdigest()
    assert bench["provenance"]["judge"] == {"model": None, "url": None, "temperature": None, "max_tokens": None}
    assert "MT-Bench score (1-10) | 7" in format_eval_table(result)


def test_eval_json_says_what_judging_cost_as_the_judge_reported_it(tmp_path, judge_url):
    tokenizer = tiny_tokenizer()
    model_dir = save(context_free_llama(tokenizer, {}), tokenizer, tmp_path / "model")
    questions = write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
        {"question_id": 2, "category": "roleplay", "turns": ["Be a cat.", "Now a dog."]},
    ])
    judge = JudgeClient(judge_url, "fake-judge")
    judge.usage["requests"] = 7  # judged before: not this call's cost
    before = server_stats(judge_url)["usage"]

    evaluate(config(model_dir, write_jsonl(tmp_path / "d.jsonl", DRIFT_ROWS), split="train", generate=False,
                    bench="mt-bench", questions=str(questions), bench_max_new_tokens=3),
             out_dir=tmp_path / "out", judge=judge)

    after = server_stats(judge_url)["usage"]
    usage = json.loads((tmp_path / "out" / "eval.json").read_text())["mt_bench"]["judge_usage"]
    assert usage == {"requests": 4, "replies": 4, "responses_with_usage": 4,  # 2 questions x 2 turns
                     "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
                     "completion_tokens": after["completion_tokens"] - before["completion_tokens"]}
    assert usage["prompt_tokens"] > 4 * 100  # FastChat's judge prompts are long
    assert judge.usage["requests"] == 7 + 4  # the client the caller holds counts them too
    assert "| judge requests (usable replies) | 4 (4) |" in format_eval_table(
        json.loads((tmp_path / "out" / "eval.json").read_text()))


def test_a_benchmark_that_is_not_judged_says_nothing_of_judging(tmp_path, judge_url):
    tokenizer = tiny_tokenizer()
    model_dir = save(context_free_llama(tokenizer, {}), tokenizer, tmp_path / "model")

    result = evaluate(config(model_dir, write_jsonl(tmp_path / "d.jsonl", DRIFT_ROWS), split="train", generate=False,
                             bench="ifeval", max_prompts=1, bench_max_new_tokens=2),
                      out_dir=tmp_path / "out", judge=JudgeClient(judge_url, "fake-judge"))

    assert result["ifeval"]["prompts"] == 1 and "judge_usage" not in result["ifeval"]
    assert "judge requests" not in format_eval_table(result)


def test_eval_command_writes_outputs_and_prints_the_table(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    model_dir = save(context_free_llama(tokenizer, {}), tokenizer, tmp_path / "model")
    data = write_jsonl(tmp_path / "test.jsonl", CONSTRAINED_ROWS)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "eval", "--model", str(model_dir), "--dataset", str(data), "--split", "train", "--base", str(model_dir),
        "--max-pairs", "2", "--max-new-tokens", "3", "--out", str(tmp_path / "out"),
    ])

    assert run(args) == 0

    assert "| metric | model | base |" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert result["pairs"] == 2 and result["drift"]["chosen_drift_mean"] == 0.0
    assert len((tmp_path / "out" / "generations.jsonl").read_text().splitlines()) == 2


class ModelJudge:
    """A judge that names its model and prefers AlpacaEval's output_1."""

    model, temperature = "judge-7b", 0.0

    def complete(self, messages):
        return "m"


def test_alpaca_eval_report_says_which_prompts_judge_decoding_and_template(tmp_path):
    tokenizer = tiny_tokenizer()
    model_dir = save(context_free_llama(tokenizer, {}), tokenizer, tmp_path / "model")
    installed = Path(alpacaeval.find_instructions())

    result = evaluate(config(model_dir, write_jsonl(tmp_path / "d.jsonl", DRIFT_ROWS), split="train", generate=False,
                             bench="alpaca-eval", max_prompts=2, bench_max_new_tokens=3),
                      out_dir=tmp_path / "out", judge=ModelJudge())

    bench = json.loads((tmp_path / "out" / "eval.json").read_text())["alpaca_eval"]
    assert bench["instructions"] == bench["n_total"] == 2
    assert bench["provenance"] == {
        # The installed file by its place in the packages, not this machine's path: the sha256 identifies it.
        "questions_file": "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
        "questions_sha256": hashlib.sha256(installed.read_bytes()).hexdigest(),
        "judge": {"model": "judge-7b", "url": None, "temperature": 0.0, "max_tokens": None},
        "decoding": {"max_new_tokens": 3, "sampling": False, "temperature": 1.0, "top_p": 1.0, "seed": 0},
        "chat_template": tokenizer.chat_template,
        "weights_sha256": weights_sha256(load_model(model_dir)[0]),
    }
    assert str(tmp_path) not in json.dumps(bench["provenance"]) and "site-packages" not in json.dumps(bench)
    assert "AlpacaEval win rate vs GPT-4 Turbo (%, 50 = par)" in format_eval_table(result)
