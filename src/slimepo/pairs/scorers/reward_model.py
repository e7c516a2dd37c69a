"""The ``reward-model`` scorer: a sequence classifier's logit for (prompt, answer).

Any Hub or local ``AutoModelForSequenceClassification`` with a single label, with its own
tokenizer: the conversation plus the answer as an assistant turn goes through the reward
model's chat template (plain ``prompt\\n\\nanswer`` when it has none), and the score is the
logit the model pools at the last token, batched.

Batches are right-padded with a token id that occurs in none of the batch's rows, and the
model's ``pad_token_id`` is that id while it runs: transformers pools at the rightmost token
that is not the pad id, so a row that itself ends with the usual pad token (a template whose
turns end with EOS = pad) would otherwise be scored at the wrong token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from slimepo.fingerprint import weights_sha256
from slimepo.pairs.prompts import PromptRecord
from slimepo.pairs.scorers.base import Score, failed


class RewardModelScorer:
    name = "reward-model"

    def __init__(self, model: Any, tokenizer: Any, name: str, batch_size: int = 8) -> None:
        if model.config.num_labels != 1:
            raise ValueError(f"{name}: a reward model has one label, this one has {model.config.num_labels}")
        self.model, self.tokenizer, self.model_name, self.batch_size = model.eval(), tokenizer, name, batch_size
        self._weights = weights_sha256(model)

    @classmethod
    def load(cls, model: str, *, dtype: str = "auto", trust_remote_code: bool = False,
             batch_size: int = 8) -> RewardModelScorer:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from slimepo.model import resolve_dtype

        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        classifier = AutoModelForSequenceClassification.from_pretrained(
            model, dtype=resolve_dtype(dtype, training=False), trust_remote_code=trust_remote_code)
        return cls(classifier.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer, model, batch_size)

    def settings(self) -> dict[str, Any]:
        return {"scorer": self.name, "model": self.model_name, "weights_sha256": self._weights}

    def problem(self, record: PromptRecord) -> str | None:
        return None

    def token_ids(self, record: PromptRecord, answer: str) -> list[int]:
        """What the reward model reads: the conversation and the answer, in its own template."""
        conversation = [*record.conversation, {"role": "assistant", "content": answer}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer("\n\n".join(m["content"] for m in conversation))["input_ids"])

    def score(self, items: Sequence[tuple[PromptRecord, str]]) -> list[Score]:
        scores: list[Score] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            try:
                logits = self.logits([self.token_ids(record, answer) for record, answer in batch])
            except Exception as error:  # a batch the model cannot read (too long, ...): recorded per answer
                scores += [failed(error)] * len(batch)
                continue
            scores += [Score(float(value)) for value in logits]
        return scores

    @torch.no_grad()
    def logits(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """The single label's logit for each row of token ids."""
        pad_id = _absent_id(rows, self.tokenizer.pad_token_id)
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(list(row))
            attention_mask[i, : len(row)] = 1
        config = self.model.config.get_text_config()
        saved, config.pad_token_id = config.pad_token_id, pad_id
        try:
            device = next(self.model.parameters()).device
            output = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        finally:
            config.pad_token_id = saved
        return output.logits[:, 0].float().tolist()


def _absent_id(rows: Sequence[Sequence[int]], preferred: int | None) -> int:
    """``preferred`` if no row holds it, else the smallest id that none holds."""
    present = {token for row in rows for token in row}
    if preferred is not None and preferred not in present:
        return preferred
    return next(i for i in range(len(present) + 1) if i not in present)
