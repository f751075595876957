"""pytest-forge: every vLLM recipe x workload pair as a benchmark test."""

__version__ = "0.1.0"
