"""``--dry-run``: the same options on a tiny model and a small offline sample, 2 steps.

It proves that a recipe's options validate and that its data plumbing (format, columns,
chat template, cut, truncation, LoRA targets, checkpoints) works, without the real model
or network access. It proves nothing about the real model's memory or speed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from slimepo.config import DEMO, TrainConfig
from slimepo.losses import UNPAIRED_LOSSES
from slimepo.testing import save_tiny_model, ultrafeedback_like_rows

logger = logging.getLogger(__name__)


def tiny_kind(model_name: str) -> str:
    """The tiny architecture closest to the named model (Llama when unknown)."""
    name = model_name.lower()
    for key, kind in (("qwen3", "qwen3"), ("qwen", "qwen2"), ("gemma", "gemma2")):
        if key in name:
            return kind
    return "llama"


def dry_run_config(config: TrainConfig) -> TrainConfig:
    folder = Path(tempfile.mkdtemp(prefix="slimepo-dry-run-"))
    kind = tiny_kind(config.model)
    model_dir = save_tiny_model(folder / "model", kind=kind)
    changes: dict = dict(
        model=str(model_dir), ref_model=str(model_dir) if config.ref_model else None, dry_run=False,
        output_dir=str(folder / "out"), overwrite=True, resume=None, max_steps=2, save_steps=1,
        logging_steps=1, report_to="none", max_train_pairs=8, max_eval_pairs=4, monitor_steps=1,
        monitor_pairs=2, trust_remote_code=False,
        # The tiny Gemma 2 stand-in refuses sdpa in transformers (Gemma 3 accepts it); kernels that need a GPU
        # (flex_attention's backward, flash_attention_*) are not what a dry run checks.
        attn_implementation="eager" if kind == "gemma2" or config.attn_implementation == "eager" else "sdpa",
        dtype="float32" if config.dtype == "auto" else config.dtype,
    )
    if config.dataset != DEMO and not Path(config.dataset).exists():
        sample = folder / "sample.jsonl"
        rows = ultrafeedback_like_rows(24)
        if config.loss in UNPAIRED_LOSSES:  # TRL's unpaired format: each pair's answers as two labelled rows
            rows = [{"prompt": [row["chosen"][0]], "completion": [row[side][-1]], "label": side == "chosen"}
                    for row in rows for side in ("chosen", "rejected")]
        if config.weight_column:  # weights 1, 2, 3 in turn, so the weighted means are exercised
            rows = [{**row, config.weight_column: 1.0 + i % 3} for i, row in enumerate(rows)]
        sample.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        logger.info("dry run: %s is replaced by a %d-row UltraFeedback-shaped sample", config.dataset, len(rows))
        changes.update(dataset=str(sample), dataset_split="train", columns={},
                       eval_dataset=str(sample) if config.eval_dataset else None, eval_split="train")
    return dataclasses.replace(config, **changes)
