"""What this host has to run vLLM on, and whether a recipe (or a quant method) fits it.

Detection asks the vendor tools (``nvidia-smi``, then ``rocm-smi``) and falls back to
the CPU; a missing, hanging or failing tool is never an error, only "not that vendor".
Visible-device variables are honoured, because vLLM only sees those devices.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "GpuInfo",
    "HostHardware",
    "backend_name",
    "comparable_hardware",
    "detect_hardware",
    "match_recipe_hardware",
    "quant_supported",
    "quant_unsupported_reason",
    "recipe_quant_problem",
]

Vendor = Literal["nvidia", "amd", "cpu"]

SMI_TIMEOUT_S = 10.0
NVIDIA_QUERY = [
    "nvidia-smi",
    "--query-gpu=name,memory.total,driver_version,compute_cap",
    "--format=csv,noheader,nounits",
]
ROCM_QUERY = [
    "rocm-smi",
    "--showproductname",
    "--showmeminfo",
    "vram",
    "--showdriverversion",
    "--json",
]

# rocm-smi reports the product name, not always the GFX target; the targets that matter
# for the quant gates (seeds/001: MI300X is CDNA3 = gfx942).
_AMD_GFX_BY_NAME = (
    ("MI325", "gfx942"),
    ("MI300", "gfx942"),
    ("MI250", "gfx90a"),
    ("MI210", "gfx90a"),
    ("MI100", "gfx908"),
)
_CDNA3_GFX = ("gfx940", "gfx941", "gfx942")
# Compute capability of the GPUs seeds/001's table names, for callers that only know a name.
_NVIDIA_SM_BY_NAME = (("H200", "9.0"), ("H100", "9.0"), ("A100", "8.0"), ("T4", "7.5"))


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_gb: float
    driver: str | None = None
    # NVIDIA: "9.0" (SM major.minor); AMD: the GFX target, e.g. "gfx942".
    compute_capability: str | None = None


@dataclass(frozen=True)
class HostHardware:
    vendor: Vendor
    gpus: list[GpuInfo] = field(default_factory=list)
    cpu_model: str = ""
    cpu_count: int = 1
    # The widest vector ISA vLLM's CPU kernels use here. Two "AMD EPYC" hosts with
    # different ISAs run different kernels: other speeds, and other greedy outputs from a
    # random-weight model whose top logits nearly tie. So it is part of the identity.
    cpu_isa: str = ""

    @property
    def gpu_type(self) -> str | None:
        """The (first visible) GPU's product name; None on a CPU-only host."""
        return self.gpus[0].name if self.gpus else None

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def memory_gb_per_gpu(self) -> float | None:
        return min(g.memory_gb for g in self.gpus) if self.gpus else None

    def describe(self) -> str:
        if self.vendor == "cpu" or not self.gpus:
            isa = f", {self.cpu_isa}" if self.cpu_isa else ""
            return f"cpu: {self.cpu_model} ({self.cpu_count} cores{isa})"
        parts: list[str] = []
        # Group identical GPUs: "NVIDIA H100 80GB HBM3 x8 (...)".
        groups: dict[tuple[str, str | None, str | None], int] = {}
        for gpu in self.gpus:
            key = (gpu.name, gpu.driver, gpu.compute_capability)
            groups[key] = groups.get(key, 0) + 1
        for (name, driver, cc), n in groups.items():
            details = []
            if driver:
                details.append(f"driver {driver}")
            if cc:
                details.append(f"sm {cc}" if self.vendor == "nvidia" else cc)
            suffix = f" ({', '.join(details)})" if details else ""
            parts.append(f"{name} x{n}{suffix}")
        return "; ".join(parts)


# -- detection ---------------------------------------------------------------------------


def _run_smi(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout


def _visible(items: list[GpuInfo], spec: str | None) -> list[GpuInfo]:
    """Apply a *_VISIBLE_DEVICES value the way the CUDA/HIP runtimes do."""
    if spec is None:
        return items
    chosen: list[GpuInfo] = []
    seen: set[int] = set()
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            break
        if token.lstrip("-").isdigit():
            index = int(token)
            # The runtimes stop at the first invalid or repeated index and ignore the rest.
            if index < 0 or index >= len(items) or index in seen:
                break
            seen.add(index)
            chosen.append(items[index])
        else:
            # A UUID or MIG id: smi's name/memory query cannot map it, but each one is a
            # device, and a host's GPUs are nearly always alike.
            if len(chosen) < len(items):
                chosen.append(items[len(chosen)])
    return chosen


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 2 or not cells[0]:
            continue
        name = cells[0]
        memory_gb = _mib_to_gb(cells[1])
        driver = cells[2] if len(cells) > 2 and _known(cells[2]) else None
        cc = cells[3] if len(cells) > 3 and _known(cells[3]) else None
        gpus.append(GpuInfo(name, memory_gb, driver, cc))
    return gpus


def _known(cell: str) -> bool:
    return bool(cell) and cell not in ("[N/A]", "N/A", "[Not Supported]")


def _mib_to_gb(cell: str) -> float:
    match = re.search(r"[\d.]+", cell)
    return round(float(match.group()) / 1024, 1) if match else 0.0


def parse_rocm_smi(text: str) -> list[GpuInfo]:
    """Parse ``rocm-smi --showproductname --showmeminfo vram --json``.

    Key spelling changed across ROCm releases ("Card series" / "Card Series", ...) and
    rocm-smi may print warnings before the JSON, so the parse is deliberately loose.
    """
    start = text.find("{")
    if start < 0:
        return []
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    driver = None
    system = _lower_keys(data.get("system", {}))
    if system:
        driver = system.get("driver version")
    cards = sorted(
        ((k, v) for k, v in data.items() if k.lower().startswith("card") and isinstance(v, dict)),
        key=lambda kv: int(re.sub(r"\D", "", kv[0]) or 0),
    )
    gpus: list[GpuInfo] = []
    for _, raw in cards:
        card = _lower_keys(raw)
        name = next(
            (
                str(card[k]).strip()
                for k in ("card series", "marketing name", "card sku", "card model")
                if _known(str(card.get(k, "")).strip())
            ),
            "AMD GPU",
        )
        memory = card.get("vram total memory (b)")
        memory_gb = round(int(memory) / 1024**3, 1) if str(memory or "").isdigit() else 0.0
        gfx = card.get("gfx version") or _gfx_from_name(name)
        gpus.append(GpuInfo(name, memory_gb, driver, str(gfx).lower() if gfx else None))
    return gpus


def _lower_keys(mapping: Any) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        return {}
    return {str(k).strip().lower(): v for k, v in mapping.items()}


def _gfx_from_name(name: str) -> str | None:
    upper = name.upper()
    return next((gfx for marker, gfx in _AMD_GFX_BY_NAME if marker in upper), None)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# Most capable first; the names are /proc/cpuinfo flags (x86) or Features (Arm).
_CPU_ISA_LEVELS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "sve", "asimd")


def cpu_isa(cpuinfo: str) -> str:
    """The best vector ISA named in a /proc/cpuinfo text, or "" when none is known."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return next((isa for isa in _CPU_ISA_LEVELS if isa in flags), "")


def _cpu_isa() -> str:
    try:
        return cpu_isa(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return ""


def _cpu_count() -> int:
    # The affinity mask is what this process (and the vLLM it starts) may use.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _detect(env: Mapping[str, str]) -> HostHardware:
    cpu_model, cpu_count, isa = _cpu_model(), _cpu_count(), _cpu_isa()
    text = _run_smi(NVIDIA_QUERY)
    if text is not None:
        gpus = _visible(parse_nvidia_smi(text), env.get("CUDA_VISIBLE_DEVICES"))
        if gpus:
            return HostHardware("nvidia", gpus, cpu_model, cpu_count, isa)
    text = _run_smi(ROCM_QUERY)
    if text is not None:
        # ROCR filters first; HIP (or CUDA, which HIP honours as an alias) indexes the rest.
        gpus = _visible(parse_rocm_smi(text), env.get("ROCR_VISIBLE_DEVICES"))
        hip = env.get("HIP_VISIBLE_DEVICES", env.get("CUDA_VISIBLE_DEVICES"))
        gpus = _visible(gpus, hip)
        if gpus:
            return HostHardware("amd", gpus, cpu_model, cpu_count, isa)
    return HostHardware("cpu", [], cpu_model, cpu_count, isa)


@functools.lru_cache(maxsize=1)
def detect_hardware() -> HostHardware:
    """This host's accelerators (memoized: the smi tools take a second or more)."""
    return _detect(os.environ)


# -- matching ----------------------------------------------------------------------------


def _get(obj: Any, name: str) -> Any:
    value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return getattr(value, "value", value)  # enums


def _gpu_name_matches(wanted: str, actual: str) -> bool:
    wanted, actual = wanted.strip().lower(), actual.strip().lower()
    return bool(wanted) and (wanted in actual or actual in wanted)


def match_recipe_hardware(recipe_hw: Any, host: HostHardware) -> str | None:
    """None when a recipe's ``hardware`` can run on ``host``, else why it cannot."""
    vendor = str(_get(recipe_hw, "vendor") or "").lower()
    if vendor and vendor != host.vendor:
        return f"recipe wants vendor {vendor}, this host is {host.vendor} ({host.describe()})"
    if host.vendor == "cpu":
        return None
    gpu_type = _get(recipe_hw, "gpu_type")
    candidates = host.gpus
    if gpu_type:
        candidates = [g for g in host.gpus if _gpu_name_matches(str(gpu_type), g.name)]
        if not candidates:
            names = sorted({g.name for g in host.gpus})
            return f"recipe wants gpu_type {gpu_type!r}, this host has {', '.join(names)}"
    count = _get(recipe_hw, "count")
    needed = int(count) if count is not None else 1
    if needed > len(candidates):
        what = f"{gpu_type!r} GPUs" if gpu_type else "GPUs"
        return f"recipe wants {needed} {what}, this host has {len(candidates)} visible"
    return None


def backend_name(host: HostHardware) -> str:
    return {"nvidia": "cuda", "amd": "rocm"}.get(host.vendor, "cpu")


# -- quantization gates (seeds/001) -------------------------------------------------------

QuantFamily = Literal["int4_awq", "int8", "fp8"]

_QUANT_FAMILIES: dict[str, QuantFamily] = {
    "awq": "int4_awq",
    "awq_marlin": "int4_awq",
    "int4_awq": "int4_awq",
    "int4": "int4_awq",
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


def _quant_family(key: str) -> QuantFamily | None:
    """The table's family of a method name; vLLM's variants (fp8_per_tensor, gptq_marlin,
    int8_per_channel_weight_only, ...) belong to the family their name says."""
    if key in _QUANT_FAMILIES:
        return _QUANT_FAMILIES[key]
    if "fp8" in key:
        return "fp8"
    if "int8" in key or "w8a8" in key:
        return "int8"
    if "awq" in key or "gptq" in key or "int4" in key:
        return "int4_awq"
    return None


def comparable_hardware(description: str) -> str:
    """What must match for two measurements to be compared: a ``describe()`` string
    without the GPU driver version and the number of GPUs the host shows (a driver update
    or a bigger runner of the same GPU type does not make a baseline meaningless)."""
    if description.startswith("cpu:"):
        return description  # cores and ISA are the hardware on a CPU
    groups = set()
    for group in description.split("; "):
        match = re.match(r"^(?P<name>.*?) x\d+(?: \((?P<details>.*)\))?$", group)
        if match is None:
            groups.add(group)
            continue
        details = [
            d for d in (match["details"] or "").split(", ") if d and not d.startswith("driver ")
        ]
        groups.add(match["name"] + (f" ({', '.join(details)})" if details else ""))
    return "; ".join(sorted(groups))


def _sm(cc: str | float | None) -> float | None:
    try:
        return float(cc) if cc is not None else None
    except (TypeError, ValueError):
        return None


def quant_unsupported_reason(
    host_or_gpu_name: HostHardware | str, compute_capability: str | float | None, method: str
) -> str | None:
    """None when ``method`` may run on that GPU, else why not.

    The gates are seeds/001's table: INT4 AWQ and INT8 on the GPUs it lists (T4 and up
    on NVIDIA, MI300X on AMD), FP8 E4M3 only on SM >= 9.0 (H100/H200) and MI300X
    (CDNA3). Nothing is allowed on CPU: vLLM's CPU backend is not what the table covers.
    """
    key = str(method or "").strip().lower()
    if key in _NO_QUANT:
        return None
    family = _quant_family(key)
    if family is None:
        # Not a family the table covers (e.g. compressed-tensors, gguf): not gated here;
        # the name itself is checked against the installed vLLM's methods.
        return None

    if isinstance(host_or_gpu_name, HostHardware):
        host = host_or_gpu_name
        if host.vendor == "cpu" or not host.gpus:
            return f"{method} needs a GPU; this host is {host.describe()}"
        name = host.gpus[0].name
        compute_capability = compute_capability or host.gpus[0].compute_capability
        vendor = host.vendor
    else:
        name = str(host_or_gpu_name)
        upper = name.upper()
        if upper.strip() == "CPU" or upper.startswith("CPU:"):
            return f"{method} needs a GPU; quantization is not gated in for CPU"
        is_amd = "AMD" in upper or "INSTINCT" in upper or re.search(r"\bMI\d", upper) is not None
        is_amd = is_amd or str(compute_capability or "").lower().startswith("gfx")
        vendor = "amd" if is_amd else "nvidia"

    if vendor == "amd":
        gfx = str(compute_capability or _gfx_from_name(name) or "").lower()
        if gfx in _CDNA3_GFX:
            return None
        return f"{method} is gated to AMD MI300X (CDNA3, gfx942); {name} is {gfx or 'unknown'}"

    sm = _sm(compute_capability)
    if sm is None:
        upper = name.upper()
        sm = _sm(next((cc for marker, cc in _NVIDIA_SM_BY_NAME if marker in upper), None))
    if sm is None:
        return f"{method}: unknown compute capability for {name}"
    needed = 9.0 if family == "fp8" else 7.5
    if sm < needed:
        return f"{method} needs SM >= {needed:g}; {name} is SM {sm:g}"
    return None


def recipe_quant_problem(
    method: str, kv_cache_quant: str, target: HostHardware | str
) -> tuple[str, str] | None:
    """(field, why) when a recipe's quantization is gated off ``target`` (a host or a GPU
    name); only FP8 KV caches are gated, other KV dtypes store in the model's precision."""
    checks = [("quant.method", method)]
    if kv_cache_quant.lower().startswith("fp8"):
        checks.append(("quant.kv_cache_quant", kv_cache_quant))
    for field_name, value in checks:
        why = quant_unsupported_reason(target, None, value)
        if why:
            return field_name, why
    return None


def quant_supported(
    host_or_gpu_name: HostHardware | str, compute_capability: str | float | None, method: str
) -> bool:
    return quant_unsupported_reason(host_or_gpu_name, compute_capability, method) is None
