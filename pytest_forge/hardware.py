"""What this host has to run vLLM on, and whether a recipe (or a quant method) fits it.

Detection asks the vendor tools (`nvidia-smi`, then `rocm-smi`) and falls back to
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

from pytest_forge.gpu_models import amd_gfx, normalise_gpu_name
from pytest_forge.quant_gates import (
    effective_kv_cache_dtype,
    effective_quant_method,
    quant_supported,
    quant_unsupported_reason,
    recipe_quant_problem,
)

__all__ = [
    "GpuInfo",
    "HostHardware",
    "backend_name",
    "comparable_hardware",
    "detect_hardware",
    "effective_kv_cache_dtype",
    "effective_quant_method",
    "match_recipe_hardware",
    "normalise_gpu_name",
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
# Drivers before R510 do not know the compute_cap field and refuse the whole query; they
# are asked again without it, and the capability comes from gpu_models' table.
NVIDIA_QUERY_LEGACY = [
    "nvidia-smi",
    "--query-gpu=name,memory.total,driver_version",
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


@dataclass(frozen=True)
class GpuInfo:
    """One visible GPU as the vendor tool reports it."""

    name: str
    memory_gb: float
    driver: str | None = None
    # NVIDIA: "9.0" (SM major.minor); AMD: the GFX target, e.g. "gfx942".
    compute_capability: str | None = None


@dataclass(frozen=True)
class HostHardware:
    """This host's vendor, visible GPUs and CPU: what a measurement ran on."""

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
        """The number of visible GPUs."""
        return len(self.gpus)

    def describe(self) -> str:
        """One line naming the hardware, e.g. "NVIDIA H100 80GB HBM3 x8 (driver 550.54, sm 9.0)"."""
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


def _smi(argv: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _run_smi(argv: Sequence[str]) -> str | None:
    proc = _smi(argv)
    return proc.stdout if proc is not None and proc.returncode == 0 else None


def _nvidia_smi_text() -> str | None:
    proc = _smi(NVIDIA_QUERY)
    if proc is None:
        return None
    if proc.returncode == 0:
        return proc.stdout
    # 'Field "compute_cap" is not a valid field to query.': an old driver, not no GPU.
    if "compute_cap" in proc.stdout + proc.stderr:
        return _run_smi(NVIDIA_QUERY_LEGACY)
    return None


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
    """The GPUs in the CSV output of NVIDIA_QUERY (or NVIDIA_QUERY_LEGACY)."""
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
    """Parse `rocm-smi --showproductname --showmeminfo vram --json`.

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
        memory_gb = round(int(str(memory)) / 1024**3, 1) if str(memory or "").isdigit() else 0.0
        gfx = card.get("gfx version") or _gfx_from_name(name)
        gpus.append(GpuInfo(name, memory_gb, driver, str(gfx).lower() if gfx else None))
    return gpus


def _lower_keys(mapping: Any) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        return {}
    return {str(k).strip().lower(): v for k, v in mapping.items()}


def _gfx_from_name(name: str) -> str | None:
    return amd_gfx(name)


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
    text = _nvidia_smi_text()
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
    """Same product after normalising both names (gpu_models): "A10" is not "A100"."""
    wanted_model = normalise_gpu_name(wanted)
    return bool(wanted_model) and wanted_model == normalise_gpu_name(actual)


def match_recipe_hardware(recipe_hw: Any, host: HostHardware) -> str | None:
    """None when a recipe's `hardware` can run on `host`, else why it cannot."""
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
            names = sorted({f"{g.name} ({normalise_gpu_name(g.name)})" for g in host.gpus})
            return (
                f"recipe wants gpu_type {gpu_type!r} ({normalise_gpu_name(str(gpu_type))}), "
                f"this host has {', '.join(names)}"
            )
    count = _get(recipe_hw, "count")
    needed = int(count) if count is not None else 1
    if needed > len(candidates):
        what = f"{gpu_type!r} GPUs" if gpu_type else "GPUs"
        return f"recipe wants {needed} {what}, this host has {len(candidates)} visible"
    return None


def backend_name(host: HostHardware) -> str:
    """The name of the host's compute backend: "cuda", "rocm" or "cpu"."""
    return {"nvidia": "cuda", "amd": "rocm"}.get(host.vendor, "cpu")


def comparable_hardware(description: str) -> str:
    """What must match for two measurements to be compared, from a `describe()` string.

    The GPU driver version and the number of GPUs the host shows are dropped: a driver
    update or a bigger runner of the same GPU type does not make a baseline meaningless.
    """
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
