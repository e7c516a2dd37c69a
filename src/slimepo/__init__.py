"""slimepo: SLIME and its baselines for preference optimization of causal LMs."""

import logging

__version__ = "0.1.0"

# Where bitsandbytes is installed (QLoRA), peft imports it with transformers, and on a CPU with
# AVX512-BF16 its import warns on every run that an optional kernel from the Hub could not be
# loaded; it then uses its own, which slimepo's QLoRA path is tested with. Nothing to act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
