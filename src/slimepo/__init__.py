"""slimepo: SLIME and its baselines for preference optimization of causal LMs."""

__version__ = "0.1.0"
