"""Reference log-probs scored once, kept on disk, reused by any later run that would compute the same numbers.

``--precompute-ref-logps`` scores every training pair under the reference before training
(:func:`slimepo.train.run.precompute_reference`). With a cache (``--ref-logps-cache``) the
sums are stored under a key that is the sha256 of everything they depend on
(:func:`cache_identity`):

- ``reference_weights_sha256``: the reference as scored (:func:`slimepo.fingerprint.weights_sha256`;
  for a LoRA policy whose adapters are still zero, its base weights alone);
- ``data_sha256``: every pair's prompt, chosen and rejected token ids, in order (the tokenizer,
  chat template, truncation and data order all show there);
- ``max_length``, ``max_prompt_length``, ``layout``, ``batch_size``, ``logprob_chunk_size``,
  ``mixed_precision``, ``attn_implementation``, the device type and the torch version.

Any change gives another key, so the pairs are scored afresh; an entry whose stored identity
or pair count does not match its key (a hand-edited or torn entry) is scored afresh and
replaced. An entry is a folder ``<key>/`` holding ``identity.json`` and ``logps.safetensors``
(``ref_chosen_logp``, ``ref_rejected_logp``: float64 ``[pairs]``), published by one rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from slimepo.fingerprint import weights_sha256

logger = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
LOGPS_FILE = "logps.safetensors"


def reference_weights_sha256(model: torch.nn.Module) -> str:
    """The digest of what a reference forward computes with. A LoRA policy used as its own
    reference scores with zero adapters (every ``lora_B`` is 0), so only its other weights count:
    the same base gives the same key whatever the adapters' random ``lora_A`` or rank."""
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    if lora_b and all(not bool(p.detach().any()) for p in lora_b):
        return weights_sha256(model, skip=lambda name: "lora_" in name)
    return weights_sha256(model)


def data_sha256(pairs: Sequence[Any]) -> str:
    """sha256 of every pair's ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, in order."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([list(pair.prompt_ids), list(pair.chosen_ids), list(pair.rejected_ids)]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def cache_identity(reference: torch.nn.Module, pairs: Sequence[Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the cached numbers depend on: the reference, the tokenized pairs, and ``settings``
    (max lengths, layout, batch size, chunk size, mixed precision, attention kernel)."""
    device = next(reference.parameters()).device.type
    return {"reference_weights_sha256": reference_weights_sha256(reference), "data_sha256": data_sha256(pairs),
            "pairs": len(pairs), **dict(sorted(settings.items())), "device": device, "torch": torch.__version__}


def cache_key(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def load_cached(root: Path, identity: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """The cached ``(chosen sums, rejected sums)`` for ``identity``, or None (absent, or not trusted)."""
    entry = root / cache_key(identity)
    if not entry.is_dir():
        return None
    try:
        stored = json.loads((entry / IDENTITY_FILE).read_text(encoding="utf-8"))
        tensors = load_file(entry / LOGPS_FILE)
        chosen, rejected = tensors["ref_chosen_logp"].tolist(), tensors["ref_rejected_logp"].tolist()
    except (OSError, ValueError, KeyError) as err:
        logger.warning("reference log-probs cache %s is unreadable (%s): scoring afresh", entry, err)
        return None
    if stored != dict(identity) or len(chosen) != identity["pairs"] or len(rejected) != identity["pairs"]:
        logger.warning("reference log-probs cache %s does not hold what its key names: scoring afresh", entry)
        return None
    return chosen, rejected


def store(root: Path, identity: Mapping[str, Any], chosen: Sequence[float], rejected: Sequence[float]) -> Path:
    """Publish an entry atomically (written beside, then renamed into place; a stale one is replaced)."""
    root.mkdir(parents=True, exist_ok=True)
    entry = root / cache_key(identity)
    staged = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        (staged / IDENTITY_FILE).write_text(json.dumps(dict(identity), indent=2), encoding="utf-8")
        save_file({"ref_chosen_logp": torch.tensor(list(chosen), dtype=torch.float64),
                   "ref_rejected_logp": torch.tensor(list(rejected), dtype=torch.float64)}, staged / LOGPS_FILE)
        if entry.exists():
            stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=root))
            os.replace(entry, stale / entry.name)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(staged, entry)
    except OSError:
        if not entry.is_dir():  # another process published it first: theirs is the same numbers
            raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return entry
