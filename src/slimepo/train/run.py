"""``slimepo.train(config)``: data, model, trainer, outputs. The CLI only calls this."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accelerate
import torch
import yaml
from accelerate import PartialState
from transformers import TrainerCallback, TrainingArguments, set_seed

from slimepo import zero3
from slimepo.atomic_io import write_json, write_text
from slimepo.config import DEMO, ConfigError, TrainConfig
from slimepo.data import demo_file, prepare_pairs
from slimepo.data.collate import PairCollator
from slimepo.data.tokenize import end_of_turn_id, ends_with, template_text
from slimepo.data.unpaired import UnpairedCollator, prepare_examples
from slimepo.diagnostics import preference_metrics
from slimepo.logprobs import uses_flex_attention
from slimepo.losses import is_unpaired
from slimepo.metrics_log import append_record
from slimepo.model import (
    cache_dir,
    load_policy,
    load_reference,
    load_tokenizer,
    recorded_model_path,
    resolve_mixed_precision,
)
from slimepo.scoring import score_pairs
from slimepo.train import ref_cache
from slimepo.train.card import CARD_MARK, write_model_card
from slimepo.train.checkpoint import (
    checkpoint_problem,
    latest_complete_checkpoint,
    manifest_step,
    trim_metrics,
)
from slimepo.train.dry_run import dry_run_config
from slimepo.train.monitor import StabilityMonitor
from slimepo.train.trainer import PreferenceTrainer
from slimepo.train.unpaired import unpaired_metrics

logger = logging.getLogger(__name__)

#: Files that mark a folder as holding a run.
RUN_MARKERS = ("config.yaml", "metrics.jsonl")
#: Written last by a run that finished (the model card; PEFT writes a README.md of its own before it).
FINISHED_MARKER = "README.md"
#: How the run was launched (``{"processes": N}``): ``batch_size`` is per process.
LAUNCH_FILE = "launch.json"
#: Options a resumed run may change: where and how often things are written or watched, never
#: what is computed. Any other difference from the saved ``config.yaml`` is refused.
RESUME_FREE_OPTIONS = frozenset({
    "resume", "overwrite", "output_dir", "logging_steps", "eval_steps", "save_steps", "save_total_limit",
    "report_to", "merge", "monitor_steps", "monitor_pairs", "unlearning_alarm", "collapse_alarm",
})


class OutputExistsError(RuntimeError):
    pass


def _read_launch(out: Path) -> dict[str, Any]:
    try:
        launch = json.loads((out / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return launch if isinstance(launch, dict) else {}


def check_resume(config: TrainConfig, out: Path, processes: int = 1) -> None:
    """Refuse to resume a run with options that change its numbers, or to restart a finished one.

    The saved ``config.yaml`` is compared with ``config`` on every option but
    :data:`RESUME_FREE_OPTIONS`; each difference is named. ``batch_size`` is per process:
    a run resumed on another number of ``processes`` (:data:`LAUNCH_FILE` says how many it
    had) may change it as long as the pairs per micro-step, ``batch_size × processes``, stay
    the same. A finished run (its model card written) with no checkpoint to resume from
    would start again from step 0 and replace it: that needs ``--overwrite``.
    """
    if config.resume is None or not (out / "config.yaml").is_file():
        return
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise OutputExistsError(f"resume: {out / 'config.yaml'} is not readable YAML ({err}); cannot tell what "
                                "the run was trained with") from None
    current = config.to_dict()
    saved_processes = _read_launch(out).get("processes", 1)
    changed = [
        f"{name}: {saved[name]!r} (saved) vs {current[name]!r} (now)"
        for name in current
        if name not in RESUME_FREE_OPTIONS | {"batch_size"} and name in saved and saved[name] != current[name]
    ]
    if "batch_size" in saved and saved["batch_size"] * saved_processes != config.batch_size * processes:
        changed.append(f"pairs per micro-step (batch_size × processes): {saved['batch_size']} × {saved_processes} "
                       f"(saved) vs {config.batch_size} × {processes} (now)")
    if changed:
        raise OutputExistsError(
            f"resume: the run in {str(out)!r} was trained with other options ({'; '.join(changed)}). Resuming "
            "would mix two configurations in one run: pass the saved options (its config.yaml), or train into "
            "another --output-dir"
        )
    if (config.resume == "auto" and latest_complete_checkpoint(out) is None and is_finished(out)
            and not config.overwrite):
        raise OutputExistsError(
            f"resume: the run in {str(out)!r} has finished and left no checkpoint, so --resume auto would train it "
            "again from step 0 and replace it; pass --overwrite to do that"
        )


def is_finished(out: Path) -> bool:
    """Whether the run in ``out`` finished: slimepo's model card, written last, is there (PEFT's
    ``save_pretrained`` writes a README.md of its own earlier, which does not count)."""
    try:
        return CARD_MARK in (out / FINISHED_MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def check_output_dir(config: TrainConfig) -> Path:
    """Never write over another run unless asked; offer to resume it."""
    out = Path(config.output_dir)
    holds_run = out.is_dir() and any((out / m).exists() for m in RUN_MARKERS)
    if holds_run and config.resume is None and not config.overwrite:
        raise OutputExistsError(
            f"output_dir {str(out)!r} already holds a run. Pass --resume auto to continue it, "
            "--overwrite to replace it, or choose another --output-dir."
        )
    if holds_run and config.overwrite and config.resume is None:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def resume_point(config: TrainConfig, out: Path, is_main: bool) -> str | None:
    """The complete checkpoint to continue from (None: step 0); metrics.jsonl is cut back to its step."""
    if config.resume is None:
        return None
    checkpoint = latest_complete_checkpoint(out) if config.resume == "auto" else Path(config.resume)
    step = manifest_step(checkpoint) if checkpoint else 0
    if checkpoint is None:
        logger.info("--resume auto: no complete checkpoint in %s, starting from step 0", out)
    else:
        logger.info("resuming from %s (step %d)", checkpoint, step)
    if is_main:
        dropped = trim_metrics(out / "metrics.jsonl", step)
        if dropped:
            logger.info("metrics.jsonl: dropped %d line(s) written after step %d", dropped, step)
    return str(checkpoint) if checkpoint else None


def check_unpaired(config: TrainConfig) -> None:
    """Refuse the options a loss on unpaired examples (kto) cannot take."""
    if config.batch_size * config.gradient_accumulation_steps < 2 and not config.max_tokens_per_batch:
        raise ConfigError(f"batch_size: {config.loss} estimates its reference point on mismatched pairs made "
                          "within an optimizer step (each prompt with another example's completion): needs "
                          f"batch_size x gradient_accumulation_steps >= 2, got {config.batch_size} x "
                          f"{config.gradient_accumulation_steps}")
    if config.precompute_ref_logps:
        raise ConfigError(f"precompute_ref_logps: {config.loss}'s mismatched pairs are known only once a batch is "
                          "made, so the reference scores every step; drop --precompute-ref-logps")


def load_data(config: TrainConfig, tokenizer) -> tuple[list, list]:
    """Train and held-out tokenized pairs (unpaired examples for kto), with validation reports logged."""
    prepare = prepare_examples if is_unpaired(config.loss) else prepare_pairs
    common = dict(
        columns=config.columns or None,
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
        chat_template=config.chat_template,
        max_bad_fraction=config.max_bad_fraction,
    )
    # The weights are --dataset's: a separate held-out set is read without them (its pairs weigh 1).
    weighted = {"weight_column": config.weight_column} if config.weight_column is not None else {}
    if config.dataset == DEMO:
        train, report = prepare(demo_file("train"), tokenizer, split="train", **common, **weighted)
        held_out, eval_report = prepare(demo_file("test"), tokenizer, split="train", **common)
    else:
        train, report = prepare(config.dataset, tokenizer, split=config.dataset_split, **common, **weighted)
        if config.eval_dataset is not None:
            held_out, eval_report = prepare(config.eval_dataset, tokenizer, split=config.eval_split, **common)
        else:
            order = list(range(len(train)))
            random.Random(config.seed).shuffle(order)
            n_eval = max(1, round(len(train) * config.eval_fraction))
            held_out = [train[i] for i in sorted(order[:n_eval])]
            train = [train[i] for i in sorted(order[n_eval:])]
            eval_report = None
    if config.dataset_cut:
        train = cut(train, config.dataset_cut, config.dataset_cut_seed)
    logger.info("training data: %s", report)
    if eval_report is not None:
        logger.info("held-out data: %s", eval_report)
    if config.max_train_pairs:
        order = list(range(len(train)))
        random.Random(config.seed).shuffle(order)
        train = [train[i] for i in sorted(order[: config.max_train_pairs])]
    if config.max_eval_pairs:
        held_out = held_out[: config.max_eval_pairs]
    return train, held_out


def cut(pairs: list, spec: str, seed: int) -> list:
    """``first:F`` keeps the first share F of a seeded shuffle, ``rest:F`` the remainder (order kept)."""
    part, _, share = spec.partition(":")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_first = round(len(pairs) * float(share))
    chosen = order[:n_first] if part == "first" else order[n_first:]
    return [pairs[i] for i in sorted(chosen)]


class MetricsJsonl(TrainerCallback):
    """Writes every log as one line of ``metrics.jsonl`` (:mod:`slimepo.metrics_log`)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if args.process_index != 0 or not logs:
            return
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        if any(k.startswith("train_") for k in logs):
            split = "summary"
        metrics = {
            key.removeprefix("eval_"): value
            for key, value in logs.items()
            if key != "epoch" and isinstance(value, (int, float))
        }
        append_record(self.path, state.global_step, split, logs.get("epoch"), metrics)


@dataclass
class TrainResult:
    output_dir: Path
    before: dict[str, Any]
    after: dict[str, Any]
    global_step: int


@dataclass
class PreferenceTrainingArguments(TrainingArguments):
    """transformers' arguments with the warm-up as a share of the steps, 1.0 included.

    transformers reads ``warmup_steps`` below 1 as a share and from 1 up as a step count, so
    a share of 1.0 would warm up for one step.
    """

    warmup_ratio: float = field(default=0.0, metadata={"help": "share of the training steps spent warming up"})

    def get_warmup_steps(self, num_training_steps: int) -> int:
        return math.ceil(num_training_steps * self.warmup_ratio)


def training_arguments(config: TrainConfig, out: Path) -> PreferenceTrainingArguments:
    precision = resolve_mixed_precision(config.dtype, config.mixed_precision)
    return PreferenceTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if config.eval_steps else "no",
        eval_steps=config.eval_steps or None,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[] if config.report_to == "none" else [config.report_to],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        optim="adamw_torch",
        bf16=precision == "bf16",  # accelerate wraps the model's forward in torch.autocast (CPU or GPU)
        fp16=precision == "fp16",
        # Without an accelerator, say so: it is what lets torchrun/accelerate use gloo DDP on CPUs.
        use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )


def train(config: TrainConfig, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Run one preference-optimization job described by ``config``.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (timers, custom logs).
    """
    config.validate()
    unpaired = is_unpaired(config.loss)
    if unpaired:
        check_unpaired(config)
    if config.resume not in (None, "auto"):
        problem = checkpoint_problem(config.resume)
        if problem is not None:
            raise ConfigError(f"resume: {config.resume!r} is not a complete checkpoint: {problem}. "
                              "--resume auto picks the newest complete one")
    if config.dry_run:
        config = dry_run_config(config)
        config.validate()
    out = Path(config.output_dir)
    args = training_arguments(config, out)  # also sets up the process group under torchrun
    if config.attn_implementation == "flex_attention" and args.device.type == "cpu":
        raise ConfigError(
            f"attn_implementation: flex_attention cannot train on CPU (PyTorch {torch.__version__} has no FlexAttention "
            "backward pass there); use sdpa on CPU"
        )
    accelerate_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if accelerate_fsdp and config.fsdp:
        raise ConfigError("fsdp: --fsdp shards the model as it loads; drop the accelerate FSDP config, or --fsdp")
    if accelerate_fsdp and args.device.type == "cpu":
        raise ConfigError(
            f"fsdp: accelerate {accelerate.__version__} shards with its FSDP plugin only on GPUs (and XPU/NPU/...); "
            "on CPU it would train DDP instead, unannounced. Drop the accelerate FSDP config and pass --fsdp"
        )
    if not config.use_lora and zero3.saves_no_whole_model():
        raise ConfigError(
            "use_lora: under DeepSpeed ZeRO-3 a fully fine-tuned model is saved as DeepSpeed's partitioned checkpoint, "
            "not model.safetensors, unless its weights are gathered to be saved: pass --zero3_save_16bit_model true "
            "to accelerate launch (stage3_gather_16bit_weights_on_model_save in a DeepSpeed config file)"
        )
    check_resume(config, out, args.world_size)  # on every process: none may wait for one that stopped
    if args.process_index == 0:
        check_output_dir(config)
    PartialState().wait_for_everyone()
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    train_pairs, held_out = load_data(config, tokenizer)
    loss_fn = config.loss_fn()
    if config.compile_loss:
        loss_fn = loss_fn.compiled()
    if config.frozen_dtype == "bfloat16" and not args.bf16:
        raise ConfigError("frozen_dtype: bfloat16 needs bf16 autocast (--mixed-precision bf16, or auto with --dtype "
                          "auto on bf16 hardware): without it bf16 weights meet float32 activations")
    model = load_policy(config, frozen_dtype=torch.bfloat16 if config.frozen_dtype == "bfloat16" else None)
    ref_model = load_reference(config) if loss_fn.requires_reference else None
    if args.process_index == 0:
        write_text(out / "config.yaml", config.to_yaml())
        write_json(out / LAUNCH_FILE, {"processes": args.world_size})
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=train_pairs,
        eval_dataset=held_out or None,
        data_collator=UnpairedCollator(
            tokenizer.pad_token_id, layout=config.layout, pack_tokens=config.pack_tokens,
            dense_mask=not uses_flex_attention(model), max_length=config.max_length,
        ) if unpaired else PairCollator(
            tokenizer.pad_token_id, layout=config.layout, pack_tokens=config.pack_tokens,
            dense_mask=not uses_flex_attention(model), weights=config.weight_column is not None,
        ),
        processing_class=tokenizer,
        loss_fn=loss_fn,
        ref_model=ref_model,
        logprob_chunk_size=config.logprob_chunk_size,
        max_bad_steps=config.max_bad_steps,
        max_tokens_per_batch=config.max_tokens_per_batch,
        callbacks=[MetricsJsonl(out / "metrics.jsonl"), *(callbacks or [])],
    )
    chunk = config.logprob_chunk_size or None
    if config.monitor_steps and held_out and not unpaired:  # it scores pairs; KTO logs drift/* every step
        trainer.add_callback(StabilityMonitor(
            held_out[: config.monitor_pairs], pad_token_id=tokenizer.pad_token_id, every=config.monitor_steps,
            unlearning_alarm=config.unlearning_alarm, collapse_alarm=config.collapse_alarm, chunk_size=chunk,
            metrics_path=out / "metrics.jsonl",
        ))
    score = dict(pad_token_id=tokenizer.pad_token_id, batch_size=config.batch_size, chunk_size=chunk, layout=config.layout)
    # Under the autocast the trained model's forward will carry, so "before" and "after" compare alike.
    # Each process scores its share of the batches, process 0 receives them all (the others None).
    # Under DeepSpeed ZeRO-3 the weights were partitioned at load, and the engine that gathers them
    # module by module is made by train(): until then the whole model is gathered on every process
    # (the reference too, for --precompute-ref-logps).
    loaded = [*trainer.model.parameters(), *(ref_model.parameters() if ref_model is not None else ())]
    with trainer.accelerator.autocast(), zero3.gathered(loaded):
        if unpaired:
            before_scores = trainer.score_examples(held_out, config.batch_size) if held_out else None
        else:
            before_scores = score_pairs(trainer.model, held_out, **score, across_processes=True) if held_out else None
        if config.precompute_ref_logps and loss_fn.requires_reference:
            precompute_reference(ref_model or trainer.model, train_pairs, score, ref_cache_root(config), {
                "max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
                "mixed_precision": resolve_mixed_precision(config.dtype, config.mixed_precision),
                "attn_implementation": config.attn_implementation, **loss_fn.reference_key(),
            }, reduce=loss_fn.reference_sums)
    trainer.train(resume_from_checkpoint=resume_point(config, out, is_main=args.process_index == 0))

    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    with trainer.accelerator.autocast():
        if unpaired:
            after_scores = trainer.score_examples(held_out, config.batch_size) if held_out else None
        else:
            after_scores = score_pairs(trainer.model, held_out, **score, across_processes=True) if held_out else None
    if trainer.is_world_process_zero() and held_out and unpaired:
        before = unpaired_metrics(*before_scores)
        after = unpaired_metrics(*after_scores, base=before_scores[0])
        write_json(out / "eval.json", after)
    elif trainer.is_world_process_zero() and held_out:
        ends = ends_with(held_out, end_of_turn_id(tokenizer, config.chat_template))
        before = preference_metrics(*before_scores.as_tuple(), ends=ends)
        after = preference_metrics(*after_scores.as_tuple(), base=before_scores.as_tuple(), ends=ends)
        # The held-out metrics after training, with the initial model as the base (drift, unlearning).
        write_json(out / "eval.json", after)
    save_outputs(trainer, tokenizer, config, out, before, after)
    return TrainResult(out, before, after, trainer.state.global_step)


def precompute_reference(
    reference, pairs: list, score: dict[str, Any], cache: Path | None = None, settings: dict[str, Any] | None = None,
    reduce=None,
) -> None:
    """Attach the reference log-probs of every training pair, in place: per-response sums, or what
    ``reduce`` (the loss's :meth:`~slimepo.losses.base.PreferenceLoss.reference_sums`) makes of
    the per-token log-probs.

    Called before training, while the policy still holds its initial weights (zero LoRA
    update), unless a separate reference model is given. With a ``cache`` folder the sums
    are read from an entry made by a run that would compute the same numbers, or scored
    and stored there (:mod:`slimepo.train.ref_cache`); ``settings`` are the options that
    change them beyond ``score``'s.
    """
    identity = None
    if cache is not None:
        settings = {**(settings or {}), "layout": score.get("layout"), "batch_size": score.get("batch_size"),
                    "logprob_chunk_size": score.get("chunk_size")}
        identity = ref_cache.cache_identity(reference, pairs, settings)
        cached = ref_cache.load_cached(cache, identity)
        if cached is not None:
            logger.info("reference log-probs of %d pairs reused from %s", len(pairs), cache / ref_cache.cache_key(identity))
            _attach_reference(pairs, *cached)
            return
    scores = score_pairs(reference, pairs, **score)
    if reduce is None:
        chosen_sums, rejected_sums = scores.chosen_logps.sum(-1), scores.rejected_logps.sum(-1)
    else:
        chosen_sums, rejected_sums = reduce(*scores.as_tuple())
    chosen = [float(x) for x in chosen_sums]
    rejected = [float(x) for x in rejected_sums]
    _attach_reference(pairs, chosen, rejected)
    if identity is not None and PartialState().is_main_process:
        entry = ref_cache.store(cache, identity, chosen, rejected)
        logger.info("reference log-probs of %d pairs cached in %s", len(pairs), entry)


def _attach_reference(pairs: list, chosen: list[float], rejected: list[float]) -> None:
    for i, (ref_chosen, ref_rejected) in enumerate(zip(chosen, rejected, strict=True)):
        pairs[i] = dataclasses.replace(pairs[i], ref_chosen_logp=ref_chosen, ref_rejected_logp=ref_rejected)


def ref_cache_root(config: TrainConfig) -> Path | None:
    """The folder of ``--ref-logps-cache``: None for ``off``."""
    if config.ref_logps_cache == "off":
        return None
    return cache_dir() / "ref-logps" if config.ref_logps_cache == "auto" else Path(config.ref_logps_cache)


def save_outputs(
    trainer: PreferenceTrainer, tokenizer, config: TrainConfig, out: Path, before: dict[str, Any], after: dict[str, Any]
) -> None:
    """Adapter (PEFT) or full model as safetensors, tokenizer, model card; merged weights on request."""
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return
    if config.chat_template not in ("auto", "none"):
        # Inference must see the template training used, so the saved tokenizer carries it.
        tokenizer.chat_template = template_text(config.chat_template)
    tokenizer.save_pretrained(out)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if config.use_lora:
        # Point the adapter at where the base really is, so plain peft can reload it.
        adapter_config = out / "adapter_config.json"
        data = json.loads(adapter_config.read_text())
        data["base_model_name_or_path"] = recorded_model_path(config.model)
        write_json(adapter_config, data)
    if config.merge and config.use_lora:
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged.save_pretrained(out / "merged", safe_serialization=True)
        tokenizer.save_pretrained(out / "merged")
    write_model_card(out, config, after, trainer.state.global_step, before)
