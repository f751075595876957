"""`forge merge`: sharded runs' outputs combined into what one runner would have written.

Each input directory is searched (recursively) for the files a shard leaves, recognised by
their content, not their names: results.json documents, JUnit XML, pytest-benchmark JSON,
github-action-benchmark JSON (``X.smaller.json`` holds the smaller-is-better series) and
HTML reports. The output directory gets one of each kind the shards wrote. results.json,
the HTML report and the Markdown step summary are rebuilt from the shards' results by the
same sinks a pytest run writes them with (sinks.py); the other formats are combined file
by file (merge_formats.py). A test found in two shards stops the merge before anything is
written; shards of different vLLM versions, commits or splits are warned about.

Completeness: a shard run with ``--forge-hardware-only`` lists in its results.json the gate
tests it deselected because its hardware cannot run them. Each of those must have run in
some other shard (a runner of the right class); those that ran nowhere are named, added to
the merged report as not measured, and fail the merge in strict mode (``--strict``, the
default when the CI environment variable is set, as for the gate itself).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_forge import merge_formats as fmt
from pytest_forge.errors import ForgeError
from pytest_forge.fileio import atomic_write
from pytest_forge.hardware import comparable_hardware
from pytest_forge.results_json import LoadedRun, is_results_document, load_results
from pytest_forge.shard import Shard, parse_shard
from pytest_forge.sinks import OutputOptions, build_sinks, step_summary_from_env, write_all

RESULTS_JSON = "results.json"
JUNIT_XML = "forge-junit.xml"
PYTEST_BENCHMARK_JSON = "forge-benchmark.json"
ACTION_BENCHMARK_JSON = "forge-bench.json"  # and forge-bench.smaller.json beside it
REPORT_DIR = "forge-report"
_REPORT_MARK = "<title>pytest-forge report</title>"
_MAX_BYTES = 256 * 1024 * 1024  # bigger files are no shard output of ours: not read


@dataclass
class ShardFiles:
    """What the inputs hold, by kind, each with its parsed content."""

    results: list[Path] = field(default_factory=list)
    results_docs: list[dict[str, Any]] = field(default_factory=list)
    junit: list[Path] = field(default_factory=list)
    junit_roots: list[ET.Element] = field(default_factory=list)
    benchmark: list[Path] = field(default_factory=list)
    benchmark_docs: list[dict[str, Any]] = field(default_factory=list)
    bigger: list[Path] = field(default_factory=list)
    bigger_docs: list[list[Any]] = field(default_factory=list)
    smaller: list[Path] = field(default_factory=list)
    smaller_docs: list[list[Any]] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files that looked like ours, unread

    def empty(self) -> bool:
        """Nothing a shard writes was found."""
        return not (self.results or self.junit or self.benchmark or self.bigger or self.smaller)


def _walk(top: Path, exclude: Path) -> list[Path]:
    if top.is_file():
        return [top]
    if not top.is_dir():
        raise ForgeError(f"{top}: no such directory")
    found = []
    for root, dirs, files in os.walk(top):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() != exclude)
        found += [here / f for f in sorted(files)]
    return found


def _add_json(files: ShardFiles, path: Path) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        files.skipped.append(f"{path}: not readable JSON ({type(e).__name__})")
        return
    if is_results_document(data):
        files.results.append(path)
        files.results_docs.append(data)
    elif fmt.is_pytest_benchmark(data):
        files.benchmark.append(path)
        files.benchmark_docs.append(data)
    elif fmt.is_action_benchmark(data):
        smaller = fmt.is_smaller_file(path)
        (files.smaller if smaller else files.bigger).append(path)
        (files.smaller_docs if smaller else files.bigger_docs).append(data)


def _add_file(files: ShardFiles, path: Path) -> None:
    try:
        if path.is_symlink() or path.stat().st_size > _MAX_BYTES:
            return
    except OSError:
        return
    if path.suffix == ".json":
        _add_json(files, path)
    elif path.suffix == ".xml":
        root = fmt.read_junit(path)
        if root is not None:
            files.junit.append(path)
            files.junit_roots.append(root)
    elif path.name == "index.html":
        try:
            if _REPORT_MARK in path.read_text(encoding="utf-8", errors="replace"):
                files.reports.append(path)
        except OSError:
            pass


def find_shard_files(inputs: Sequence[Path], out_dir: Path) -> ShardFiles:
    """Every shard output under ``inputs``, in the order given (files sorted within each),
    leaving out ``out_dir`` (an earlier merge's output)."""
    files = ShardFiles()
    exclude = out_dir.resolve()
    for top in inputs:
        for path in _walk(Path(top), exclude):
            _add_file(files, path)
    return files


# -------------------------------------------------------------------------- checks


def duplicates(files: ShardFiles) -> list[fmt.Duplicate]:
    """Tests (or entries) that more than one shard's file holds."""
    found = fmt.find_duplicates(
        "result",
        (
            (f"{r.get('recipe')} × {r.get('workload')}", path)
            for path, doc in zip(files.results, files.results_docs, strict=True)
            for r in doc["results"]
        ),
    )
    found += fmt.find_duplicates(
        "not-measured test",
        (
            (str(u.get("test")), path)
            for path, doc in zip(files.results, files.results_docs, strict=True)
            for u in doc.get("not_measured") or []
        ),
    )
    found += fmt.find_duplicates("JUnit testcase", fmt.junit_cases(files.junit, files.junit_roots))
    found += fmt.find_duplicates(
        "pytest-benchmark", fmt.benchmark_names(files.benchmark, files.benchmark_docs)
    )
    for docs, paths in ((files.bigger_docs, files.bigger), (files.smaller_docs, files.smaller)):
        found += fmt.find_duplicates("benchmark entry", fmt.action_names(paths, docs))
    return found


def _differing(what: str, values: Mapping[str, list[Path]]) -> list[str]:
    if len(values) < 2:
        return []
    parts = [f"{value} ({', '.join(str(p) for p in paths)})" for value, paths in values.items()]
    return [f"the shards ran different {what}: {'; '.join(parts)}"]


def _shards(docs: Sequence[dict[str, Any]]) -> list[Shard]:
    """The shards the results.json documents say they are (a merged one's "1/2+2/2" too)."""
    found: set[Shard] = set()
    for doc in docs:
        for part in str(doc.get("shard") or "").split("+"):
            try:
                found.add(parse_shard(part))
            except ValueError:
                continue  # not sharded (null), or not ours to judge
    return sorted(found, key=lambda s: (s.count, s.index))


def _runner_class(doc: Mapping[str, Any]) -> str | None:
    """The hardware class a --forge-hardware-only shard ran on (its runners split that
    class's recipes among themselves); None for a shard run without it."""
    if doc.get("hardware_deselected") is None:
        return None
    return comparable_hardware(str(doc.get("hardware") or "unknown"))


def _shard_warnings(docs: Sequence[dict[str, Any]]) -> list[str]:
    """Splits that do not add up: within each runner class, one N and every I of it."""
    by_class: dict[str | None, list[dict[str, Any]]] = {}
    for doc in docs:
        by_class.setdefault(_runner_class(doc), []).append(doc)
    out = []
    for runner_class, group in by_class.items():
        on = f" on {runner_class}" if runner_class is not None else ""
        shards = _shards(group)
        counts = {s.count for s in shards}
        if len(counts) > 1:
            listed = ", ".join(map(str, shards))
            out.append(f"shards of different splits{on} ({listed}): run every shard with one N")
            continue
        if not counts:
            continue
        n = counts.pop()
        missing = [str(Shard(i, n)) for i in range(1, n + 1) if Shard(i, n) not in shards]
        if missing:
            out.append(f"shard {', '.join(missing)}{on} missing: its recipes are not in the merge")
    return out


def mismatches(files: ShardFiles) -> list[str]:
    """Shards that do not belong together: other vLLM versions, commits or splits."""
    versions: dict[str, list[Path]] = {}
    for path, doc in zip(files.results, files.results_docs, strict=True):
        if doc.get("vllm_version"):
            versions.setdefault(f"vLLM {doc['vllm_version']}", []).append(path)
    out = _differing("vLLM versions", versions)
    commits = fmt.commit_ids(files.benchmark, files.benchmark_docs)
    out += _differing("commits (pytest-benchmark commit_info)", commits)
    out += _shard_warnings(files.results_docs)
    return out + files.skipped


# -------------------------------------------------------------------------- completeness


def _entries(doc: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def not_run_anywhere(docs: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The gate tests a shard deselected for hardware (--forge-hardware-only) that no shard
    ran (as a result, or as a test that failed or skipped before measuring), in the order
    found; each with every runner's reason, distinct ones joined by "; "."""
    ran_pairs = {
        (str(r.get("recipe")), str(r.get("workload"))) for d in docs for r in _entries(d, "results")
    }
    ran_tests = set()
    for doc in docs:
        # A merged file lists what ran nowhere both ways: those did not run.
        unrun = {str(e.get("test")) for e in _entries(doc, "hardware_deselected")}
        ran_tests |= {str(u.get("test")) for u in _entries(doc, "not_measured")} - unrun
    found: dict[str, dict[str, str]] = {}
    reasons: dict[str, list[str]] = {}
    for doc in docs:
        for entry in _entries(doc, "hardware_deselected"):
            test, recipe, workload = (str(entry.get(k)) for k in ("test", "recipe", "workload"))
            if test in ran_tests or (recipe, workload) in ran_pairs:
                continue
            found.setdefault(test, {"test": test, "recipe": recipe, "workload": workload})
            reason = str(entry.get("reason") or "")
            if reason and reason not in reasons.setdefault(test, []):
                reasons[test].append(reason)
    return [{**e, "reason": "; ".join(reasons.get(t, []))} for t, e in found.items()]


def completeness_message(unrun: Sequence[Mapping[str, str]]) -> str:
    """What ``forge merge`` says about the tests no runner ran: recipe by recipe, with
    why each runner that collected it could not run it, and the fix."""
    by_recipe: dict[str, list[Mapping[str, str]]] = {}
    for entry in unrun:
        by_recipe.setdefault(entry["recipe"], []).append(entry)
    lines = [
        f"{len(unrun)} gate test(s) of {len(by_recipe)} recipe(s) ran on no runner: every "
        "shard that collected them deselected them for other hardware (--forge-hardware-only)"
    ]
    for recipe, entries in by_recipe.items():
        workloads = ", ".join(e["workload"] for e in entries)
        lines.append(f"  {recipe} ({workloads}): {entries[0]['reason'] or 'no reason given'}")
    lines.append(
        "  fix: add a runner class with that hardware to the gate's matrix (README: the GPU "
        "runner the workflows expect), or take the recipe out of the gate"
    )
    return "\n".join(lines)


def strict_default(environ: Mapping[str, str]) -> bool:
    """Strict unless told otherwise when the CI environment variable is set: the rule the
    gate's --forge-strict follows (options.py)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unrun_as_unmeasured(unrun: Sequence[Mapping[str, str]], strict: bool) -> list[Any]:
    """The tests no runner ran, as the merged report's not-measured tests: failed in strict
    mode, as one runner would have failed them, else skipped."""
    # session.py (where Unmeasured lives) brings httpx: imported only when needed.
    from pytest_forge.session import Unmeasured

    outcome = "failed" if strict else "skipped"
    return [
        Unmeasured(
            e["test"],
            outcome,
            f"not run: every runner deselected it for other hardware ({e['reason']})",
        )
        for e in unrun
    ]


# -------------------------------------------------------------------------- writing


def _write_results(
    files: ShardFiles,
    runs: Sequence[LoadedRun],
    out_dir: Path,
    environ: Mapping[str, str],
    unrun: Sequence[dict[str, str]] = (),
    strict: bool = False,
) -> list[str]:
    """results.json, the step summary and (when a shard wrote one) the HTML report, by
    the sinks a pytest run uses, fed every shard's results (and the tests no shard ran)."""
    results = [r for run in runs for r in run.results]
    results = fmt.file_order(results, lambda r: r.recipe_id)
    unmeasured = fmt.file_order(
        [u for run in runs for u in run.unmeasured] + _unrun_as_unmeasured(unrun, strict),
        lambda u: u.test.split("::", 1)[0],
    )
    hardware_only = any(d.get("hardware_deselected") is not None for d in files.results_docs)
    options = OutputOptions(
        results_json=out_dir / RESULTS_JSON,
        step_summary=step_summary_from_env(environ),
        report_dir=out_dir / REPORT_DIR if files.reports else None,
        hardware=", ".join(sorted({run.hardware for run in runs})) or "unknown",
        vllm_version=next((run.vllm_version for run in runs if run.vllm_version), None),
        shard="+".join(map(str, _shards(files.results_docs))) or None,
        hardware_deselected=tuple(unrun) if hardware_only else None,
    )
    return write_all(build_sinks(options), results, unmeasured)


def _write_json(path: Path, data: Any) -> str:
    atomic_write(path, json.dumps(data, indent=2))
    return str(path)


def _write_formats(files: ShardFiles, out_dir: Path) -> list[str]:
    written = []
    if files.junit:
        root = fmt.merge_junit(files.junit_roots)
        written.append(str(atomic_write(out_dir / JUNIT_XML, fmt.junit_text(root))))
    if files.benchmark:
        doc = fmt.merge_pytest_benchmark(files.benchmark_docs)
        written.append(_write_json(out_dir / PYTEST_BENCHMARK_JSON, doc))
    bigger = out_dir / ACTION_BENCHMARK_JSON
    if files.bigger or files.smaller:
        smaller = bigger.with_name(bigger.stem + ".smaller" + bigger.suffix)
        written.append(_write_json(bigger, fmt.merge_action_benchmark(files.bigger_docs)))
        written.append(_write_json(smaller, fmt.merge_action_benchmark(files.smaller_docs)))
    return [f"forge merge: wrote {path}" for path in written]


@dataclass
class MergeOutcome:
    """What a merge found and did: lines to print, warnings for stderr, and the errors
    that fail it (tests no runner ran, in strict mode), written all the same."""

    lines: list[str]
    warnings: list[str]
    errors: list[str] = field(default_factory=list)


def merge(
    inputs: Sequence[Path],
    out_dir: Path,
    environ: Mapping[str, str] = os.environ,
    strict: bool | None = None,
) -> MergeOutcome:
    """Combine every shard output under ``inputs`` into ``out_dir``. ForgeError when
    there is nothing to merge or a test is in two shards (nothing is written then).
    ``strict`` (None: when CI is set): tests no runner ran are errors, not warnings."""
    if any(Path(p).resolve() == out_dir.resolve() for p in inputs):
        raise ForgeError(f"--out {out_dir} is also an input: merge into another directory")
    files = find_shard_files(inputs, out_dir)
    if files.empty():
        raise ForgeError(
            f"no shard outputs (results.json, JUnit XML, benchmark JSON) under "
            f"{', '.join(str(p) for p in inputs)}"
        )
    twice = duplicates(files)
    if twice:
        shown = "\n  ".join(str(d) for d in twice[:20])
        more = f"\n  ... and {len(twice) - 20} more" if len(twice) > 20 else ""
        raise ForgeError(
            f"{len(twice)} test(s) ran in more than one shard; were the shards run with "
            "the same --forge-shard N, each input once, and does each recipe match one "
            f"runner class's hardware (name its gpu_type)?\n  {shown}{more}"
        )
    found = (
        f"forge merge: {len(files.results)} results.json, {len(files.junit)} JUnit, "
        f"{len(files.benchmark)} pytest-benchmark, {len(files.bigger) + len(files.smaller)} "
        f"github-action-benchmark file(s), {len(files.reports)} HTML report(s)"
    )
    runs = [load_results(p) for p in files.results]  # a bad one stops before any write
    strict = strict_default(environ) if strict is None else strict
    unrun = not_run_anywhere(files.results_docs)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [found, *_write_formats(files, out_dir)]
    if runs:
        lines += _write_results(files, runs, out_dir, environ, unrun, strict)
    warnings = mismatches(files)
    if not unrun:
        return MergeOutcome(lines, warnings)
    message = completeness_message(unrun)
    if strict:
        return MergeOutcome(lines, warnings, [message + "\n  (--no-strict: warn only)"])
    return MergeOutcome(lines, [*warnings, message])


__all__ = [
    "ACTION_BENCHMARK_JSON",
    "JUNIT_XML",
    "PYTEST_BENCHMARK_JSON",
    "REPORT_DIR",
    "RESULTS_JSON",
    "MergeOutcome",
    "ShardFiles",
    "completeness_message",
    "duplicates",
    "find_shard_files",
    "merge",
    "mismatches",
    "not_run_anywhere",
    "strict_default",
]
