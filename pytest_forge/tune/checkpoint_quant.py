"""A model checkpoint's quantization, read from its config.json, and what it lets a recipe boot.

A pre-quantized checkpoint says how it was quantized in config.json's
``quantization_config`` (``compression_config`` in older llm-compressor files); vLLM reads
it and refuses a ``--quantization`` that differs, and a checkpoint-bound method (awq,
gptq, compressed-tensors, ...) on a plain checkpoint fails to boot. Reading is local only
(the built-in tiny model, a model directory, the Hugging Face cache) plus the facts the
quant layer learned from the Hub this process (:func:`remember`): never a network call, so
the proposal check may ask on every proposal.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_forge.quant_gates import (
    Host,
    effective_quant_method,
    is_no_quant,
    is_online_method,
    quant_unsupported_reason,
    same_scheme,
)
from pytest_forge.tiny_model import is_tiny_model

__all__ = [
    "CheckpointQuant",
    "checkpoint_gate_problem",
    "checkpoint_quant_problem",
    "forget_all",
    "from_config",
    "is_hub_id",
    "local_checkpoint_quant",
    "method_problem",
    "remember",
]

PLAIN = "none"
# A scheme the quantization gates do not cover: such a checkpoint is never proposed.
UNKNOWN = "unknown"
_MAX_CONFIG_BYTES = 4_000_000
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class CheckpointQuant:
    """How a checkpoint is quantized: vLLM's method name, the gates' scheme, and where
    that was read."""

    method: str  # quantization_config.quant_method, lower case; "none" for a plain one
    scheme: str  # what quant_gates checks: "none", "int4", "w8a8", "fp8" or "unknown"
    source: str  # "config.json of /models/x", "the Hugging Face cache", "the Hub", ...

    @property
    def quantized(self) -> bool:
        """True for a pre-quantized checkpoint."""
        return self.method != PLAIN

    def describe(self) -> str:
        """``awq (int4)``, ``compressed-tensors (fp8)`` or ``plain (not quantized)``."""
        if not self.quantized:
            return "plain (not quantized)"
        return (
            self.method
            if self.scheme in (self.method, UNKNOWN)
            else (f"{self.method} ({self.scheme})")
        )


def _compressed_tensors_scheme(qc: Mapping[str, Any]) -> str:
    """The scheme of an llm-compressor checkpoint: its config groups' weight types."""
    for group in (qc.get("config_groups") or {}).values():
        weights = group.get("weights") if isinstance(group, Mapping) else None
        if not isinstance(weights, Mapping):
            continue
        bits, kind = weights.get("num_bits"), str(weights.get("type") or "int")
        if kind == "float" and bits == 8:
            return "fp8"
        if kind == "int" and bits == 8 and group.get("input_activations"):
            return "w8a8"
        if kind == "int" and bits == 4:
            return "int4"
    form = str(qc.get("format") or "")
    return {"float-quantized": "fp8", "int-quantized": "w8a8", "pack-quantized": "int4"}.get(
        form, UNKNOWN
    )


def _scheme(method: str, qc: Mapping[str, Any]) -> str:
    if method in ("awq", "awq_marlin", "gptq", "gptq_marlin", "marlin"):
        bits = qc.get("bits", qc.get("w_bit", 4))
        return "w8a8" if bits == 8 and "gptq" in method else "int4"
    if method in ("fp8", "fbgemm_fp8", "ptpc_fp8"):
        return "fp8"
    if method == "compressed-tensors":
        return _compressed_tensors_scheme(qc)
    if method == "modelopt":
        return "fp8" if str(qc.get("quant_algo") or "").upper() == "FP8" else UNKNOWN
    return UNKNOWN


def from_config(config: Mapping[str, Any], source: str) -> CheckpointQuant:
    """A checkpoint's quantization from its parsed config.json."""
    qc = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(qc, Mapping):
        return CheckpointQuant(PLAIN, PLAIN, source)
    raw = qc.get("quant_method") or ("compressed-tensors" if "config_groups" in qc else "")
    method = str(raw).strip().lower().replace("_", "-")
    method = method if method == "compressed-tensors" else method.replace("-", "_")
    if not method:
        return CheckpointQuant(UNKNOWN, UNKNOWN, source)
    return CheckpointQuant(method, _scheme(method, qc), source)


_KNOWN: dict[str, CheckpointQuant] = {}
_LOCK = threading.Lock()


def remember(model: str, quant: CheckpointQuant) -> None:
    """Record what the Hub said about ``model`` for the proposal check of this process."""
    with _LOCK:
        _KNOWN[model] = quant


def forget_all() -> None:
    """Drop every remembered fact (tests)."""
    with _LOCK:
        _KNOWN.clear()


def is_hub_id(model: str) -> bool:
    """True for ``org/name`` naming a Hub model, not a local directory or a forge: model."""
    return bool(_REPO_ID.match(model)) and not Path(model).expanduser().exists()


def _read_config(path: Path, source: str) -> CheckpointQuant | None:
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return from_config(data, source) if isinstance(data, Mapping) else None


def _hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "huggingface" / "hub"


def _cached_config(repo_id: str) -> Path | None:
    """config.json of a Hub model vLLM (or anyone) already downloaded, at its main ref."""
    repo = _hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = repo / "snapshots" / commit / "config.json"
    return path if commit and path.is_file() else None


def local_checkpoint_quant(model: str) -> CheckpointQuant | None:
    """What this host knows about ``model``'s quantization without the network, or None."""
    with _LOCK:
        known = _KNOWN.get(model)
    if known is not None:
        return known
    if is_tiny_model(model):
        # Built locally in bf16 (tiny_model.py): plain, whether built yet or not.
        return CheckpointQuant(PLAIN, PLAIN, f"{model} (built in bf16)")
    path = Path(model).expanduser()
    if path.is_dir():
        return _read_config(path / "config.json", f"config.json of {path}")
    if is_hub_id(model):
        cached = _cached_config(model)
        if cached is not None:
            return _read_config(cached, "the Hugging Face cache")
    return None


def checkpoint_gate_problem(quant: CheckpointQuant, target: Host | str) -> str | None:
    """Why a checkpoint quantized this way cannot run on ``target``, or None."""
    if not quant.quantized:
        return None
    if quant.scheme == UNKNOWN:
        return (
            f"{quant.method} checkpoints are not in pytest-forge's quantization table "
            "(awq, gptq, fp8, compressed-tensors INT4/INT8/FP8, modelopt FP8)"
        )
    return quant_unsupported_reason(target, None, quant.scheme)


def method_problem(model: str, quant: CheckpointQuant, method: str) -> str | None:
    """Why ``--quantization method`` cannot boot ``model`` (quantized as ``quant``), or None."""
    if is_no_quant(method):
        return None
    if not quant.quantized:
        if is_online_method(method):
            return None
        return (
            f"{method} needs a checkpoint already quantized with it; {model} is "
            f"{quant.describe()} ({quant.source}), so vLLM would fail to boot"
        )
    if same_scheme(quant.method, method):
        return None
    return (
        f"{model} is a pre-quantized {quant.describe()} checkpoint ({quant.source}): vLLM "
        f"refuses --quantization {method} on it; leave quant.method none (vLLM reads the "
        "scheme from the checkpoint)"
    )


def checkpoint_quant_problem(recipe: Any, space: Any = None) -> str | None:
    """Why a recipe's quantization cannot boot its checkpoint, or None.

    Known checkpoints (see :func:`local_checkpoint_quant`) are checked against the
    method; and a ``model`` the search space offers besides its default is a pre-quantized
    checkpoint by construction (quant_space.py), so it takes no --quantization: that
    holds on a resumed run too, before this process has learned anything from the Hub.
    """
    model = str(getattr(recipe, "model", "") or "")
    field, method = effective_quant_method(recipe)
    if is_no_quant(method):
        return None
    spec = getattr(space, "params", {}).get("model") if space is not None else None
    if spec is not None and model != spec.default and model in spec.values:
        return (
            f"{field}={method} would not boot: {model} is a pre-quantized checkpoint the "
            "quantization layer offers, and vLLM reads its scheme from it; keep "
            f"{field} none with it"
        )
    quant = local_checkpoint_quant(model)
    if quant is None:
        return None
    problem = method_problem(model, quant, method)
    return f"{field}={method} would not boot: {problem}" if problem else None
