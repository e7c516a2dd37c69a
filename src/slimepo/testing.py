"""Small, offline, deterministic stand-ins for tests and demos.

Nothing here touches the network: the tokenizer is trained in-process on a built-in
English corpus, so tests run the same on a laptop, in CI and on an air-gapped machine.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

# ChatML, as used by SmolLM2 and Qwen: "<|im_start|>role\ncontent<|im_end|>\n" per turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TINY_VOCAB_SIZE = 768

_CORPUS = """\
The quick brown fox jumps over the lazy dog while the sun sets behind the hills.
A good answer is short, correct and polite; a bad answer is long, wrong or rude.
What is the capital of France? The capital of France is Paris.
What is two plus two? Two plus two is four, not five.
Please write a short poem about the sea and the wind.
The sea is wide and blue, the wind is cold and free.
How do I sort a list in Python? Use the sorted function or the sort method.
Water boils at one hundred degrees Celsius at sea level.
The cat sat on the mat and looked at the bird in the tree.
Thank you for your question. Here is a helpful and honest answer.
I am sorry, but I cannot help with that request.
Explain why the sky is blue. Sunlight is scattered by the air, and blue light is
scattered more than red light, so the sky looks blue during the day.
The user asked the assistant a question, and the assistant gave an answer.
You are a helpful assistant. Answer the question in one sentence.
Hello! How are you today? I am fine, thank you. How can I help you?
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 42 100 2024 3.14 1,000.
Cooking rice: rinse the rice, add water, bring it to a boil, then simmer for
twenty minutes with the lid on.
The train leaves the station at nine in the morning and arrives at noon.
Good morning, good evening, good night. Yes, no, maybe, always, never.
A preference dataset holds a prompt, a chosen response and a rejected response.
The model should prefer the chosen response over the rejected one.
Learning rate, batch size, margin, anchor, stabilizer, loss, gradient, token.
Rivers flow to the sea; mountains rise to the sky; forests grow in the valley.
She reads a book, he writes a letter, they walk in the park together.
Is this true or false? It is true. It is false. I do not know.
system user assistant system user assistant system user assistant
"""


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the byte-level BPE once per process; return it serialized."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A ChatML byte-level BPE tokenizer (vocab <= 768) built offline.

    Special tokens: ``<|im_start|>``, ``<|im_end|>`` (eos), ``<|endoftext|>`` (pad); no
    BOS, like Qwen. Each call returns a fresh object (training is cached), so a test
    that changes e.g. ``padding_side`` cannot leak into another.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=4096,
    )


# --- chat messages ----------------------------------------------------------------------


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


# --- tiny causal LMs -------------------------------------------------------------------

TINY_MODEL_KINDS = ("llama", "qwen2", "qwen3", "gemma2")


def tiny_model(kind: str = "llama", vocab_size: int | None = None, seed: int = 0):
    """A randomly initialized causal LM of the given family, 2 layers, hidden size 32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if kind not in TINY_MODEL_KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; valid: {', '.join(TINY_MODEL_KINDS)}")
    tokenizer = tiny_tokenizer()
    common = dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=kind != "llama",
    )
    extra = {
        "gemma2": dict(final_logit_softcapping=30.0, attn_logit_softcapping=50.0, sliding_window=64)
    }.get(kind, {})
    config = AutoConfig.for_model(kind, **common, **extra)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        config, attn_implementation="eager" if kind == "gemma2" else "sdpa"
    )


def save_tiny_model(folder, kind: str = "llama", seed: int = 0):
    """Save a tiny model and :func:`tiny_tokenizer` like a Hub checkpoint; return the folder."""
    from pathlib import Path

    folder = Path(folder)
    tiny_model(kind, seed=seed).save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder)
    return folder


# --- tiny preference data ---------------------------------------------------------------

_TOPICS = ("the sea", "a garden", "a train trip", "a letter", "the forest", "a market", "a bridge", "a candle")


def ultrafeedback_like_rows(n: int = 16) -> list[dict]:
    """Rows shaped like HuggingFaceH4/ultrafeedback_binarized (implicit prompt + extra columns)."""
    rows = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        prompt = f"Write one sentence about {topic}. ({i})"
        user = {"role": "user", "content": prompt}
        good = {"role": "assistant", "content": f"Here is a calm sentence about {topic}."}
        bad = {"role": "assistant", "content": f"No. {topic} is boring and I will not write."}
        rows.append({
            "prompt": prompt, "prompt_id": f"{i:04d}", "chosen": [user, good], "rejected": [user, bad],
            "messages": [user, good], "score_chosen": 8.0, "score_rejected": 3.0,
        })
    return rows


class FixedJudge:
    """A judge (``complete(messages)``, as :class:`slimepo.eval.judge.CompletionClient`) that
    returns ``reply`` to every request and keeps, in ``requests``, the messages it was sent."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.requests: list[list[dict[str, str]]] = []

    def complete(self, messages: list[dict[str, str]]) -> str:
        self.requests.append(messages)
        return self.reply


# --- mutation checks ----------------------------------------------------------------------


def mutated(source: str, old: str, new: str, where: str = "the source") -> str:
    """``source`` with ``old``, which must occur exactly once, replaced by ``new``."""
    count = source.count(old)
    if count != 1:
        raise ValueError(f"{old!r} occurs {count} times in {where}, not once")
    return source.replace(old, new)


def module_from_source(source: str, name: str):
    """Run ``source`` (a loss module's text, usually mutated) as a fresh module called ``name``.

    The module is in ``sys.modules`` while its code runs, as dataclasses look their module up
    there, and is taken out afterwards so that mutants never shadow one another.
    """
    import sys
    import types

    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


def failing_checks(checks, subject) -> list[str]:
    """The names of ``checks`` that fail on ``subject``: by an assertion, or by not running at all."""
    failed = []
    for check in checks:
        try:
            check(subject)
        except Exception:
            failed.append(check.__name__)
    return failed
