"""Every option, declared once: type, default, help.

The CLI flags, the YAML keys, the saved ``config.yaml`` and the option references in
docs/options.md all come from :class:`TrainConfig` (``slimepo train``, and the training half of
``slimepo compare``) and :class:`EvalConfig` (``slimepo eval``, and the generation and
benchmark options of ``slimepo compare``). Validation happens here, before any model or
data is loaded, and every error names the option and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from slimepo.endpoints import check_api_url
from slimepo.generation import base as generation
from slimepo.generation.base import BENCH_MAX_NEW_TOKENS, ENGINES, Decoding
from slimepo.losses import (
    LOSSES,
    UNPAIRED_LOSSES,
    PreferenceLoss,
    UnpairedLoss,
    WpoWeighted,
    get_loss,
    parse_loss_spec,
    spec_text,
)

DEMO = "demo"
DEFAULT_MODEL = "default"


def option(default: Any, help: str, *, group: str, **metadata: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, "group": group, **metadata})
    return field(default=default, metadata={"help": help, "group": group, **metadata})


class ConfigError(ValueError):
    """An invalid option, with its name and what is allowed."""


@dataclass
class TrainConfig:
    command: ClassVar[str] = "train"

    # model
    model: str = option(
        DEFAULT_MODEL,
        "Hub id or local path of a causal LM; 'default' = the embedded SmolLM2-135M-Instruct",
        group="model",
    )
    ref_model: str | None = option(
        None, "reference model for reference-based losses (default: the initial weights)", group="model"
    )
    precompute_ref_logps: bool = option(
        False, "score every training pair under the reference once before training (no reference pass per step)",
        group="model",
    )
    ref_logps_cache: str = option(
        "auto", "where --precompute-ref-logps keeps the reference log-probs for later runs, keyed by the reference's "
        "weights, the tokenized pairs and every setting that changes the numbers: auto (<slimepo cache>/ref-logps) "
        "| off | a folder", group="model",
    )
    dtype: str = option(
        "auto", "weights' dtype: auto (float32, trained under --mixed-precision auto) | float32 (no autocast unless "
        "--mixed-precision says so) | bfloat16 | float16 (pure half-precision weights, no fp32 master copy)",
        group="model", choices=("auto", "float32", "bfloat16", "float16"),
    )
    mixed_precision: str = option(
        "auto", "autocast of the forward pass over float32 weights: auto (bf16 with --dtype auto on a CPU with "
        "AVX512-BF16 or AMX, or a GPU that supports bf16; else no) | no | bf16 | fp16 (refused for now: its loss scaler "
        "does not work with the non-finite step guard); log-probs and losses stay float32", group="model", choices=("auto", "no", "bf16", "fp16"),
    )
    trust_remote_code: bool = option(False, "allow the model repository's own Python code to run", group="model")
    attn_implementation: str = option(
        "sdpa", "attention kernel: sdpa | eager | flex_attention (CUDA: skips the masked blocks of shared and packed "
        "rows) | flash_attention_2 (only with --layout separate)", group="model",
    )
    use_lora: bool = option(True, "train LoRA adapters (false: full fine-tuning)", group="model")
    load_in_4bit: bool = option(
        False, "QLoRA: the frozen base in 4-bit NF4 (bitsandbytes: pip install 'slimepo[qlora]'), LoRA adapters and "
        "the output projection in full precision", group="model",
    )
    lora_r: int = option(16, "LoRA rank", group="model")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r)", group="model")
    lora_dropout: float = option(0.05, "LoRA dropout", group="model")
    lora_target_modules: str = option(
        "all-linear", "modules given LoRA adapters: all-linear or a comma-separated list", group="model"
    )
    modules_to_save: list[str] = option([], "modules trained fully beside LoRA, e.g. [lm_head] as in the paper", group="model")
    frozen_dtype: str = option(
        "float32", "dtype of LoRA's frozen base linear weights: float32 | bfloat16 (under bf16 autocast the same "
        "numbers, bit for bit, without their fp32 copy and per-forward bf16 casts; head, embeddings and norms stay "
        "float32)", group="model", choices=("float32", "bfloat16"),
    )
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory", group="model")

    # data
    dataset: str = option(DEMO, "Hub id, datasets folder or JSON/JSONL/Parquet/CSV file; 'demo' = the shipped set", group="data")
    dataset_split: str = option("train", "split of --dataset to train on", group="data")
    eval_dataset: str | None = option(
        None, "held-out data (default: the demo's test split for 'demo', else --eval-fraction of --dataset)", group="data"
    )
    eval_split: str = option("test", "split of --eval-dataset", group="data")
    eval_fraction: float = option(0.05, "share of --dataset held out when no --eval-dataset is given", group="data")
    columns: dict[str, str] = option({}, "column remapping, e.g. {prompt: question, chosen: good, rejected: bad}", group="data")
    weight_column: str | None = option(
        None, "column of --dataset (as it is named there) holding each pair's weight w_i >= 0: every batch mean of "
        "the loss becomes a mean weighted by w_i, a pair of weight 2 counting as that pair twice (docs/losses.md); a "
        "row whose weight is missing, negative or not a number is a bad row. Pair losses only", group="data",
    )
    chat_template: str = option(
        "auto", "auto (the tokenizer's, when it has one) | none (plain text) | a Jinja template or a file holding one",
        group="data",
    )
    max_length: int = option(1024, "max tokens of prompt + response", group="data")
    max_prompt_length: int = option(512, "max prompt tokens (the prompt loses tokens from its left)", group="data")
    max_bad_fraction: float = option(0.05, "stop when more than this share of rows is invalid", group="data")
    dataset_cut: str | None = option(
        None, "use one part of --dataset after a seeded shuffle: first:F (the first share F) or rest:F (the other 1-F), "
        "e.g. the paper's SFT first:0.34 and preference rest:0.34", group="data",
    )
    dataset_cut_seed: int = option(0, "shuffle seed of --dataset-cut (the paper uses 0)", group="data")
    max_train_pairs: int | None = option(None, "use at most this many training pairs (after shuffling)", group="data")
    max_eval_pairs: int | None = option(None, "use at most this many held-out pairs", group="data")

    # objective
    loss: str = option(
        "slime", f"objective: {', '.join(LOSSES)}; {', '.join(UNPAIRED_LOSSES)} (unpaired prompt/completion/label "
        "rows); or a weighted sum of the paired ones, 'dpo,sft=0.2' (in YAML also a list: [dpo, {sft: 0.2}]; a "
        "weight left out is 1)", group="objective", normalize=lambda spec: spec_text(parse_loss_spec(spec)),
    )
    loss_params: dict[str, Any] = option(
        {}, "overrides of the loss's hyperparameters, e.g. {anchor_weight: 0.2}; for a weighted sum, per loss: "
        "{dpo: {beta: 0.2}}", group="objective",
    )
    wpo: bool = option(
        False, "WPO weighting (Zhou et al., arXiv:2406.11827; TRL's use_weighting): every term of each pair's loss "
        "multiplied by min(1, w(y_w)·w(y_l)), w(y) the response's length-normalized probability under the current "
        "policy, each token's divided by the sum of squared probabilities of its position; detached "
        "(docs/losses.md). Pair losses only", group="objective",
    )
    wpo_clamp: bool = option(
        True, "clamp WPO's pair weight at 1, as the paper's code and TRL 0.12-0.28 do; --no-wpo-clamp: the "
        "product unclamped, as TRL 0.29 and later. Only with --wpo", group="objective",
    )

    # optimization
    output_dir: str = option("runs/slime-demo", "where the adapter/model, metrics and checkpoints go", group="training")
    overwrite: bool = option(False, "allow writing into an output folder that holds another run", group="training")
    resume: str | None = option(None, "resume from a checkpoint folder, or 'auto' for the newest in output_dir", group="training")
    seed: int = option(0, "seed for data order, initialization and dropout", group="training")
    learning_rate: float = option(1e-4, "peak learning rate", group="training")
    lr_scheduler: str = option("cosine", "learning-rate schedule after warm-up: cosine | linear | constant", group="training",
                               choices=("cosine", "linear", "constant"))
    warmup_ratio: float = option(0.1, "share of steps spent warming up the learning rate", group="training")
    weight_decay: float = option(0.0, "AdamW weight decay", group="training")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)", group="training")
    batch_size: int = option(4, "pairs per device per micro-batch", group="training")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step", group="training")
    num_epochs: float = option(1.0, "passes over the training pairs", group="training")
    max_steps: int = option(-1, "optimizer steps (overrides --num-epochs when > 0)", group="training")
    logging_steps: int = option(5, "log metrics every this many steps", group="training")
    eval_steps: int = option(0, "evaluate on the held-out split every this many steps (0: only before and after)", group="training")
    save_steps: int = option(500, "checkpoint every this many steps (0: no checkpoints)", group="training")
    save_total_limit: int | None = option(
        2, "keep at most this many complete checkpoints, the newest always among them (null: all)", group="training"
    )
    max_bad_steps: int = option(
        5, "stop after this many consecutive optimizer steps with a non-finite loss or gradient (each is skipped)",
        group="training",
    )
    report_to: str = option("none", "also log to: none | tensorboard | wandb", group="training", choices=("none", "tensorboard", "wandb"))
    monitor_steps: int = option(20, "score a fixed held-out batch every this many steps for drift and collapse (0: off)", group="monitoring")
    monitor_pairs: int = option(8, "held-out pairs the monitor scores", group="monitoring")
    unlearning_alarm: float = option(0.5, "warn once when chosen log-lik has fallen by more than this (nats/token)", group="monitoring")
    collapse_alarm: float = option(
        0.02, "warn once when the share of rejected tokens with p < 1e-4 has risen by more than this since the start",
        group="monitoring",
    )
    layout: str = option(
        "shared", "how pairs become token rows: shared (prompt encoded once, responses attend to it but not to each "
        "other) | separate (prompt+chosen and prompt+rejected rows, as TRL) | packed (shared pairs packed into rows "
        "of up to --pack-tokens)", group="training", choices=("shared", "separate", "packed"),
    )
    pack_tokens: int | None = option(
        None, "row length budget of --layout packed (default: the batch's longest pair, so packing fills padding "
        "without lengthening rows; larger budgets pay off with flex_attention)", group="training",
    )
    max_tokens_per_batch: int | None = option(
        None, "length-bucketed training batches of at most this many tokens (pairs x longest pair) instead of "
        "--batch-size pairs", group="training",
    )
    fsdp: bool = option(
        False, "shard weights, gradients and optimizer state across processes (FSDP2, applied by transformers "
        "when the model loads: DistributedConfig(fsdp_size=processes)) instead of replicating them (DDP); "
        "transformers cannot checkpoint such a model: needs --save-steps 0, no --resume, no --merge",
        group="training",
    )
    compile_loss: bool = option(False, "torch.compile the loss computation (from per-token log-probs to the loss)", group="training")
    logprob_chunk_size: int = option(512, "tokens per chunk of the output projection (0: materialize all logits)", group="training")
    merge: bool = option(False, "also write the LoRA adapter merged into the base weights", group="training")
    dry_run: bool = option(
        False, "check this config's options and data plumbing offline: a tiny model of random weights, a small "
        "synthetic sample in the dataset's format when the dataset cannot be read, 2 steps, output in a temp folder",
        group="training",
    )

    def validate(self) -> None:
        """Check every option before anything is loaded; raise :class:`ConfigError`."""
        try:
            parse_loss_spec(self.loss)
        except ValueError as err:
            raise ConfigError(f"loss: {err}; valid losses: {', '.join(LOSSES)}") from None
        try:
            get_loss(self.loss, **self.loss_params)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"loss_params: {err}") from None
        _check_choices(self)
        output = Path(self.output_dir)
        if output.exists() and not output.is_dir():
            raise ConfigError(f"output_dir: {self.output_dir!r} is a file, not a folder")
        positive = ("learning_rate", "lora_r", "lora_alpha", "batch_size", "gradient_accumulation_steps", "max_length",
                    "max_prompt_length", "logging_steps")
        _check_whole_numbers(self, "max_tokens_per_batch", "pack_tokens")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}: must be a number > 0, got {value!r}")
        nonnegative = ("weight_decay", "max_grad_norm", "eval_steps", "save_steps", "logprob_chunk_size",
                       "monitor_steps", "monitor_pairs", "unlearning_alarm")
        for name in nonnegative:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}: must be a number >= 0, got {value!r}")
        for name in ("lora_dropout", "warmup_ratio", "max_bad_fraction", "collapse_alarm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name}: must be in [0, 1], got {value!r}")
        _check_finite(self)  # after the range checks, whose messages say more; they let inf and some nan through
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction: must be in (0, 1), got {self.eval_fraction!r}")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length}) "
                "so that responses keep at least one token"
            )
        if self.mixed_precision == "fp16":
            # A skipped step never reaches GradScaler.step/update, so the next unscale_ raises.
            raise ConfigError(
                "mixed_precision: fp16 is not supported yet: its loss scaler and slimepo's non-finite step guard "
                "(which skips a bad step without the scaler's update) do not work together; use bf16 or no"
            )
        if self.mixed_precision == "bf16" and self.dtype in ("bfloat16", "float16"):
            raise ConfigError(
                f"mixed_precision: {self.mixed_precision} autocasts over float32 weights, but --dtype is {self.dtype}; "
                "use --dtype auto or float32 with it, or --mixed-precision no"
            )
        if self.fsdp:
            for name, value, allowed in (("save_steps", self.save_steps, 0), ("resume", self.resume, None),
                                         ("merge", self.merge, False)):
                if value != allowed:
                    raise ConfigError(
                        f"{name}: must be {allowed} with --fsdp, got {value!r}: transformers cannot checkpoint or "
                        "resume a model sharded at load time, and its weights are not whole on any one process"
                    )
            too_old = fsdp_versions_too_old()
            if too_old:
                raise ConfigError(
                    f"fsdp: sharded training was tested only with {', '.join(f'{n} >= {v}' for n, v in FSDP_MIN_VERSIONS.items())}; "
                    f"older versions shard wrongly or fail (make test-floors); here: {', '.join(too_old)}"
                )
        if self.frozen_dtype == "bfloat16" and not self.use_lora:
            raise ConfigError("frozen_dtype: bfloat16 stores LoRA's frozen base; full fine-tuning has none "
                              "(--dtype sets the weights' dtype)")
        if self.frozen_dtype == "bfloat16" and self.merge:
            raise ConfigError("frozen_dtype: bfloat16 rounds the base weights --merge would write; merge the adapter "
                              "into the float32 base afterwards")
        if self.load_in_4bit:
            for name, value, allowed in (("use_lora", self.use_lora, True), ("fsdp", self.fsdp, False),
                                         ("merge", self.merge, False)):
                if value != allowed:
                    raise ConfigError(
                        f"load_in_4bit: needs {name} {allowed}, got {value!r}: a 4-bit base is frozen (only LoRA "
                        "trains it), is not sharded by --fsdp, and is merged by loading the base unquantized"
                    )
            if self.dtype == "float16":
                raise ConfigError("load_in_4bit: the unquantized parts need --dtype auto, float32 or bfloat16")
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError("load_in_4bit: needs bitsandbytes, which is not installed: "
                                  "pip install 'slimepo[qlora]'")
        if self.attn_implementation.startswith("flash_attention") and self.layout != "separate":
            raise ConfigError(
                f"attn_implementation: {self.attn_implementation} takes no per-pair attention mask, which --layout "
                f"{self.layout} needs (responses must not see each other); use --layout separate with it, or "
                "sdpa / flex_attention"
            )
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ConfigError("num_epochs: must be > 0 when max_steps is not set")
        for name in ("dataset", "eval_dataset", "ref_model", "model"):
            value = getattr(self, name)
            # A dry run replaces models and unreadable data, e.g. the SFT output a stage-2 recipe starts from.
            if value in (None, DEMO, DEFAULT_MODEL) or self.dry_run:
                continue
            if _looks_local(value) and not Path(value).exists():
                raise ConfigError(f"{name}: path {value!r} does not exist")
        if self.resume not in (None, "auto") and not Path(self.resume).is_dir():
            raise ConfigError(f"resume: {self.resume!r} is neither 'auto' nor an existing checkpoint folder")
        if isinstance(self.max_bad_steps, bool) or not isinstance(self.max_bad_steps, int) or self.max_bad_steps < 1:
            raise ConfigError(f"max_bad_steps: must be an integer >= 1, got {self.max_bad_steps!r}")
        limit = self.save_total_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"save_total_limit: must be an integer >= 1 or null (keep all), got {limit!r}")
        if self.dataset_cut is not None:
            part, _, share = self.dataset_cut.partition(":")
            try:
                ok = part in ("first", "rest") and 0 < float(share) < 1
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"dataset_cut: expected first:F or rest:F with 0 < F < 1, got {self.dataset_cut!r}")
        unknown_columns = set(self.columns) - {"prompt", "chosen", "rejected"}
        if unknown_columns:
            raise ConfigError(f"columns: unknown key(s) {sorted(unknown_columns)}; allowed: prompt, chosen, rejected")
        if self.weight_column is not None and not self.weight_column.strip():
            raise ConfigError("weight_column: must name a column of --dataset, got an empty name")
        if self.weight_column is not None and parse_loss_spec(self.loss)[0][0] in UNPAIRED_LOSSES:
            raise ConfigError(f"weight_column: {self.loss} trains on unpaired examples, whose loss takes no per-pair "
                              "weights; drop --weight-column or train on pairs with a pair loss")
        if self.wpo and parse_loss_spec(self.loss)[0][0] in UNPAIRED_LOSSES:
            raise ConfigError(f"wpo: {self.loss} trains on unpaired examples; WPO weighs preference pairs: drop --wpo "
                              "or train on pairs with a pair loss")
        if not self.wpo_clamp and not self.wpo:
            raise ConfigError("wpo_clamp: false applies to WPO's weights; add --wpo or drop --no-wpo-clamp")

    def loss_fn(self) -> PreferenceLoss | UnpairedLoss:
        """The objective these options name: ``--loss`` with ``--loss-params``, WPO-weighted under ``--wpo``."""
        loss = get_loss(self.loss, **self.loss_params)
        return WpoWeighted(loss, clamp=self.wpo_clamp) if self.wpo else loss

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: What --fsdp needs beyond the package floors: with transformers 5.19 / 5.22, accelerate 1.3 / 1.8 or peft
#: 0.20 the 2-process FSDP tests fail (wrong losses, or a shape error in the sharded forward).
FSDP_MIN_VERSIONS = {"transformers": "5.24", "accelerate": "1.15", "peft": "0.21.2"}


def installed_version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def fsdp_versions_too_old() -> list[str]:
    """``"name version"`` for each installed package older than :data:`FSDP_MIN_VERSIONS` asks."""
    from packaging.version import Version

    return [f"{name} {installed_version(name)}" for name, floor in FSDP_MIN_VERSIONS.items()
            if Version(installed_version(name)) < Version(floor)]


def _check_choices(config: Any) -> None:
    """Each field declared with ``choices`` holds one of them (None, where allowed, is not listed)."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            allowed = ", ".join(str(c) for c in choices if c is not None)
            raise ConfigError(f"{f.name}: got {getattr(config, f.name)!r}; allowed: {allowed}")


def _check_finite(config: Any) -> None:
    """Each float option is a finite number: inf and nan (YAML's .inf, .nan) make no sense for any."""
    for name, kind in _field_types(type(config)).items():
        value = getattr(config, name)
        if float in _allowed_types(kind) and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")


def _check_whole_numbers(config: Any, *names: str) -> None:
    """Each of ``names`` is None (unset) or an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}: must be a whole number >= 1, got {value!r}")


#: The suffix of a file name (``.txt``, ``.tsv``, ``.gz``, ``.bz2``), unlike the dotted version in a Hub id
#: (``Qwen/Qwen2.5-0.5B``: ``.5B``, ``org/phi-1.5``: ``.5``).
FILE_SUFFIX = re.compile(r"\.[a-z]{2,4}[0-9]?")


def _looks_local(value: str) -> bool:
    """A path rather than a Hub id (``org/name``).

    It starts with . / ~, has a data-file suffix or more than one slash, or has a path
    separator and either a file suffix (``data/prefs.txt``) or a first component that is
    a folder here (``data/prefs``).
    """
    suffixes = (".json", ".jsonl", ".parquet", ".csv", ".yaml", ".yml")
    if value.startswith((".", "/", "~")) or value.endswith(suffixes) or value.count("/") > 1:
        return True
    parts = value.replace(os.sep, "/").split("/")
    if len(parts) == 1:
        return False
    return bool(FILE_SUFFIX.fullmatch(Path(value).suffix)) or Path(parts[0]).is_dir()


BENCHMARKS = ("mt-bench", "ifeval", "ifbench", "arena-hard", "alpaca-eval")
#: The benchmarks whose answers a judge (--judge-url) grades.
JUDGED_BENCHMARKS = ("mt-bench", "arena-hard", "alpaca-eval")


@dataclass
class EvalConfig:
    """Options of ``slimepo eval``; ``slimepo compare`` takes its generation and benchmark groups."""

    command: ClassVar[str] = "eval"

    # evaluation (slimepo eval only: slimepo compare takes these from the training options)
    model: str = option(
        DEFAULT_MODEL, "Hub id, local folder, 'default', or a run folder holding a LoRA adapter", group="evaluation"
    )
    adapter: str | None = option(None, "PEFT adapter folder to load on top of --model", group="evaluation")
    dataset: str = option(DEMO, "held-out data: as for training; 'demo' = the shipped set", group="evaluation")
    split: str = option("test", "split of --dataset", group="evaluation")
    base: str | None = option(None, "model to measure drift against, e.g. the initial model ('default')", group="evaluation")
    out: str | None = option(None, "output folder (default: eval/ inside the adapter or model folder when local, beside what training "
        "wrote there; a folder holding a training run's metrics.jsonl is refused)", group="evaluation")
    max_pairs: int | None = option(None, "evaluate the first N held-out pairs only", group="evaluation")
    seed: int = option(0, "sampling seed", group="evaluation")
    dtype: str = option("auto", "auto | float32 | bfloat16 | float16", group="evaluation",
                        choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = option(False, "allow the model repository's own Python code to run", group="evaluation")
    batch_size: int = option(8, "pairs per scoring batch and prompts per generation batch", group="evaluation")

    # generation
    generate: bool = option(
        True, "generate a response per held-out prompt and check its health and constraint (false: preference "
        "metrics only)", group="generation",
    )
    max_new_tokens: int = option(Decoding.max_new_tokens, "generation budget per held-out prompt", group="generation")
    sample: bool = option(Decoding.sampling, "sample instead of greedy decoding", group="generation")
    temperature: float = option(Decoding.temperature, "sampling temperature", group="generation")
    top_p: float = option(Decoding.top_p, "nucleus sampling mass", group="generation")

    # benchmark
    bench: str | None = option(
        None, "also answer a benchmark: mt-bench (graded by --judge-url) | ifeval (scored by the official "
        "IFEval checkers) | ifbench (the official IFBench checkers; partial: the 18 prompts of its two types that need "
        "NLTK data no PyPI package ships are left out) | arena-hard (judged by --judge-url against the baseline answers) | alpaca-eval (judged by "
        "--judge-url against GPT-4 Turbo's answers)", group="benchmark",
        choices=(None, *BENCHMARKS),
    )
    questions: str | None = option(
        None, "the benchmark's prompts file (default: the installed one): MT-Bench or Arena-Hard question.jsonl, "
        "IFEval input_data.jsonl or IFBench_test.jsonl, AlpacaEval's JSON list of instructions with the baseline's outputs",
        group="benchmark",
    )
    max_prompts: int | None = option(None, "answer the first N prompts of --bench only", group="benchmark")
    bench_max_new_tokens: int = option(BENCH_MAX_NEW_TOKENS, "budget per benchmark answer", group="benchmark")
    judge_url: str | None = option(
        None, "OpenAI-compatible API of the judge (MT-Bench single-answer grading, Arena-Hard and AlpacaEval pairwise)",
        group="benchmark",
    )
    judge_model: str | None = option(None, "judge model name (needed with --judge-url)", group="benchmark")
    judge_key_env: str = option("OPENAI_API_KEY", "environment variable holding the judge API key", group="benchmark")
    engine: str = option(
        "hf", "what answers the --bench prompts: hf (the model in this process) | vllm (vLLM in this process, the "
        "same prompt ids; needs the venv of `make vllm-env`) | openai (an OpenAI-compatible server at --engine-url "
        "serving the evaluated model as --engine-model); held-out scoring and generations always use the model in "
        "this process", group="benchmark", choices=ENGINES,
    )
    engine_url: str | None = option(None, "API base of the openai engine, e.g. http://localhost:8000/v1",
                                    group="benchmark")
    engine_model: str | None = option(None, "model name sent to the openai engine (default: --model)", group="benchmark")
    engine_key_env: str = option("OPENAI_API_KEY", "environment variable holding the openai engine's API key",
                                 group="benchmark")

    def validate(self) -> None:
        """Check every option before anything is loaded; raise :class:`ConfigError`."""
        _check_choices(self)
        check_engine_options(self)
        if self.engine != "hf" and self.bench is None:
            raise ConfigError(f"engine: {self.engine} answers the prompts of --bench; give --bench (held-out "
                              "generations always use the model in this process)")
        _check_finite(self)
        _check_whole_numbers(self, "max_new_tokens", "bench_max_new_tokens", "batch_size", "max_pairs", "max_prompts")
        if self.sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise ConfigError("sampling needs --temperature > 0 and 0 < --top-p <= 1")
        if self.judge_url and not self.judge_model:
            raise ConfigError("judge_url: needs --judge-model")
        if self.judge_url:
            check_url(self.judge_url, "judge_url")  # the check JudgeClient makes, here before any model loads
        if self.judge_url and self.bench not in JUDGED_BENCHMARKS:
            raise ConfigError(f"judge_url: the judge grades the answers of --bench {' | '.join(JUDGED_BENCHMARKS)}; "
                              "add one")
        if self.max_prompts is not None and self.bench is None:
            raise ConfigError("max_prompts: limits the prompts of --bench; add --bench")

    def decoding(self) -> Decoding:
        """How each held-out prompt is answered."""
        return Decoding(self.max_new_tokens, self.sample, self.temperature, self.top_p, self.seed)

    def bench_decoding(self) -> Decoding:
        """How each benchmark prompt is answered: the same, with the benchmark's budget."""
        return dataclasses.replace(self.decoding(), max_new_tokens=self.bench_max_new_tokens)


#: The :class:`EvalConfig` groups that ``slimepo compare`` takes (the rest comes from training's options).
COMPARE_EVAL_GROUPS = ("generation", "benchmark")


def check_url(url: str, option: str) -> None:
    """:func:`slimepo.endpoints.check_api_url`, its refusal a :class:`ConfigError` naming ``option``."""
    try:
        check_api_url(url, option)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_engine_options(config: Any) -> None:
    """The generation engine options of ``config`` (``engine``, ``engine_url``, ``engine_model``,
    ``adapter``), as ``slimepo pairs`` and ``slimepo eval`` take them."""
    if config.engine == "vllm" and not generation.vllm_installed():
        raise ConfigError(f"engine: {generation.VLLM_SETUP}")
    if config.engine == "openai":
        if not config.engine_url:
            raise ConfigError("engine_url: the openai engine needs it, e.g. http://localhost:8000/v1")
        if config.adapter:
            raise ConfigError("adapter: the openai engine answers with what the server serves; serve the adapter "
                              "there (vllm serve --enable-lora --lora-modules NAME=ADAPTER) and pass --engine-model NAME")
        check_url(config.engine_url, "engine_url")
    elif config.engine_url or config.engine_model:
        raise ConfigError("engine_url, engine_model: only the openai engine uses them; add --engine openai")


def field_names(cls: type = TrainConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def config_from_mapping(values: dict[str, Any], source: str = "config", cls: type = TrainConfig) -> Any:
    """Build a ``cls`` (:class:`TrainConfig` or :class:`EvalConfig`) from a mapping.

    An unknown key names the closest valid one. Every value must have its field's declared
    type (``bool``: true or false, not the string "false"; ``int``: not 2.0; ``str``,
    lists and mappings: their own kind; ``None`` where the type allows it), else a
    :class:`ConfigError` names ``source``, the option and what it expected. The one
    conversion: a float option takes a numeric string, as PyYAML (YAML 1.1) reads
    ``1e-4`` without a dot as text, so ``learning_rate: 1e-4`` means 0.0001.
    """
    names = field_names(cls)
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown option '{key}'{hint} (see slimepo {cls.command} --help)")
    declared = _field_types(cls)
    values = {key: _normalized(cls, key, value, source) for key, value in values.items()}
    return cls(**{key: _typed_value(value, declared[key], f"{source}: {key}") for key, value in values.items()})


def _normalized(cls: type, name: str, value: Any, source: str) -> Any:
    """``value`` in its field's one written form, where the field declares one (``normalize``:
    a loss spec given as a YAML list becomes ``"dpo,sft=0.2"``)."""
    normalize = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("normalize")
    if normalize is None or value is None:
        return value
    try:
        return normalize(value)
    except ValueError as err:
        raise ConfigError(f"{source}: {name}: {err}") from None


def _field_types(cls: type) -> dict[str, Any]:
    """Each field's declared type, evaluated (this module's annotations are strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _allowed_types(kind: Any) -> tuple[Any, ...]:
    """``int | None`` -> ``(int, NoneType)``; any other type -> ``(type,)``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


def _typed_value(value: Any, kind: Any, where: str) -> Any:
    """``value`` checked against the declared type ``kind`` (see :func:`config_from_mapping`)."""
    allowed = _allowed_types(kind)
    if value is None and type(None) in allowed:
        return None
    (kind,) = (k for k in allowed if k is not type(None))
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if _has_type(value, kind):
        return value
    expected = _describe_type(kind) + (" or null" if type(None) in allowed else "")
    hint = ""
    if isinstance(value, str):
        try:
            unquoted = yaml.safe_load(value)
        except yaml.YAMLError:
            unquoted = value
        if _has_type(unquoted, kind):
            hint = f"; write {value} without quotes"
    raise ConfigError(f"{where}: expected {expected}, got {value!r} ({type(value).__name__}){hint}")


def _has_type(value: Any, kind: Any) -> bool:
    """Whether ``value`` is a ``kind``: a bool is no int or float, an int is a float, ``list[str]`` checks items."""
    if kind is Any:
        return True
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
    return isinstance(value, kind)


def _describe_type(kind: Any, plural: bool = False) -> str:
    """``list[str]`` -> "a list of strings"; ``dict[str, Any]`` -> "a mapping of strings to values"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list:
        return f"a list of {_describe_type(args[0], plural=True)}"
    if origin is dict:
        return f"a mapping of {_describe_type(args[0], plural=True)} to {_describe_type(args[1], plural=True)}"
    names = {bool: ("true or false", "true or false"), int: ("an integer", "integers"),
             float: ("a number", "numbers"), str: ("a string", "strings"), Any: ("a value", "values")}
    return names[kind][plural]


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config: {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config: {path} must hold a mapping of option: value, got {type(values).__name__}")
    return values
