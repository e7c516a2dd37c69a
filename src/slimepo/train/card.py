"""The output folder's README.md: what was trained, on what, how, and how it ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimepo.atomic_io import write_text
from slimepo.config import TrainConfig
from slimepo.losses import parse_loss_spec
from slimepo.report import lookup

SUMMARY_ROWS = (
    ("preference accuracy", ("accuracy",)),
    ("mean chosen log-lik (nats/token)", ("chosen_logp_mean",)),
    ("mean rejected log-lik (nats/token)", ("rejected_logp_mean",)),
    ("mean margin (nats/token)", ("margin", "mean")),
    ("rejected tokens with p < 1e-4", ("collapse", "rejected_p_lt_1e-4")),
    ("p(end of turn) where the chosen answers end", ("end_of_turn", "chosen", "p_mean")),
    ("p(end of turn) where the rejected answers end", ("end_of_turn", "rejected", "p_mean")),
)


def summary_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Markdown table of held-out metrics before and after training."""
    lines = ["| held-out metric | before | after |", "| --- | ---: | ---: |"]
    for label, path in SUMMARY_ROWS:
        cells = [lookup(m, path) for m in (before, after)]
        lines.append(f"| {label} | " + " | ".join("—" if c is None else f"{c:.4f}" for c in cells) + " |")
    drift = lookup(after, ("drift", "chosen_drift_mean"))
    unlearning = lookup(after, ("drift", "unlearning_rate"))
    if drift is not None:
        lines.append(f"| chosen log-lik drift vs base (nats/token) | — | {drift:+.4f} |")
        lines.append(f"| unlearning rate (pairs whose chosen fell) | — | {unlearning:.4f} |")
    return "\n".join(lines)


#: In every card slimepo writes, and in no README.md PEFT or transformers write.
CARD_MARK = "Trained with [slimepo](https://pypi.org/project/slimepo/)"


def write_model_card(out: Path, config: TrainConfig, final: dict[str, Any], steps: int, before: dict[str, Any] | None = None) -> Path:
    loss = config.loss_fn()
    params = "\n".join(f"| `{k}` | {v} |" for k, v in loss.hyperparameters().items()) or "| (none) | |"
    method = "LoRA" if config.use_lora else "full fine-tuning"
    if config.use_lora:
        method += f" (r={config.lora_r}, alpha={config.lora_alpha}, dropout={config.lora_dropout}, targets={config.lora_target_modules})"
    load = (
        "from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(PATH)"
        if config.use_lora
        else "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(PATH)"
    )
    text = f"""---
library_name: {"peft" if config.use_lora else "transformers"}
tags: [slimepo, preference-optimization, {", ".join(name for name, _ in parse_loss_spec(config.loss))}]
---
# {out.name}

{CARD_MARK} using the `{config.loss}` objective
({loss.citation}).

- base model: `{config.model}`
- data: `{config.dataset}` (split `{config.dataset_split}`)
- method: {method}
- optimizer steps: {steps}; learning rate {config.learning_rate}; {config.batch_size} pairs x {config.gradient_accumulation_steps} accumulation per device; seed {config.seed}

## Objective hyperparameters

| parameter | value |
| --- | --- |
{params}

## Held-out results

{summary_table(before or {}, final) if final else "(no held-out split)"}

## Load

```python
{load}
```

The full resolved configuration is in `config.yaml`, the training log in `metrics.jsonl`.
"""
    return write_text(out / "README.md", text)
