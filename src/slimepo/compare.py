"""``compare(losses, config, out_root)``: one study, one run per loss, then one report.

Every run shares the data, seed and budget of ``config``; only ``loss`` and
``output_dir = out_root/<loss>`` differ. Each run is trained, then evaluated on
training's own held-out pairs against the initial model into ``<run>/eval/`` (so its ``eval.json``, beside
training's own, holds the drift, unlearning rate, collapse, generation health and constraint pass rate), and
``out_root/report/report.md`` puts them side by side.

A study can be resumed: a run whose ``eval/`` holds the ``eval.json`` of a finished
evaluation is skipped; an unfinished one resumes from its newest checkpoint, or starts
again when it has none.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimepo.config import COMPARE_EVAL_GROUPS, DEMO, ConfigError, EvalConfig, TrainConfig
from slimepo.report import EVALUATION_DIR

logger = logging.getLogger(__name__)


def run_configs(losses: Sequence[str], base_config: TrainConfig, out_root: Path) -> list[TrainConfig]:
    """One validated copy of ``base_config`` per loss, writing to ``out_root/<loss>``."""
    if not losses:
        raise ConfigError("losses: give at least one loss to compare")
    if base_config.dry_run:
        raise ConfigError("dry_run: a study keeps its runs; check the options with slimepo train --dry-run first")
    repeated = sorted({loss for loss in losses if list(losses).count(loss) > 1})
    if repeated:
        raise ConfigError(f"losses: {', '.join(repeated)} given more than once")
    configs = []
    for loss in losses:
        config = dataclasses.replace(base_config, loss=loss, output_dir=str(Path(out_root) / loss))
        config.validate()
        configs.append(config)
    return configs


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an evaluation written by ``evaluate`` (not only training's)."""
    from slimepo.eval.run import finished_evaluation

    return finished_evaluation(run_dir / EVALUATION_DIR) is not None


def held_out_source(config: TrainConfig) -> tuple[str, str]:
    """The dataset and split that training's held-out pairs come from (their constraints too)."""
    if config.dataset == DEMO:
        return DEMO, "test"
    if config.eval_dataset is not None:
        return config.eval_dataset, config.eval_split
    return config.dataset, config.dataset_split


def compare(
    losses: Sequence[str],
    base_config: TrainConfig,
    out_root: str | Path,
    eval_config: EvalConfig | None = None,
) -> Path:
    """Train and evaluate one run per loss, then write the report; return ``report.md``'s path.

    ``eval_config``: the generation and benchmark options of each evaluation
    (:data:`~slimepo.config.COMPARE_EVAL_GROUPS`; default: ``EvalConfig()``'s); the rest comes
    from the training config (:func:`evaluate_run`).
    """
    from slimepo.report import write_report
    from slimepo.train import train

    out_root = Path(out_root)
    configs = run_configs(losses, base_config, out_root)
    run_eval_config(configs[0], eval_config)  # its refusals before any training
    for config in configs:
        run_dir = Path(config.output_dir)
        if is_finished(run_dir):
            logger.info("%s: skipped, %s already holds a finished run", config.loss, run_dir)
            continue
        if run_dir.is_dir() and any(run_dir.iterdir()):
            resumable = any(run_dir.glob("checkpoint-*"))
            logger.info("%s: unfinished run in %s, %s", config.loss, run_dir,
                        "resuming from its newest checkpoint" if resumable else "starting it again")
            config = dataclasses.replace(config, resume="auto" if resumable else None, overwrite=not resumable)
        logger.info("%s: training into %s", config.loss, run_dir)
        train(config)
        evaluate_run(config, eval_config)
    return write_report([Path(c.output_dir) for c in configs], out_root / "report")


def run_eval_config(config: TrainConfig, eval_config: EvalConfig | None = None) -> EvalConfig:
    """The evaluation of the run of ``config``: against the initial model, on training's held-out
    data, with training's dtype, seed and batch size; generation and benchmark options from
    ``eval_config`` (:data:`~slimepo.config.COMPARE_EVAL_GROUPS`)."""
    dataset, split = held_out_source(config)
    given = eval_config or EvalConfig()
    if given.engine == "openai":
        raise ConfigError("engine: compare evaluates the runs it trains, which no server serves; answer the "
                          "benchmark with hf or vllm")
    shared = {f.name: getattr(given, f.name) for f in dataclasses.fields(EvalConfig)
              if f.metadata["group"] in COMPARE_EVAL_GROUPS}
    return EvalConfig(
        model=str(Path(config.output_dir)), dataset=dataset, split=split, base=config.model, dtype=config.dtype,
        seed=config.seed, batch_size=config.batch_size, trust_remote_code=config.trust_remote_code, **shared,
    )


def evaluate_run(config: TrainConfig, eval_config: EvalConfig | None = None) -> dict[str, Any]:
    """Evaluate the run of ``config`` (:func:`run_eval_config`) into its ``eval/`` folder, on
    training's own held-out pairs."""
    from slimepo.eval.run import evaluate
    from slimepo.model import load_tokenizer
    from slimepo.train.run import load_data

    run_dir = Path(config.output_dir)
    _, held_out = load_data(config, load_tokenizer(str(run_dir), config.trust_remote_code))
    return evaluate(
        run_eval_config(config, eval_config), out_dir=run_dir / EVALUATION_DIR, held_out=held_out,
        prepare_options={"columns": config.columns or None, "chat_template": config.chat_template},
    )
