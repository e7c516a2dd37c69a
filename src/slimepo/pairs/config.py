"""Options of ``slimepo pairs`` and ``slimepo make-prompts``, each declared once (type, default,
help), as :class:`slimepo.config.TrainConfig` declares training's: the flags, the YAML keys and
the option table of ``docs/pairs.md`` come from these fields. The decoding defaults are
:class:`slimepo.generation.Decoding`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from slimepo.config import (
    DEFAULT_MODEL,
    DEMO,
    ConfigError,
    _check_choices,
    _check_finite,
    _check_whole_numbers,
    check_engine_options,
    check_url,
    option,
)
from slimepo.generation import ENGINES, Decoding
from slimepo.pairs.build import CUT_ANSWERS

SCORERS = ("ifeval", "constraints", "reward-model", "judge")
PAIRINGS = ("best-worst", "all")


@dataclass
class PairsConfig:
    """Options of ``slimepo pairs``."""

    command: ClassVar[str] = "pairs"

    # prompts
    prompts: str = option(
        DEMO, "prompt set: Hub id, datasets folder or JSON/JSONL/Parquet/CSV file with a prompt column (text, or "
        "messages ending with a user turn) and what the scorer reads; 'demo' = the shipped demo's prompts (each "
        "carries a constraint)", group="prompts",
    )
    split: str = option("train", "split of --prompts", group="prompts")
    columns: dict[str, str] = option({}, "column remapping, e.g. {prompt: question}", group="prompts")
    max_prompts: int | None = option(None, "use the first N prompts only", group="prompts")

    # model
    model: str = option(
        DEFAULT_MODEL, "Hub id, local folder, 'default', or a run folder holding a LoRA adapter; with --engine openai: "
        "the name the server knows (unless --engine-model)", group="model",
    )
    adapter: str | None = option(None, "PEFT adapter folder to load on top of --model (hf engine; vllm engine: served "
                                 "by vLLM's LoRA support, not merged)", group="model")
    dtype: str = option("auto", "auto | float32 | bfloat16 | float16 (hf and vllm engines, reward model)", group="model",
                        choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = option(False, "allow the model repository's own Python code to run", group="model")
    engine: str = option(
        "hf", "what generates: hf (transformers, in this process) | openai (any OpenAI-compatible "
        "/v1/chat/completions at --engine-url) | vllm (vLLM in this process, same prompt ids as hf; needs the venv "
        "of `make vllm-env`)",
        group="model", choices=ENGINES,
    )
    engine_url: str | None = option(None, "API base of the openai engine, e.g. http://localhost:8000/v1", group="model")
    engine_model: str | None = option(None, "model name sent to the openai engine (default: --model)", group="model")
    engine_key_env: str = option("OPENAI_API_KEY", "environment variable holding the openai engine's API key",
                                 group="model")

    # sampling
    k: int = option(4, "answers sampled per prompt", group="sampling")
    max_new_tokens: int = option(Decoding.max_new_tokens, "generation budget per answer", group="sampling")
    sample: bool = option(True, "sample (false: greedy, one answer per prompt)", group="sampling")
    temperature: float = option(Decoding.temperature, "sampling temperature", group="sampling")
    top_p: float = option(Decoding.top_p, "nucleus sampling mass", group="sampling")
    seed: int = option(Decoding.seed, "sampling seed: answer i is drawn under a seed made from seed + i and its prompt (hf: its batch)", group="sampling")
    batch_size: int = option(8, "prompts per generation batch (each batch is appended to samples.jsonl)",
                             group="sampling")

    # scoring
    scorer: str = option(
        "constraints", "what scores each answer: ifeval (the row's IFEval instruction_id_list and kwargs, official "
        "checkers: share of instructions followed) | constraints (the row's slimepo constraint: 1 pass, 0 fail) | "
        "reward-model (--reward-model's logit) | judge (1-10 from --judge-url)", group="scoring", choices=SCORERS,
    )
    ifeval_mode: str = option("strict", "ifeval scorer: strict | loose (IFEval's two readings)", group="scoring",
                              choices=("strict", "loose"))
    reward_model: str | None = option(
        None, "reward-model scorer: Hub id or folder of a sequence classifier with one label (its own tokenizer and "
        "chat template)", group="scoring",
    )
    judge_url: str | None = option(None, "judge scorer: OpenAI-compatible API of the judge", group="scoring")
    judge_model: str | None = option(None, "judge scorer: judge model name", group="scoring")
    judge_key_env: str = option("OPENAI_API_KEY", "judge scorer: environment variable holding the judge API key",
                                group="scoring")

    # pairs
    pairing: str = option(
        "best-worst", "best-worst (one pair per prompt: its best and worst answers) | all (every pair of answers)",
        group="pairs", choices=PAIRINGS,
    )
    min_gap: float = option(
        0.0, "a pair needs chosen score - rejected score > 0 and >= this; ties and smaller gaps are dropped and counted",
        group="pairs",
    )
    cut_answers: str = option(
        "keep", "answers the token budget cut (training closes them with the end-of-turn token like any other): keep "
        "(pair them as any other, as TRL does) | reject (never chosen: every chosen answer ended) | drop (in no pair)",
        group="pairs", choices=CUT_ANSWERS,
    )
    out: str = option("runs/pairs", "output folder: pairs.jsonl, samples.jsonl, provenance.json", group="pairs")

    def validate(self) -> None:
        """Check every option before anything is loaded; raise :class:`~slimepo.config.ConfigError`."""
        _check_choices(self)
        _check_finite(self)
        _check_whole_numbers(self, "k", "max_new_tokens", "batch_size", "max_prompts")
        _check_columns(self.columns)
        try:
            decoding = self.decoding()
        except ValueError as err:
            raise ConfigError(f"decoding: {err}") from None
        try:
            decoding.check_samples(self.k)
        except ValueError as err:
            raise ConfigError(f"k: {err}") from None
        if self.min_gap < 0:
            raise ConfigError(f"min_gap: must be >= 0, got {self.min_gap}")
        check_engine_options(self)
        if self.scorer == "reward-model" and not self.reward_model:
            raise ConfigError("reward_model: the reward-model scorer needs it")
        if self.scorer == "judge":
            if not (self.judge_url and self.judge_model):
                raise ConfigError("judge_url, judge_model: the judge scorer needs both")
            check_url(self.judge_url, "judge_url")

    def decoding(self) -> Decoding:
        return Decoding(self.max_new_tokens, self.sample, self.temperature, self.top_p, self.seed)


def _check_columns(columns: dict[str, str]) -> None:
    """Only the prompt column can be renamed: it is the one both commands read by name."""
    if set(columns) - {"prompt"}:
        raise ConfigError(f"columns: maps prompt to your column's name, e.g. {{prompt: question}}; got {columns}")


@dataclass
class MakePromptsConfig:
    """Options of ``slimepo make-prompts``."""

    command: ClassVar[str] = "make-prompts"

    requests: str = option(
        DEMO, "base requests: Hub id, datasets folder or JSON/JSONL/Parquet/CSV file with a prompt column (text or "
        "messages; the last user turn is the request); 'demo' = the shipped demo's prompts without their constraint "
        "sentence", group="prompts",
    )
    split: str = option("train", "split of --requests", group="prompts")
    columns: dict[str, str] = option({}, "column remapping, e.g. {prompt: question}", group="prompts")
    per_request: int = option(1, "prompts composed from each request", group="prompts")
    min_instructions: int = option(1, "fewest IFEval instructions per prompt", group="prompts")
    max_instructions: int = option(3, "most IFEval instructions per prompt (fewer when the types left conflict)",
                                   group="prompts")
    instruction_types: list[str] = option(
        [], "IFEval instruction types to draw from, e.g. [punctuation:no_comma, detectable_format:title] (empty: all "
        "of IFEval's 25)", group="prompts",
    )
    seed: int = option(0, "seed of the drawn instructions and their kwargs", group="prompts")
    out: str = option("runs/prompts/ifeval-prompts.jsonl", "JSONL file of {key, prompt, instruction_id_list, kwargs, "
                      "request} rows (what --scorer ifeval reads); a .provenance.json is written beside it",
                      group="prompts")

    def validate(self) -> None:
        _check_finite(self)
        _check_whole_numbers(self, "per_request", "min_instructions", "max_instructions")
        _check_columns(self.columns)
        if self.min_instructions > self.max_instructions:
            raise ConfigError(f"min_instructions: {self.min_instructions} is more than max_instructions "
                              f"{self.max_instructions}")
        from slimepo.ifeval_checkers import registry

        unknown = sorted(set(self.instruction_types) - set(registry("ifeval")))
        if unknown:
            raise ConfigError(f"instruction_types: IFEval has no type {', '.join(unknown)}; "
                              f"its types: {', '.join(sorted(registry('ifeval')))}")
