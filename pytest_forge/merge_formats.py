"""Shards' files in formats other tools define, each combined into one: JUnit XML,
pytest-benchmark JSON and github-action-benchmark JSON.

Each combination keeps a shard's tests in their order and puts the shards' files in the
order of their test files, as one runner's collection would; a test in two shards is a
`Duplicate` (the caller refuses to merge), not a silent double count.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pytest_forge.errors import ForgeError

T = TypeVar("T")

# JUnit testsuite attributes that are counts: the merged suite's is their sum.
_JUNIT_COUNTS = ("tests", "errors", "failures", "skipped")


@dataclass(frozen=True)
class Duplicate:
    """One test (or benchmark entry) found in more than one shard's file."""

    what: str  # "JUnit testcase", "pytest-benchmark", ...
    key: str  # the test id or entry name
    paths: tuple[Path, ...]

    def __str__(self) -> str:
        return f"{self.what} {self.key} in {', '.join(str(p) for p in self.paths)}"


def find_duplicates(what: str, keyed: Iterable[tuple[str, Path]]) -> list[Duplicate]:
    """Keys that occur in more than one file (repeats within one file are that file's own)."""
    where: dict[str, list[Path]] = {}
    for key, path in keyed:
        paths = where.setdefault(key, [])
        if path not in paths:
            paths.append(path)
    return [Duplicate(what, key, tuple(paths)) for key, paths in where.items() if len(paths) > 1]


def file_order(items: Sequence[T], unit: Callable[[T], str]) -> list[T]:
    """``items`` sorted by their test file (stable: a shard's own order stays)."""
    return sorted(items, key=unit)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


# ------------------------------------------------------------------------------ JUnit


def is_junit(root: ET.Element) -> bool:
    """A JUnit XML document: ``<testsuites>`` or a bare ``<testsuite>``."""
    return root.tag in ("testsuites", "testsuite")


def read_junit(path: Path) -> ET.Element | None:
    """The document's root when ``path`` is JUnit XML, else None."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None
    return root if is_junit(root) else None


def _suites(root: ET.Element) -> list[ET.Element]:
    return [root] if root.tag == "testsuite" else list(root.iter("testsuite"))


def _number(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def junit_cases(paths: Sequence[Path], roots: Sequence[ET.Element]) -> list[tuple[str, Path]]:
    """(classname::name, file) of every testcase, for the duplicate check."""
    return [
        (f"{case.get('classname', '')}::{case.get('name', '')}", path)
        for path, root in zip(paths, roots, strict=True)
        for suite in _suites(root)
        for case in suite.findall("testcase")
    ]


def merge_junit(roots: Sequence[ET.Element]) -> ET.Element:
    """One ``<testsuites>`` with one ``<testsuite>``: every shard's testcases, the counts
    and times summed, the earliest timestamp, the suite properties once each."""
    if not roots:
        raise ForgeError("no JUnit XML to merge")
    suites = [suite for root in roots for suite in _suites(root)]
    first = suites[0]
    merged = ET.Element("testsuite", dict(first.attrib))
    for key in _JUNIT_COUNTS:
        if any(key in s.attrib for s in suites):
            merged.set(key, str(sum(int(_number(s.get(key))) for s in suites)))
    merged.set("time", f"{sum(_number(s.get('time')) for s in suites):.3f}")
    stamps = sorted(s.get("timestamp", "") for s in suites if s.get("timestamp"))
    if stamps:
        merged.set("timestamp", stamps[0])
    hosts = sorted({s.get("hostname", "") for s in suites} - {""})
    if hosts:
        merged.set("hostname", ",".join(hosts))
    properties = ET.SubElement(merged, "properties")
    seen: set[tuple[str, str]] = set()
    for suite in suites:
        for prop in suite.findall("properties/property"):
            pair = (prop.get("name", ""), prop.get("value", ""))
            if pair not in seen:
                seen.add(pair)
                properties.append(prop)
    if not len(properties):
        merged.remove(properties)
    cases = [case for suite in suites for case in suite.findall("testcase")]
    merged.extend(file_order(cases, lambda c: c.get("classname", "")))
    top = ET.Element("testsuites", dict(roots[0].attrib) if roots[0].tag == "testsuites" else {})
    top.append(merged)
    return top


def junit_text(root: ET.Element) -> str:
    """The XML text pytest would write (declaration, UTF-8)."""
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="utf-8"?>' + body


# ------------------------------------------------------------------- pytest-benchmark


def is_pytest_benchmark(data: Any) -> bool:
    """pytest-benchmark's ``--benchmark-json``: machine_info and a benchmarks list."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("benchmarks"), list)
        and isinstance(data.get("machine_info"), dict)
    )


def benchmark_names(
    paths: Sequence[Path], docs: Sequence[dict[str, Any]]
) -> list[tuple[str, Path]]:
    """(fullname, file) of every benchmark, for the duplicate check."""
    return [
        (str(b.get("fullname") or b.get("name")), path)
        for path, doc in zip(paths, docs, strict=True)
        for b in doc["benchmarks"]
    ]


def commit_ids(paths: Sequence[Path], docs: Sequence[dict[str, Any]]) -> dict[str, list[Path]]:
    """Which commit each shard's pytest-benchmark file says it measured."""
    out: dict[str, list[Path]] = {}
    for path, doc in zip(paths, docs, strict=True):
        commit = doc.get("commit_info")
        ident = commit.get("id") if isinstance(commit, dict) else None
        out.setdefault(str(ident), []).append(path)
    return out


def merge_pytest_benchmark(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first shard's document (machine_info, commit_info, datetime, version) with
    every shard's benchmarks."""
    if not docs:
        raise ForgeError("no pytest-benchmark JSON to merge")
    benchmarks = [b for doc in docs for b in doc["benchmarks"]]
    ordered = file_order(benchmarks, lambda b: _file_of(str(b.get("fullname", ""))))
    return {**docs[0], "benchmarks": ordered}


# ------------------------------------------------------------ github-action-benchmark


def is_action_benchmark(data: Any) -> bool:
    """github-action-benchmark's custom format: a list of {name, unit, value} entries."""
    return isinstance(data, list) and all(
        isinstance(e, dict) and {"name", "unit", "value"} <= e.keys() for e in data
    )


def is_smaller_file(path: Path) -> bool:
    """``X.smaller.json``: the smaller-is-better series beside ``X.json``."""
    return path.name.endswith(".smaller.json")


def action_names(paths: Sequence[Path], docs: Sequence[list[Any]]) -> list[tuple[str, Path]]:
    """(entry name, file) of every entry, for the duplicate check."""
    return [(str(e["name"]), path) for path, doc in zip(paths, docs, strict=True) for e in doc]


def merge_action_benchmark(docs: Sequence[list[Any]]) -> list[Any]:
    """Every shard's entries, in the order of their recipes (names are ``recipe/workload
    metric``)."""
    entries = [e for doc in docs for e in doc]
    return file_order(entries, lambda e: str(e["name"]).split("/", 1)[0])


__all__ = [
    "Duplicate",
    "action_names",
    "benchmark_names",
    "commit_ids",
    "find_duplicates",
    "is_action_benchmark",
    "is_junit",
    "is_pytest_benchmark",
    "is_smaller_file",
    "junit_cases",
    "junit_text",
    "merge_action_benchmark",
    "merge_junit",
    "merge_pytest_benchmark",
    "read_junit",
]
