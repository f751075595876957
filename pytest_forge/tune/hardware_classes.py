"""The playbook's hardware classes, and which one a host belongs to.

T4, A10, A100, H100 (also H200), MI300X or CPU; a GPU not known by name maps to the nearest
class by memory. Each class names a representative GPU, so the FP8 gate of the search
spaces has one source of truth (hardware.quant_supported).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pytest_forge.hardware import HostHardware

log = logging.getLogger(__name__)

HARDWARE_CLASSES: tuple[str, ...] = ("T4", "A10", "A100", "H100", "MI300X", "CPU")

# Heading spellings people naturally write for a class.
_CLASS_ALIASES = {"H100/H200": "H100", "H200": "H100", "MI300": "MI300X", "MI325X": "MI300X"}

# A representative GPU per class (name, compute capability), for the quantization gates.
CLASS_GPU: dict[str, tuple[str, str | None]] = {
    "T4": ("Tesla T4", "7.5"),
    "A10": ("NVIDIA A10", "8.6"),
    "A100": ("NVIDIA A100-SXM4-80GB", "8.0"),
    "H100": ("NVIDIA H100 80GB HBM3", "9.0"),
    "MI300X": ("AMD Instinct MI300X", "gfx942"),
}
# Nominal memory per class, for mapping a GPU we do not know by name.
_CLASS_MEMORY_GB = {"T4": 16.0, "A10": 24.0, "A100": 80.0, "H100": 80.0, "MI300X": 192.0}
_NVIDIA_CLASSES = ("T4", "A10", "A100", "H100")

# Order matters: "A100" must be tried before "A10".
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(GH200|H100|H200|H800|H20)\b", re.I), "H100"),
    (re.compile(r"\b(A100|A800)\b", re.I), "A100"),
    (re.compile(r"\bA10G?\b", re.I), "A10"),
    (re.compile(r"\bT4\b", re.I), "T4"),
    (re.compile(r"\bMI3(00|25)X?\b", re.I), "MI300X"),
)


def normalise_class(raw: str) -> str:
    """A class as a playbook heading spells it (``h200``, ```H100```) in canonical form."""
    name = raw.strip().strip("`*").strip()
    upper = name.upper()
    if upper in HARDWARE_CLASSES:
        return upper
    return _CLASS_ALIASES.get(upper, name)


def _cc_float(cc: Any) -> float | None:
    try:
        return float(cc) if cc is not None else None
    except (TypeError, ValueError):
        return None


def classify_hardware(host: HostHardware) -> tuple[str, str | None]:
    """The playbook class for a host, and a note when the GPU was not known by name."""
    if host.vendor == "cpu" or not host.gpus:
        return "CPU", None
    gpu = host.gpus[0]
    for pattern, cls in _NAME_PATTERNS:
        if pattern.search(gpu.name):
            return cls, None
    if host.vendor == "amd":
        candidates: tuple[str, ...] = ("MI300X",)
    else:
        candidates = _NVIDIA_CLASSES
    sm = _cc_float(gpu.compute_capability)

    def distance(cls: str) -> tuple[float, float]:
        # Tie-break (A100 vs H100 at 80 GB) by compute capability when known.
        cls_sm = _cc_float(CLASS_GPU[cls][1]) or 0.0
        return abs(_CLASS_MEMORY_GB[cls] - gpu.memory_gb), abs(cls_sm - sm) if sm else cls_sm

    cls = min(candidates, key=distance)
    note = (
        f"unknown GPU '{gpu.name}' ({gpu.memory_gb:g} GB): using the playbook's {cls} "
        f"search space, the nearest class by memory"
    )
    return cls, note


def hardware_class(host: HostHardware) -> str:
    """T4, A10, A100, H100 (also H200), MI300X or CPU; an unknown GPU maps by memory."""
    cls, note = classify_hardware(host)
    if note:
        log.warning(note)
    return cls


__all__ = [
    "CLASS_GPU",
    "HARDWARE_CLASSES",
    "classify_hardware",
    "hardware_class",
    "normalise_class",
]
