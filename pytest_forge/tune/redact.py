"""Secrets out of everything a tune run stores: keys, tokens and credentials by name or shape.

The run store writes options, experiments and summaries to disk (and CI uploads them), so
every value passes through :func:`redact` first.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_forge.errors import ForgeError

REDACTED = "***redacted***"
# Matched against each word of a key, so "api_key", "HF_TOKEN", "apiKey" and
# "Authorization" are redacted while "max_num_batched_tokens" or "input_tokens" are not.
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "authorization")
# Credentials by their shape, wherever they appear (an error text, a log tail, a note).
_SECRET_VALUE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,})|\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
)
# A mapping holding these is an environment dump, which may hold any secret under any name.
_ENV_MARKERS = frozenset({"PATH", "HOME"})


def _is_secret_key(key: str) -> bool:
    words = [
        w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()) if w
    ]
    # The last word names what the value is: HF_TOKEN, api_key, client_secret are secrets;
    # total_token_throughput and max_num_batched_tokens are not.
    return bool(words) and words[-1].endswith(_SECRET_WORDS)


def redact(value: Any, where: str = "config") -> Any:
    """A JSON-ready copy of ``value`` with every secret-looking key or value replaced.

    Non-finite floats become None (JSON has no NaN). An environment dump is refused, not
    filtered: nothing that may hold a secret under an unrecognisable name is written.
    """
    if isinstance(value, os._Environ) or (
        isinstance(value, Mapping) and {str(k) for k in value} >= _ENV_MARKERS
    ):
        raise ForgeError(
            f"{where}: looks like an environment dump (has {', '.join(sorted(_ENV_MARKERS))}); "
            "the run store records options, never the environment"
        )
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED
            if _is_secret_key(str(k)) and isinstance(v, str)
            else redact(v, f"{where}.{k}")
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [redact(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Path):
        return str(value)
    return redact(str(value), where)


__all__ = ["REDACTED", "redact"]
