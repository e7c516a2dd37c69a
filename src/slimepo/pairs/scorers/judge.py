"""The ``judge`` scorer: an LLM judge behind an OpenAI-compatible API rates each answer 1-10.

The prompt and its parsing are FastChat's single-answer grading, the one ``slimepo eval
--bench mt-bench`` uses: :data:`JUDGE_PROMPT` of :func:`slimepo.eval.judge.load_judge_prompts`
(the question and the answer, "rate ... by strictly following this format: [[rating]]"),
read by :func:`slimepo.eval.judge.parse_score` (the first ``[[N]]``, else ``[N]``; 1-10).
A conversation of several turns is shown as its turns, each after its role. A request that
fails after the client's retries, or a judgment without a rating, is a failure with its
reason, never a score.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slimepo.eval.judge import CompletionClient, JudgeClient, load_judge_prompts, parse_score
from slimepo.pairs.prompts import PromptRecord
from slimepo.pairs.scorers.base import Score, failed

#: FastChat's judge prompt used for every answer.
JUDGE_PROMPT = "single-v1"


class JudgeScorer:
    name = "judge"

    def __init__(self, client: CompletionClient, workers: int = 4) -> None:
        self.client, self.workers = client, workers
        self.prompt = load_judge_prompts()[JUDGE_PROMPT]

    @classmethod
    def connect(cls, url: str, model: str, key_env: str = "OPENAI_API_KEY") -> JudgeScorer:
        return cls(JudgeClient(url, model, api_key_env=key_env))

    def settings(self) -> dict[str, Any]:
        text = self.prompt["system_prompt"] + "\n" + self.prompt["prompt_template"]
        client = {name: getattr(self.client, name, None) for name in ("url", "model", "temperature", "max_tokens")}
        return {"scorer": self.name, **client, "prompt": JUDGE_PROMPT,
                "prompt_sha256": hashlib.sha256(text.encode()).hexdigest()}

    def problem(self, record: PromptRecord) -> str | None:
        return None

    def messages(self, record: PromptRecord, answer: str) -> list[dict[str, str]]:
        """What the judge is sent about one answer."""
        turns = record.conversation
        question = turns[-1]["content"] if len(turns) == 1 else "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)
        return [{"role": "system", "content": self.prompt["system_prompt"]},
                {"role": "user", "content": self.prompt["prompt_template"].format(question=question, answer=answer)}]

    def score(self, items: Sequence[tuple[PromptRecord, str]]) -> list[Score]:
        def judge(item: tuple[PromptRecord, str]) -> Score:
            try:
                judgment = self.client.complete(self.messages(*item))
            except Exception as error:  # any client failure is recorded, never dropped
                return failed(error)
            value = parse_score(judgment)
            if value is None:
                return Score(None, judgment, "the judgment holds no [[rating]] from 1 to 10")
            return Score(value, judgment)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(judge, items))
