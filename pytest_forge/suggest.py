"""Nearest-name suggestions for a misspelled key, flag or value: the one place difflib decides.

Every "did you mean" in pytest-forge (recipe keys, vLLM args and CompilationConfig fields,
quantization names, latency metrics, workload keys, AIM flags) comes from :func:`nearest`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

# difflib's own default: how alike (0..1) a candidate must be to be suggested.
DEFAULT_CUTOFF = 0.6


def nearest(
    name: str,
    candidates: Iterable[str],
    *,
    renamed: Mapping[str, str] | None = None,
    cutoff: float = DEFAULT_CUTOFF,
) -> str | None:
    """The candidate closest to ``name``, or None when none is alike enough.

    ``renamed`` maps old names to their successors where the two spell nothing alike (so
    difflib would suggest something unrelated); a successor is suggested only when it is
    one of the candidates.
    """
    pool = list(candidates)
    if name in pool:
        return name
    successor = (renamed or {}).get(name)
    if successor is not None and successor in pool:
        return successor
    near = difflib.get_close_matches(name, pool, n=1, cutoff=cutoff)
    return near[0] if near else None


def name_hint(near: str | None) -> str:
    """The tail of an unknown-name message: ``nearest valid name: 'x'`` or ``no close match``."""
    return f"nearest valid name: '{near}'" if near else "no close match"
