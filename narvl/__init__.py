"""narvl: non-autoregressive vision-language models (NARVL) as a reproducible pipeline."""

__version__ = "0.1.0"
