"""Options of ``slimepo iterate``, declared once, and the three stage configs made from them.

The loop's own options (:class:`IterateConfig`) say how many rounds, where, from which model, and
how the rounds are tied together. Each stage takes the options of its own command, given as a
mapping (``pairs:``, ``train:``, ``eval:`` in YAML; ``--pairs k=4,scorer=ifeval`` on the command
line): :meth:`IterateConfig.stage_configs` turns them into the :class:`~slimepo.pairs.config.PairsConfig`,
:class:`~slimepo.config.TrainConfig` and :class:`~slimepo.config.EvalConfig` of one round, with the
options the loop sets itself (:data:`SET_BY_LOOP`) filled in. Every stage option is checked before
round 1 starts, under the stage's own rules, and an error names the stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from slimepo.config import (
    BENCHMARKS,
    DEFAULT_MODEL,
    DEMO,
    ConfigError,
    EvalConfig,
    TrainConfig,
    _check_choices,
    _check_whole_numbers,
    config_from_mapping,
    option,
)
from slimepo.losses import UNPAIRED_LOSSES, parse_loss_spec
from slimepo.pairs.config import PairsConfig

#: What the reference of a reference-based loss is in round r > 1 (round 1: the initial model either way).
REFERENCES = ("previous", "initial")

#: Stage options the loop sets itself in every round; giving one is refused, naming the loop option to use.
SET_BY_LOOP = {
    "pairs": {"model": "model (the initial model; later rounds sample from the previous round's policy)",
              "adapter": "model (each round's adapter is merged into the weights the next round samples from)",
              "out": "out (round-R/pairs/)"},
    "train": {"model": "model (round 1 trains it; round r the policy of round r-1)",
              "dataset": "the round's own pairs (round-R/pairs/pairs.jsonl)", "dataset_split": "the round's pairs",
              "output_dir": "out (round-R/train/)", "ref_model": "reference", "resume": "rerun the same command",
              "overwrite": "rerun the same command", "merge": "nothing: the loop merges LoRA adapters itself",
              "dry_run": "slimepo train --dry-run with one round's options"},
    "eval": {"model": "nothing: each round's policy is evaluated", "adapter": "nothing: each round's policy is evaluated",
             "base": "nothing: drift is always measured against the initial model", "out": "out (round-R/eval/)",
             "bench": "benchmarks (a list: every round answers each)"},
}
STAGE_CLASSES = {"pairs": PairsConfig, "train": TrainConfig, "eval": EvalConfig}


@dataclass
class IterateConfig:
    """Options of ``slimepo iterate``."""

    command: ClassVar[str] = "iterate"

    model: str = option(
        DEFAULT_MODEL, "the initial model: Hub id, local folder or 'default' (round 1 samples from it and trains it)",
        group="loop",
    )
    rounds: int = option(
        2, "rounds of sample → train → evaluate; a finished loop rerun with more rounds continues", group="loop",
    )
    out: str = option(
        "runs/iterate", "loop folder: iterate.yaml, round-0/ (the initial model evaluated), round-1/ … each with "
        "pairs/, train/, eval/ and round.json, and report/", group="loop",
    )
    reference: str = option(
        "previous", "reference of reference-based losses (dpo, ipo, dpo-norm, ...) in rounds after the first: previous "
        "(the policy the round starts from: each round is a fresh run from its own starting point) | initial (the "
        "initial model in every round); reference-free losses (slime, simpo, ...) ignore it", group="loop",
        choices=REFERENCES,
    )
    prompts_per_round: int | None = option(
        None, "fresh prompts each round: round r samples prompt rows (r-1)·N+1 … r·N of the pairs stage's prompts "
        "(none: every round samples all of them, under its own seed)", group="loop",
    )
    benchmarks: list[str] = option(
        [], f"benchmarks every round answers after its evaluation, each into round-R/eval-NAME/, with the eval "
        f"section's options for them (max_prompts, bench_max_new_tokens, judge_url...): {' | '.join(BENCHMARKS)}",
        group="loop",
    )
    evaluate_initial: bool = option(
        True, "evaluate the initial model as round 0, the starting point of every curve", group="loop",
    )
    pairs: dict[str, Any] = option(
        {}, "options of slimepo pairs for every round, e.g. {k: 4, scorer: ifeval, prompts: FILE}; round r samples "
        "under seed + r - 1", group="stages",
    )
    train: dict[str, Any] = option(
        {}, "options of slimepo train for every round, e.g. {loss: dpo, learning_rate: 5e-5}; the held-out pairs "
        "default to the eval stage's dataset", group="stages",
    )
    eval: dict[str, Any] = option(
        {}, "options of slimepo eval for every round, e.g. {bench: ifeval, max_prompts: 64}; drift is measured "
        "against the initial model", group="stages",
    )

    def validate(self) -> None:
        """Check the loop's options and every stage's, as round 1 and the last round would take them."""
        _check_choices(self)
        _check_whole_numbers(self, "rounds", "prompts_per_round")
        if self.rounds < 1:
            raise ConfigError(f"rounds: must be >= 1, got {self.rounds}")
        if self.prompts_per_round is not None and self.prompts_per_round < 1:
            raise ConfigError(f"prompts_per_round: must be >= 1, got {self.prompts_per_round}")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"out: {self.out!r} is a file, not a folder")
        for stage, given in (("pairs", self.pairs), ("train", self.train), ("eval", self.eval)):
            taken = sorted(set(given) & set(SET_BY_LOOP[stage]))
            if taken:
                raise ConfigError(f"{stage}: the loop sets {', '.join(taken)} itself; use "
                                  f"{'; '.join(SET_BY_LOOP[stage][name] for name in taken)}")
            if stage == "pairs" and self.prompts_per_round is not None and "max_prompts" in given:
                raise ConfigError("pairs: max_prompts and prompts_per_round both choose the prompts; give one")
        unknown = [name for name in self.benchmarks if name not in BENCHMARKS]
        if unknown or len(set(self.benchmarks)) < len(self.benchmarks):
            raise ConfigError(f"benchmarks: each once, of {', '.join(BENCHMARKS)}; got {self.benchmarks}")
        for name in self.benchmarks:
            self.bench_config(Path(self.out), name, self.model)
        unused = [name for name in BENCHMARK_ONLY_OPTIONS if name in self.eval and not self.benchmarks]
        if unused:
            raise ConfigError(f"eval: {', '.join(unused)} answer or judge the benchmarks; add benchmarks: [...]")
        if self.eval.get("engine") == "openai":
            raise ConfigError("eval: engine: every round evaluates the policy it trained, which no server serves; "
                              "answer the benchmarks with hf or vllm")
        if self.train.get("load_in_4bit"):
            raise ConfigError("train: load_in_4bit: the loop merges each round's adapter into the weights the next "
                              "round starts from, and a 4-bit base cannot take it exactly; train in float32 or bf16")
        train = self.stage_configs(1, "round-1-policy")[1]
        spec = parse_loss_spec(train.loss)
        unpaired = [name for name, _ in spec if name in UNPAIRED_LOSSES]
        if unpaired:
            raise ConfigError(f"train: loss {train.loss} trains on unpaired examples; the loop makes pairs (use a pair "
                              "loss, e.g. slime, dpo or simpo)")

    def stage_configs(self, round_index: int, start: str) -> tuple[PairsConfig, TrainConfig, EvalConfig]:
        """The pairs, train and eval configs of round ``round_index`` (1-based) starting from the
        model ``start``, validated (an error names the stage). Paths are inside :attr:`out`."""
        round_dir = Path(self.out) / f"round-{round_index}"
        pairs = self._stage("pairs", self.pairs, model=start, out=str(round_dir / "pairs"))
        pairs = dataclasses.replace(pairs, seed=pairs.seed + round_index - 1)
        if self.prompts_per_round is not None:
            pairs = dataclasses.replace(pairs, prompts=str(round_dir / ROUND_PROMPTS), split="train", columns={})
        evaluation = self.eval_config(round_dir / "eval", start)
        held_out = {}
        if "eval_dataset" not in self.train:
            dataset, split = eval_source(evaluation)
            held_out = {"eval_dataset": dataset, "eval_split": split}
            if evaluation.max_pairs and "max_eval_pairs" not in self.train:
                held_out["max_eval_pairs"] = evaluation.max_pairs
        train = self._stage(
            "train", {**held_out, **self.train}, model=start, dataset=str(round_dir / "pairs" / "pairs.jsonl"),
            output_dir=str(round_dir / "train"),
            ref_model=self.model if self.reference == "initial" and round_index > 1 else None,
            merge=bool(self.train.get("use_lora", True)),
            validate=False,
        )
        try:  # its dataset does not exist before the round samples it
            dataclasses.replace(train, dataset=DEMO).validate()
        except ConfigError as err:
            raise ConfigError(f"train: {err}") from None
        return pairs, train, evaluation

    def eval_config(self, out: Path, model: str) -> EvalConfig:
        """The eval stage's config for ``model``, drift measured against the initial model."""
        held_out_only = {name: value for name, value in self.eval.items() if name not in BENCHMARK_OPTIONS}
        return self._stage("eval", held_out_only, model=model, base=self.model, out=str(out))

    def bench_config(self, round_dir: Path, bench: str, model: str) -> EvalConfig:
        """The evaluation that answers ``bench`` for ``model`` into ``round_dir/eval-<bench>/`` (no
        generation on the held-out prompts: the eval stage did that)."""
        return self._stage("eval", {**self.eval, "generate": False}, model=model, base=self.model, bench=bench,
                           out=str(round_dir / f"eval-{bench}"))

    def _stage(self, stage: str, given: dict[str, Any], validate: bool = True, **loop: Any) -> Any:
        config = config_from_mapping({**given, **loop}, source=f"{stage} (slimepo iterate)", cls=STAGE_CLASSES[stage])
        if validate:
            try:
                config.validate()
            except ConfigError as err:
                raise ConfigError(f"{stage}: {err}") from None
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: Eval options of the benchmarks only (``benchmarks``: their prompts, budget, judge and the engine that
#: answers them), not of the held-out evaluation: the eval options of the ``benchmark`` group.
BENCHMARK_OPTIONS = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.metadata["group"] == "benchmark")
#: Of those, the ones that only make sense with a benchmark to answer.
BENCHMARK_ONLY_OPTIONS = ("judge_url", "judge_model", "judge_key_env", "engine", "engine_url", "engine_model",
                          "engine_key_env")

#: The prompt rows of one round when the loop hands out fresh prompts (``prompts_per_round``).
ROUND_PROMPTS = "prompts.jsonl"

#: Loop options a rerun may change: more rounds continue a finished loop.
RERUN_FREE_OPTIONS = frozenset({"rounds"})


def eval_source(config: EvalConfig) -> tuple[str, str]:
    """The file (or source) and split of the eval stage's held-out pairs, as training takes them."""
    if config.dataset == DEMO:
        from slimepo.data import demo_file

        return demo_file(config.split), "train"
    return config.dataset, config.split
