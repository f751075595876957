"""``--forge-shard I/N``: which share of the collected tests this runner runs.

A job matrix of N runners each passes its own ``I/N``; together they run every test once.
The unit of the split is a test file, so a recipe (``recipes/<id>.yaml``, whose tests
share one vLLM boot and write one file back) never splits. The split depends only on the
collected test ids, so every runner of the same tree with the same selection computes the
same one, and every pytest-xdist worker too (they collect the same tests). Files are dealt
largest first to the least loaded shard (ties to the lower shard, then by name): shards
differ by at most one file's tests.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import pytest

OPTION = "--forge-shard"
INI = "forge_shard"
_SHAPE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"2/3"`` -> Shard(2, 3); a ValueError saying what is wrong otherwise."""
    match = _SHAPE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r}: expected I/N, e.g. 1/4 (shard I of N)")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise ValueError(f"{text!r}: N must be at least 1")
    if not 1 <= index <= count:
        raise ValueError(f"{text!r}: I must be between 1 and N ({count})")
    return Shard(index, count)


def shard_value(text: str) -> str:
    """The option's type: ``text`` when it is a valid ``I/N``, else a usage error naming
    the option, raised while pytest reads its command line or ini file (on the
    pytest-xdist controller too, before any worker starts)."""
    try:
        parse_shard(text)
    except ValueError as e:
        raise pytest.UsageError(f"{OPTION} (ini {INI}) {e}") from None
    return text


def shard_option(config: pytest.Config) -> Shard | None:
    """The shard asked for on the command line or in the ini file (checked by
    ``shard_value`` when pytest read it); None when not sharding."""
    given = config.getoption(INI, None)
    raw = given if given is not None else config.getini(INI)
    return None if raw in (None, "") else parse_shard(shard_value(str(raw)))


def unit_of(nodeid: str) -> str:
    """What never splits: the test's file (a recipe file holds one recipe's tests)."""
    return nodeid.split("::", 1)[0]


def assign(sizes: dict[str, int], count: int) -> dict[str, int]:
    """Each unit's shard (1-based): largest first onto the least loaded shard."""
    loads = [0] * count
    out: dict[str, int] = {}
    for unit in sorted(sizes, key=lambda u: (-sizes[u], u)):
        target = min(range(count), key=lambda i: (loads[i], i))
        loads[target] += sizes[unit]
        out[unit] = target + 1
    return out


def split(nodeids: list[str], shard: Shard) -> tuple[list[int], list[int]]:
    """Indices of ``nodeids`` this shard keeps, and those it leaves to the others."""
    units = [unit_of(n) for n in nodeids]
    owner = assign(dict(Counter(units)), shard.count)
    keep = [i for i, u in enumerate(units) if owner[u] == shard.index]
    drop = [i for i, u in enumerate(units) if owner[u] != shard.index]
    return keep, drop


def select_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest_collection_modifyitems: keep this shard's tests, deselect the rest."""
    shard = shard_option(config)
    if shard is None or shard.count == 1:
        return
    keep, drop = split([item.nodeid for item in items], shard)
    if drop:
        config.hook.pytest_deselected(items=[items[i] for i in drop])
    items[:] = [items[i] for i in keep]


def current_shard(config: pytest.Config) -> str | None:
    """``"I/N"`` for results.json when this run is a shard, else None."""
    shard = shard_option(config)
    return None if shard is None else str(shard)


__all__ = [
    "INI",
    "OPTION",
    "Shard",
    "assign",
    "current_shard",
    "parse_shard",
    "select_shard",
    "shard_option",
    "shard_value",
    "split",
    "unit_of",
]
