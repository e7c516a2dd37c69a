"""Scorers: IFEval's official checkers, slimepo's constraints, a reward model checked by hand
against its own logits, and an LLM judge (the eval tests' fake judge)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from slimepo.data import demo_file
from slimepo.eval.judge import JudgeClient
from slimepo.pairs.prompts import PromptRecord, conversation_of
from slimepo.pairs.scorers import make_scorer
from slimepo.pairs.scorers.judge import JudgeScorer
from slimepo.pairs.scorers.reward_model import RewardModelScorer
from slimepo.testing import IM_END, tiny_tokenizer


def record(prompt, key="k", **data):
    return PromptRecord(key, "file:1", prompt, conversation_of(prompt), {"prompt": prompt, **data})


def test_ifeval_score_is_the_share_of_instructions_followed_strict_or_loose():
    row = record("Write about the sea. Do not use commas. Use only lowercase letters.",
                 instruction_id_list=["punctuation:no_comma", "change_case:english_lowercase"], kwargs=[{}, {}])
    strict, loose = make_scorer("ifeval"), make_scorer("ifeval", mode="loose")
    assert strict.problem(row) is None
    answers = ["the sea is wide and blue and calm", "the sea, wide and blue", "Sure, here it is.\nthe sea is wide"]
    assert [s.value for s in strict.score([(row, a) for a in answers])] == [1.0, 0.5, 0.0]
    assert [s.value for s in loose.score([(row, a) for a in answers])] == [1.0, 0.5, 1.0]
    assert strict.score([(row, answers[1])])[0].detail == {"followed": [False, True]}
    assert strict.settings() != loose.settings()


def test_ifeval_scorer_reads_kwargs_as_json_text_and_names_what_a_row_lacks():
    scorer = make_scorer("ifeval")
    as_text = record("Answer in 3 bullets.", instruction_id_list=json.dumps(["detectable_format:number_bullet_lists"]),
                     kwargs=json.dumps([{"num_bullets": 3}]))
    assert scorer.problem(as_text) is None
    assert scorer.score([(as_text, "* a\n* b\n* c")])[0].value == 1.0
    assert "instruction_id_list" in scorer.problem(record("Hi"))
    assert "no instruction type" in scorer.problem(record("Hi", instruction_id_list=["made:up"], kwargs=[{}]))
    assert "one dict per instruction" in scorer.problem(record("Hi", instruction_id_list=["punctuation:no_comma"],
                                                               kwargs=[]))


def test_constraints_scorer_passes_the_demo_chosen_answers_and_fails_the_rejected():
    rows = [json.loads(line) for line in Path(demo_file("test")).read_text(encoding="utf-8").splitlines()][:6]
    scorer = make_scorer("constraints")
    records = [record(r["prompt"], constraint=r["constraint"]) for r in rows]
    assert all(scorer.problem(r) is None for r in records)
    assert [s.value for s in scorer.score([(r, row["chosen"]) for r, row in zip(records, rows)])] == [1.0] * 6
    rejected = scorer.score([(r, row["rejected"]) for r, row in zip(records, rows)])
    assert [s.value for s in rejected] == [0.0] * 6 and all(s.detail != "ok" for s in rejected)
    assert scorer.problem(record("Hi")) == "the row has no constraint"
    assert "unknown constraint family" in scorer.problem(record("Hi", constraint={"family": "nope"}))


def tiny_reward_model(folder, num_labels=1, chat_template=True):
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = IM_END  # pad = EOS, as many chat models have it
    if not chat_template:
        tokenizer.chat_template = None
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def logit_by_hand(model, ids):
    """The classifier's head on the last token's hidden state of one unpadded row."""
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        return float(model.score.weight[0] @ hidden)


@pytest.mark.parametrize("chat_template", [True, False])
def test_reward_model_score_is_the_logit_at_each_rows_last_token_batched(tmp_path, chat_template):
    folder = tiny_reward_model(tmp_path / "rm", chat_template=chat_template)
    scorer = make_scorer("reward-model", model=str(folder), batch_size=3)
    rows = [record("What is the capital of France?"),
            record([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}])]
    # different lengths pad each batch; the last ends with the pad token itself (pad = EOS)
    answers = ["Paris.", "The capital of France is Paris, a city on the river.", "Sunlight is scattered.",
               "Blue light is scattered more than red light, so the sky looks blue." + IM_END]
    items = [(rows[0], answers[0]), (rows[0], answers[1]), (rows[1], answers[2]), (rows[1], answers[3])]
    scores = scorer.score(items)
    tokenizer = scorer.tokenizer
    for (row, answer), score in zip(items, scores):
        conversation = [*row.conversation, {"role": "assistant", "content": answer}]
        if chat_template:
            ids = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer("\n\n".join(m["content"] for m in conversation))["input_ids"]
        assert score.error is None
        assert score.value == pytest.approx(logit_by_hand(scorer.model, ids), abs=1e-5)
    if not chat_template:
        assert tokenizer(answers[3])["input_ids"][-1] == tokenizer.pad_token_id
    assert len({round(s.value, 6) for s in scores}) == 4
    assert scorer.settings()["weights_sha256"] and scorer.model.config.pad_token_id == tokenizer.pad_token_id


def test_reward_model_with_more_than_one_label_is_refused(tmp_path):
    folder = tiny_reward_model(tmp_path / "rm2", num_labels=2)
    with pytest.raises(ValueError, match="one label"):
        RewardModelScorer.load(str(folder))


def test_judge_scorer_rates_each_answer_and_records_failures(judge_url):
    scorer = JudgeScorer(JudgeClient(judge_url, "fake-judge", max_retries=1, backoff=0))
    row = record("Write a haiku about rain.")
    scores = scorer.score([(row, "Rain taps. FAKE:j1:score=7"), (row, "Drops. FAKE:j2:single=3"),
                           (row, "No. FAKE:j3:garbage"), (row, "Hmm. FAKE:j4:down")])
    assert [s.value for s in scores] == [7.0, 3.0, None, None]
    assert "no [[rating]]" in scores[2].error and scores[2].detail == "I would rather not give a number."
    assert "JudgeError" in scores[3].error
    [system, user] = scorer.messages(row, "Rain taps.")
    assert system["role"] == "system" and "[Question]\nWrite a haiku about rain." in user["content"]
    assert "[The Start of Assistant's Answer]\nRain taps.\n" in user["content"]
    settings = scorer.settings()
    assert settings["prompt"] == "single-v1" and settings["model"] == "fake-judge" and len(settings["prompt_sha256"]) == 64
