"""GPU model identity: one normalised name per product, and what each product is.

`nvidia-smi` and `rocm-smi` name one product many ways ("NVIDIA A100-SXM4-80GB",
"NVIDIA A100 80GB PCIe", "Tesla T4", "AMD Instinct MI300X OAM"), and recipes name it
shorter ("A100", "T4", "MI300X"). Two names are the same GPU only when their normalised
forms are equal: vendor and brand words, memory sizes, form factors and vGPU/MIG profiles
are dropped, nothing else. So "A10" is not "A100" or "A10G", and "L4" is neither "L40" nor
"L40S" (a substring test would confuse each pair).

The compute capability table lets `forge validate` apply the quantization gates on a
machine without the GPU; on the GPU host itself, `nvidia-smi --query-gpu=compute_cap`
wins. Source: NVIDIA, "CUDA GPU Compute Capability" (https://developer.nvidia.com/cuda-gpus)
and its legacy page (https://developer.nvidia.com/cuda-legacy-gpus); the A10G (AWS) is the
A10's GA102 at SM 8.6 and the H20/H800/A800 are export variants of H100/A100 silicon.
"""

from __future__ import annotations

import re

__all__ = [
    "AMD_GFX_BY_MODEL",
    "NVIDIA_SM_BY_MODEL",
    "amd_gfx",
    "normalise_gpu_name",
    "nvidia_compute_capability",
]

# Words that name the vendor or a brand line, not the product, when they lead the name.
_BRAND_WORDS = frozenset({"NVIDIA", "TESLA", "GEFORCE", "QUADRO", "GRID", "AMD", "INSTINCT"})
# Tokens after the model that name a memory size, package or virtual slice of the product.
_SUFFIX_TOKEN = re.compile(
    r"^(?:\d+(?:GB|G|GIB)|HBM\w*|GDDR\w*|PCIE|SXM\d*|NVL\d*|OAM|VF|GENERATION|\d+[ABCQ])$"
)
# Spellings the rules above do not reduce, mapped to the product they are.
_ALIASES = {
    "A100X": "A100",  # A100 converged accelerator (A100 + BlueField-2)
    "A30X": "A30",
    "H100 CNX": "H100",
}

# NVIDIA products by normalised name -> compute capability (SM major.minor).
NVIDIA_SM_BY_MODEL: dict[str, str] = {
    # Blackwell
    "GB300": "10.3",
    "B300": "10.3",
    "GB200": "10.0",
    "B200": "10.0",
    "B100": "10.0",
    "RTX PRO 6000 BLACKWELL SERVER EDITION": "12.0",
    "RTX PRO 6000 BLACKWELL WORKSTATION EDITION": "12.0",
    "RTX 5090": "12.0",
    "RTX 5080": "12.0",
    "RTX 5070 TI": "12.0",
    "RTX 5070": "12.0",
    # Hopper
    "GH200": "9.0",
    "H200": "9.0",
    "H100": "9.0",
    "H800": "9.0",
    "H20": "9.0",
    # Ada Lovelace
    "L40S": "8.9",
    "L40": "8.9",
    "L20": "8.9",
    "L4": "8.9",
    "L2": "8.9",
    "RTX 6000 ADA": "8.9",
    "RTX 5000 ADA": "8.9",
    "RTX 4500 ADA": "8.9",
    "RTX 4000 ADA": "8.9",
    "RTX 4000 SFF ADA": "8.9",
    "RTX 2000 ADA": "8.9",
    "RTX 4090": "8.9",
    "RTX 4090 D": "8.9",
    "RTX 4080 SUPER": "8.9",
    "RTX 4080": "8.9",
    "RTX 4070 TI SUPER": "8.9",
    "RTX 4070 TI": "8.9",
    "RTX 4070 SUPER": "8.9",
    "RTX 4070": "8.9",
    "RTX 4060 TI": "8.9",
    "RTX 4060": "8.9",
    # Ampere
    "A40": "8.6",
    "A10": "8.6",
    "A10G": "8.6",
    "A16": "8.6",
    "A2": "8.6",
    "RTX A6000": "8.6",
    "RTX A5500": "8.6",
    "RTX A5000": "8.6",
    "RTX A4500": "8.6",
    "RTX A4000": "8.6",
    "RTX A2000": "8.6",
    "RTX 3090 TI": "8.6",
    "RTX 3090": "8.6",
    "RTX 3080 TI": "8.6",
    "RTX 3080": "8.6",
    "RTX 3070 TI": "8.6",
    "RTX 3070": "8.6",
    "RTX 3060 TI": "8.6",
    "RTX 3060": "8.6",
    "A100": "8.0",
    "A800": "8.0",
    "A30": "8.0",
    # Turing ("Quadro RTX 6000" normalises to "RTX 6000", not the Ada card)
    "T4": "7.5",
    "T4G": "7.5",
    "RTX 8000": "7.5",
    "RTX 6000": "7.5",
    "RTX 5000": "7.5",
    "RTX 4000": "7.5",
    "TITAN RTX": "7.5",
    "RTX 2080 TI": "7.5",
    "RTX 2080 SUPER": "7.5",
    "RTX 2080": "7.5",
    "RTX 2070 SUPER": "7.5",
    "RTX 2070": "7.5",
    "RTX 2060 SUPER": "7.5",
    "RTX 2060": "7.5",
    "T1000": "7.5",
    "T600": "7.5",
    "T400": "7.5",
    # Volta and Pascal (below every quantization gate; listed so the reason is exact)
    "V100": "7.0",
    "V100S": "7.0",
    "TITAN V": "7.0",
    "GV100": "7.0",
    "P100": "6.0",
    "P40": "6.1",
    "P4": "6.1",
}

# AMD Instinct products by normalised name -> GFX target (rocm-smi may only name the card).
AMD_GFX_BY_MODEL: dict[str, str] = {
    "MI355X": "gfx950",
    "MI350X": "gfx950",
    "MI325X": "gfx942",
    "MI308X": "gfx942",
    "MI300X": "gfx942",
    "MI300A": "gfx942",
    "MI250X": "gfx90a",
    "MI250": "gfx90a",
    "MI210": "gfx90a",
    "MI100": "gfx908",
}


def normalise_gpu_name(name: str) -> str:
    """The product a GPU name stands for, e.g. "NVIDIA A100-SXM4-80GB" -> "A100".

    Likewise "NVIDIA H100 80GB HBM3" -> "H100", "Tesla T4" -> "T4" and "AMD Instinct
    MI300X OAM" -> "MI300X". Unknown names keep every word that is not a brand or a suffix.
    """
    tokens = [t for t in re.split(r"[\s\-_()/,]+", name.strip().upper()) if t]
    if "MIG" in tokens:  # "A100-SXM4-40GB MIG 1g.5gb": the slice's parent GPU
        tokens = tokens[: tokens.index("MIG")]
    while tokens and tokens[0] in _BRAND_WORDS:
        tokens = tokens[1:]
    kept = tokens[:1] + [t for t in tokens[1:] if not _SUFFIX_TOKEN.match(t)]
    normalised = " ".join(kept)
    return _ALIASES.get(normalised, normalised)


def nvidia_compute_capability(name: str) -> str | None:
    """The SM version ("8.6") of an NVIDIA product name, None when the table lacks it."""
    return NVIDIA_SM_BY_MODEL.get(normalise_gpu_name(name))


def amd_gfx(name: str) -> str | None:
    """The GFX target ("gfx942") of an AMD product name, None when the table lacks it."""
    return AMD_GFX_BY_MODEL.get(normalise_gpu_name(name))
