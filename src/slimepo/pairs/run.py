"""``slimepo pairs``: preference pairs from a model's own answers.

    prompts --engine--> k answers each --scorer--> scores --select_pairs--> pairs.jsonl
    (prompts.py)        (slimepo.generation)       (scorers/)   (build.py)

Answers are sampled batch by batch and appended to ``samples.jsonl`` with their scores as soon
as they exist (:mod:`slimepo.pairs.samples`), so a killed run resumes where it stopped. Then
``pairs.jsonl`` (TRL's explicit-prompt or conversational preference format, as the prompt was)
and ``provenance.json`` (what made them, and every count) are written whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimepo.atomic_io import write_json, write_text
from slimepo.data import DataError
from slimepo.generation import Engine, make_engine
from slimepo.pairs.build import Answer, PairCounts, select_pairs
from slimepo.pairs.config import PairsConfig
from slimepo.pairs.prompts import BadPrompt, PromptRecord, read_prompts, source_path
from slimepo.pairs.samples import SAMPLES_FILE, read_samples, sampled_prompts, write_samples
from slimepo.pairs.scorers import Score, Scorer, make_scorer
from slimepo.pairs.scorers.base import failed

PAIRS_FILE = "pairs.jsonl"
PROVENANCE_FILE = "provenance.json"

logger = logging.getLogger(__name__)


@dataclass
class PairsResult:
    """Where the outputs are, and :data:`provenance` (what ``provenance.json`` holds)."""

    out_dir: Path
    provenance: dict[str, Any]

    @property
    def counts(self) -> dict[str, Any]:
        return self.provenance["counts"]


def make_pairs(config: PairsConfig, *, engine: Engine | None = None, scorer: Scorer | None = None) -> PairsResult:
    """Sample ``config.k`` answers per prompt, score them, write pairs; see the module docstring.

    ``engine`` and ``scorer`` replace the ones ``config`` names (for tests and for callers that
    hold a model already). Raises :class:`slimepo.eval.answers.AnswersMismatchError` when
    ``samples.jsonl`` in ``config.out`` holds answers made by another model, decoding or prompt.
    """
    config.validate()
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    decoding = config.decoding()
    records, bad = read_prompts(config.prompts, config.split, config.columns or None, config.max_prompts)
    scorer = scorer or _scorer(config)
    usable = []
    for record in records:
        problem = scorer.problem(record)
        if problem is None:
            usable.append(record)
        else:
            bad.append(BadPrompt(record.row, record.key, "unscorable", problem))
    if not usable:
        reasons = Counter(b.reason for b in bad)
        raise DataError(f"{config.prompts}: no usable prompt ({', '.join(f'{r}: {n}' for r, n in reasons.items())}; "
                        f"first: {bad[0].to_dict()})")
    if bad:
        logger.warning("%d of %d prompt rows left out (%s); provenance.json lists them", len(bad), len(bad) + len(usable),
                       ", ".join(f"{reason}: {n}" for reason, n in Counter(b.reason for b in bad).most_common()))
    engine = engine or make_engine(
        config.engine, model=config.model, adapter=config.adapter, dtype=config.dtype,
        trust_remote_code=config.trust_remote_code, batch_size=config.batch_size, url=config.engine_url,
        served_model=config.engine_model, key_env=config.engine_key_env,
    )
    made_by = {**engine.identity(), "decoding": decoding.to_dict()}
    scored_by = scorer.settings()
    digests = {record.key: engine.prompt_digest(record.conversation) for record in usable}
    path = out / SAMPLES_FILE
    sampled, kept = sampled_prompts(path, read_samples(path), config.k, made_by, digests)
    by_key = {record.key: record for record in usable}
    rescored = _rescore(sampled, by_key, scorer, scored_by)
    # Rewritten first: a line torn by a kill must not swallow the next one appended.
    write_samples(path, kept)
    todo = [record for record in usable if record.key not in sampled]
    sampling_started = time.perf_counter()
    _sample(todo, path, engine, scorer, config, made_by, scored_by, digests, sampled, total=len(usable))
    sampling_seconds = time.perf_counter() - sampling_started

    counts = PairCounts()
    rows = []
    for record in usable:
        answers = sampled[record.key]
        pairs = select_pairs(record.key, [Answer(s["sample"], s["response"], s["score"], s["ended"]) for s in answers],
                             config.pairing, config.min_gap, counts, config.cut_answers)
        rows += [_pair_row(record, chosen, rejected) for chosen, rejected in pairs]
    write_text(out / PAIRS_FILE, "".join(json.dumps(row) + "\n" for row in rows))
    failures = [{"key": s["key"], "row": s["row"], "sample": s["sample"], "error": s["score_error"]}
                for record in usable for s in sampled[record.key] if s["score"] is None]
    if len(failures) == config.k * len(usable):
        logger.warning("every one of the %d answers failed to score; the first error: %s", len(failures),
                       failures[0]["error"])
    provenance = {
        "command": "slimepo pairs",
        "config": dataclasses.asdict(config),
        "prompts": _file_record(source_path(config.prompts, config.split)),
        "model": config.model if config.engine != "openai" else None,
        "adapter": config.adapter,
        "engine": engine.identity(),
        "decoding": decoding.to_dict(),
        "k": config.k,
        "seed": config.seed,
        "scorer": scored_by,
        "pairing": {"mode": config.pairing, "min_gap": config.min_gap, "cut_answers": config.cut_answers},
        "counts": {
            "prompt_rows": len(records) + len([b for b in bad if b.reason != "unscorable"]),
            "prompts": len(usable),
            "bad_prompts": len(bad),
            "bad_prompts_by_reason": dict(Counter(b.reason for b in bad)),
            "samples": config.k * len(usable),
            "scored_samples": config.k * len(usable) - len(failures),
            "scorer_failures": len(failures),
            "prompts_sampled_this_run": len(todo),
            "samples_rescored_this_run": rescored,
            **counts.to_dict(),
        },
        "bad_prompts": [b.to_dict() for b in bad],
        "scorer_failures": failures,
        "timing": {
            "seconds": round(time.perf_counter() - started, 3),
            "sampling_and_scoring_seconds": round(sampling_seconds, 3),
            "seconds_per_prompt_sampled": round(sampling_seconds / len(todo), 3) if todo else None,
            "machine": _machine(),
        },
        "outputs": {"pairs": PAIRS_FILE, "samples": SAMPLES_FILE},
    }
    write_json(out / PROVENANCE_FILE, provenance)
    return PairsResult(out, provenance)


def _scorer(config: PairsConfig) -> Scorer:
    if config.scorer == "ifeval":
        return make_scorer("ifeval", mode=config.ifeval_mode)
    if config.scorer == "reward-model":
        return make_scorer("reward-model", model=config.reward_model, dtype=config.dtype,
                           trust_remote_code=config.trust_remote_code, batch_size=config.batch_size)
    if config.scorer == "judge":
        return make_scorer("judge", url=config.judge_url, model=config.judge_model, key_env=config.judge_key_env)
    return make_scorer(config.scorer)


def _sample(todo: Sequence[PromptRecord], path: Path, engine: Engine, scorer: Scorer, config: PairsConfig,
            made_by: Mapping[str, Any], scored_by: Mapping[str, Any], digests: Mapping[str, str],
            sampled: dict[str, list[dict[str, Any]]], total: int) -> None:
    """Sample, score and append each batch of ``todo``; ``sampled`` gains every prompt done."""
    from tqdm.auto import tqdm

    decoding = config.decoding()
    with path.open("a", encoding="utf-8") as f, tqdm(total=total, initial=total - len(todo), desc="pairs: prompts",
                                                     unit="prompt") as progress:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            answers = engine.generate([record.conversation for record in batch], decoding, config.k)
            items = [(record, sample.text) for record, samples in zip(batch, answers, strict=True) for sample in samples]
            scores = iter(_score(scorer, items))
            for record, samples in zip(batch, answers, strict=True):
                lines = []
                for index, sample in enumerate(samples):
                    line = {"key": record.key, "row": record.row, "sample": index, "prompt": record.prompt,
                            "response": sample.text, "token_ids": sample.token_ids, "ended": sample.ended,
                            "length": sample.length,
                            "made_by": {**made_by, "prompt_ids_sha256": digests[record.key]}}
                    lines.append(_with_score(line, next(scores), scored_by))
                f.writelines(json.dumps(line) + "\n" for line in lines)
                sampled[record.key] = lines
            f.flush()
            progress.update(len(batch))


def _score(scorer: Scorer, items: Sequence[tuple[PromptRecord, str]]) -> list[Score]:
    """The scorer's scores; a scorer that raises fails every item of the call, each recorded."""
    if not items:
        return []
    try:
        scores = scorer.score(items)
    except Exception as error:  # recorded with every answer it concerns, and counted
        return [failed(error)] * len(items)
    if len(scores) != len(items):
        raise RuntimeError(f"scorer {scorer.name} returned {len(scores)} scores for {len(items)} answers")
    return scores


def _with_score(line: dict[str, Any], score: Score, scored_by: Mapping[str, Any]) -> dict[str, Any]:
    line.update(score=score.value, score_detail=score.detail, score_error=score.error, scored_by=dict(scored_by))
    return line


def _rescore(sampled: Mapping[str, list[dict[str, Any]]], records: Mapping[str, PromptRecord], scorer: Scorer,
             scored_by: Mapping[str, Any]) -> int:
    """Score again, in place, the answers of ``sampled`` that another scorer scored or whose scoring failed."""
    stale = [s for key, answers in sampled.items() for s in answers
             if s.get("scored_by") != scored_by or s.get("score") is None]
    for sample, score in zip(stale, _score(scorer, [(records[s["key"]], s["response"]) for s in stale]), strict=True):
        _with_score(sample, score, scored_by)
    return len(stale)


def _pair_row(record: PromptRecord, chosen: Answer, rejected: Answer) -> dict[str, Any]:
    """One line of pairs.jsonl: the prompt as the row had it; responses as text, or as one assistant
    message when the prompt is a message list (TRL's conversational format)."""

    def response(answer: Answer) -> str | list[dict[str, str]]:
        return answer.text if isinstance(record.prompt, str) else [{"role": "assistant", "content": answer.text}]

    return {"key": record.key, "prompt": record.prompt, "chosen": response(chosen), "rejected": response(rejected),
            "chosen_score": chosen.score, "rejected_score": rejected.score,
            "chosen_sample": chosen.index, "rejected_sample": rejected.index,
            "chosen_ended": chosen.ended, "rejected_ended": rejected.ended}


def _file_record(path: str) -> dict[str, Any]:
    """A local prompts file and the sha256 of its bytes; a Hub id as is."""
    file = Path(path)
    if not file.is_file():
        return {"source": path}
    return {"source": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}


def _machine() -> dict[str, Any]:
    from slimepo.model import machine

    return machine()
