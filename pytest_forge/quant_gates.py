"""Quantization gates: whether a method (or a recipe's quantization) may run on a GPU.

The gates are seeds/001's table brought in line with vLLM's own quantization support
matrix; they take either a detected host (`hardware.HostHardware`) or a GPU's name, so
`forge validate` can apply them on a machine without that GPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from pytest_forge.gpu_models import amd_gfx, normalise_gpu_name, nvidia_compute_capability

__all__ = [
    "ONLINE_METHODS",
    "effective_kv_cache_dtype",
    "effective_quant_method",
    "is_no_quant",
    "is_online_method",
    "quant_supported",
    "quant_unsupported_reason",
    "recipe_quant_problem",
    "same_scheme",
]

_CDNA3_GFX = ("gfx940", "gfx941", "gfx942")


class _Gpu(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def compute_capability(self) -> str | None: ...


class Host(Protocol):
    """What the gates read of `hardware.HostHardware`."""

    @property
    def vendor(self) -> str: ...
    @property
    def gpus(self) -> Sequence[_Gpu]: ...
    def describe(self) -> str: ...


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


# -- quantization gates (seeds/001, vLLM's support matrix) --------------------------------

QuantFamily = Literal["int4", "int8", "fp8"]

_QUANT_FAMILIES: dict[str, QuantFamily] = {
    "awq": "int4",
    "awq_marlin": "int4",
    "int4_awq": "int4",
    "int4": "int4",
    "int8": "int8",
    "w8a8": "int8",
    "w8a8_int8": "int8",
    "int8_w8a8": "int8",
    "fp8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8-e4m3": "fp8",
    "fp8_e4m3fn": "fp8",
    "ptpc_fp8": "fp8",
}
_NO_QUANT = ("none", "auto", "", "bf16", "bfloat16", "fp16", "float16")
_NO_KV_QUANT = ("none", "auto", "")

# The methods vLLM applies to a plain BF16/FP16 checkpoint while loading it ("online"
# quantization). Every other method (awq, gptq, compressed-tensors, modelopt, ...) reads
# weights a quantization tool already wrote: on a plain checkpoint vLLM fails to boot, and
# on a checkpoint quantized another way it refuses the mismatch.
ONLINE_METHODS: tuple[str, ...] = ("fp8", "ptpc_fp8")


def is_no_quant(method: str) -> bool:
    """True for the values that pass no --quantization (none, auto, the plain dtypes)."""
    return str(method or "").strip().lower() in _NO_QUANT


def is_online_method(method: str) -> bool:
    """True when vLLM can quantize a plain checkpoint with ``method`` at load time."""
    return str(method or "").strip().lower() in ONLINE_METHODS


def _scheme_key(method: str) -> str:
    key = str(method or "").strip().lower().replace("_", "-")
    # vLLM's Marlin kernels are another way to run the same checkpoints.
    for suffix in ("-marlin-24", "-marlin"):
        key = key.removesuffix(suffix)
    return key


def same_scheme(checkpoint_method: str, method: str) -> bool:
    """Whether ``--quantization method`` may run a checkpoint quantized with
    ``checkpoint_method`` (awq_marlin runs an awq checkpoint; fp8 an fp8 one)."""
    return _scheme_key(checkpoint_method) == _scheme_key(method)


# The lowest NVIDIA compute capability per family, from vLLM's quantization support matrix
# (https://docs.vllm.ai/en/latest/features/quantization/, "Supported Hardware": Turing =
# SM 7.5, Ampere 8.0/8.6, Ada 8.9, Hopper 9.0): AWQ, GPTQ/Marlin INT4 and INT8 W8A8 run from
# Turing on; FP8 W8A8 from Ada on (the FP8 W8A8 page: "FP8 computation is supported on NVIDIA
# GPUs with compute capability >= 8.9"). Below 8.9 vLLM would run an FP8 checkpoint as
# weight-only FP8 Marlin, which is not what an fp8 recipe measures, so it stays refused as in
# seeds/001's table. FP8 KV caches take the FP8 gate as well.
_MIN_SM: dict[QuantFamily, tuple[float, str]] = {
    "int4": (7.5, "SM >= 7.5 (Turing and newer)"),
    "int8": (7.5, "SM >= 7.5 (Turing and newer)"),
    "fp8": (8.9, "SM >= 9.0 (Hopper and newer) or 8.9 (Ada Lovelace) for FP8 W8A8"),
}


def _quant_family(key: str) -> QuantFamily | None:
    """The table's family of a method name.

    vLLM's variants (fp8_per_tensor, gptq_marlin, int8_per_channel_weight_only, ...)
    belong to the family their name says.
    """
    if key in _QUANT_FAMILIES:
        return _QUANT_FAMILIES[key]
    if "fp8" in key:
        return "fp8"
    if "int8" in key or "w8a8" in key:
        return "int8"
    if "awq" in key or "gptq" in key or "int4" in key:
        return "int4"
    return None


def _sm(cc: str | float | None) -> float | None:
    try:
        return float(cc) if cc is not None else None
    except (TypeError, ValueError):
        return None


def _is_amd_name(name: str, compute_capability: str | float | None) -> bool:
    if amd_gfx(name) is not None or str(compute_capability or "").lower().startswith("gfx"):
        return True
    upper = name.upper()
    return "AMD" in upper or "INSTINCT" in upper or re.search(r"\bMI\d", upper) is not None


def quant_unsupported_reason(
    host_or_gpu_name: Host | str, compute_capability: str | float | None, method: str
) -> str | None:
    """None when `method` may run on that GPU, else why not.

    NVIDIA: the minimum compute capability of the method's family (`_MIN_SM`), taken
    from `compute_capability`, else what nvidia-smi reported, else gpu_models' table.
    AMD: seeds/001 gates quantization to MI300X-class CDNA3 (gfx94x). Nothing is allowed on
    CPU: vLLM's CPU backend is not what the table covers.
    """
    key = str(method or "").strip().lower()
    if key in _NO_QUANT:
        return None
    family = _quant_family(key)
    if family is None:
        # Not a family the table covers (e.g. compressed-tensors, gguf): not gated here;
        # the name itself is checked against the installed vLLM's methods.
        return None

    if not isinstance(host_or_gpu_name, str):
        host = host_or_gpu_name
        if host.vendor == "cpu" or not host.gpus:
            return f"{method} needs a GPU; this host is {host.describe()}"
        name = host.gpus[0].name
        compute_capability = compute_capability or host.gpus[0].compute_capability
        vendor = host.vendor
    else:
        name = host_or_gpu_name
        upper = name.upper()
        if upper.strip() == "CPU" or upper.startswith("CPU:"):
            return f"{method} needs a GPU; quantization is not gated in for CPU"
        vendor = "amd" if _is_amd_name(name, compute_capability) else "nvidia"

    if vendor == "amd":
        gfx = str(compute_capability or amd_gfx(name) or "").lower()
        if gfx in _CDNA3_GFX:
            return None
        return f"{method} is gated to AMD MI300X (CDNA3, gfx942); {name} is {gfx or 'unknown'}"

    cc = str(compute_capability) if _sm(compute_capability) is not None else None
    cc = cc or nvidia_compute_capability(name)
    sm = _sm(cc)
    if sm is None:
        return (
            f"{method}: unknown compute capability for {name} (model "
            f"{normalise_gpu_name(name)!r} is not in pytest_forge.gpu_models' table and no "
            "nvidia-smi reported it): name a known GPU model or validate on the GPU host"
        )
    needed, what = _MIN_SM[family]
    if sm < needed:
        return f"{method} needs {what}; {name} is SM {cc}"
    return None


def effective_quant_method(recipe: Any) -> tuple[str, str]:
    """(field, value) of the quantization a recipe's vLLM runs with.

    That is `quant.method`, or a `--quantization` the recipe passes as
    `config.quantization` instead.
    """
    method = str(_get(_get(recipe, "quant"), "method") or "none")
    if method.strip().lower() not in _NO_QUANT:
        return "quant.method", method
    config = _get(recipe, "config")
    raw = config.get("quantization") if isinstance(config, Mapping) else None
    if raw is not None and str(raw).strip().lower() not in _NO_QUANT:
        return "config.quantization", str(raw)
    return "quant.method", method


def effective_kv_cache_dtype(recipe: Any) -> tuple[str, str]:
    """(field, value) of the KV-cache dtype a recipe's vLLM runs with.

    That is `quant.kv_cache_quant`, or `config.kv_cache_dtype` (both become
    --kv-cache-dtype), else ("quant.kv_cache_quant", "auto").
    """
    kv = str(_get(_get(recipe, "quant"), "kv_cache_quant") or "none")
    if kv.strip().lower() not in _NO_KV_QUANT:
        return "quant.kv_cache_quant", kv
    config = _get(recipe, "config")
    raw = config.get("kv_cache_dtype") if isinstance(config, Mapping) else None
    if raw is not None and str(raw).strip().lower() not in _NO_KV_QUANT:
        return "config.kv_cache_dtype", str(raw)
    return "quant.kv_cache_quant", "auto"


def recipe_quant_problem(recipe: Any, target: Host | str) -> tuple[str, str] | None:
    """(field, why) when the quantization a recipe runs with is gated off `target`.

    `target` is a host or a GPU name. Takes the whole recipe so that a --quantization or
    --kv-cache-dtype set under `config:` is gated like the `quant:` section. Only FP8 KV
    caches are gated; other KV dtypes store in the model's precision or are vLLM's own
    checks.
    """
    field_name, method = effective_quant_method(recipe)
    why = quant_unsupported_reason(target, None, method)
    if why:
        return field_name, why
    field_name, kv = effective_kv_cache_dtype(recipe)
    if kv.strip().lower().startswith("fp8"):
        why = quant_unsupported_reason(target, None, kv)
        if why:
            return field_name, why
    return None


def quant_supported(
    host_or_gpu_name: Host | str, compute_capability: str | float | None, method: str
) -> bool:
    """True when `method` may run on that GPU (see quant_unsupported_reason)."""
    return quant_unsupported_reason(host_or_gpu_name, compute_capability, method) is None
