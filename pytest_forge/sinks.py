"""Where a run's results go at its end: one sink per file format, fed the same way.

Each sink receives every result (and every gate test that measured nothing), then
``finish()`` writes its file and returns the lines to print. Sinks take plain paths and
values, never a pytest.Config: the plugin (outputs.py) and ``forge merge`` build them from
:class:`OutputOptions` and drive them with :func:`write_all`, so a merged run's files are
written by the very code that writes one runner's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_forge.fileio import atomic_write
from pytest_forge.report import github_benchmark_entries, markdown_summary
from pytest_forge.results_json import results_document

if TYPE_CHECKING:
    from pytest_forge.results import CaseResult
    from pytest_forge.session import Unmeasured


class Sink(Protocol):
    """Receives a run's results, then writes one output when finished."""

    def add(self, result: CaseResult) -> None:
        """One measured recipe x workload."""

    def add_unmeasured(self, entry: Unmeasured) -> None:
        """One gate test that measured nothing (failed before a measurement, or skipped)."""

    def finish(self) -> list[str]:
        """Write the output; return the lines to print (none when nothing was written)."""
        ...


class _Collecting:
    """Keeps what it receives; subclasses write it all in finish()."""

    def __init__(self) -> None:
        self.results: list[CaseResult] = []
        self.unmeasured: list[Unmeasured] = []

    def add(self, result: CaseResult) -> None:
        """Keep ``result`` for finish()."""
        self.results.append(result)

    def add_unmeasured(self, entry: Unmeasured) -> None:
        """Keep ``entry`` for finish()."""
        self.unmeasured.append(entry)

    @property
    def ran(self) -> bool:
        """Whether any gate test ran (measured or not): else there is nothing to write."""
        return bool(self.results or self.unmeasured)


class ResultsJsonSink(_Collecting):
    """results.json, which ``forge compare`` and ``forge merge`` read."""

    def __init__(
        self,
        path: Path,
        hardware: str,
        vllm_version: str | None = None,
        shard: str | None = None,
        hardware_deselected: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.hardware = hardware
        self.vllm_version = vllm_version
        self.shard = shard
        self.hardware_deselected = hardware_deselected

    def finish(self) -> list[str]:
        """Write results.json when any gate test ran."""
        if not self.ran:
            return []
        doc = results_document(
            self.results,
            self.hardware,
            self.unmeasured,
            self.vllm_version,
            self.shard,
            self.hardware_deselected,
        )
        atomic_write(self.path, json.dumps(doc, indent=2))
        return [f"forge: results in {self.path} (compare runs with `forge compare A B`)"]


def smaller_path(path: Path) -> Path:
    """Where the smaller-is-better series go, beside ``path``: ``X.json`` -> ``X.smaller.json``."""
    return path.with_name(path.stem + ".smaller" + path.suffix)


class ActionBenchmarkSink(_Collecting):
    """github-action-benchmark's custom JSON: ``path`` and its ``.smaller`` sibling.

    The action takes one direction per file ("customBiggerIsBetter" /
    "customSmallerIsBetter"), so bigger-is-better series go to ``path`` and the others to
    :func:`smaller_path`; both are written whenever a gate test ran.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def finish(self) -> list[str]:
        """Write both files when any gate test ran."""
        if not self.ran:
            return []
        entries = github_benchmark_entries(self.results)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        bigger = [e for e in entries if e.pop("biggerIsBetter")]
        smaller = [e for e in entries if e not in bigger]
        self.path.write_text(json.dumps(bigger, indent=2))
        other = smaller_path(self.path)
        other.write_text(json.dumps(smaller, indent=2))
        return [
            f"forge: bigger-is-better benchmark JSON written to {self.path}",
            f"forge: smaller-is-better benchmark JSON written to {other}",
        ]


class StepSummarySink(_Collecting):
    """The Markdown summary, appended to a file ($GITHUB_STEP_SUMMARY)."""

    def __init__(self, path: Path, vllm_version: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.vllm_version = vllm_version

    def finish(self) -> list[str]:
        """Append the summary when any gate test ran."""
        if not self.ran:
            return []
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(markdown_summary(self.results, self.unmeasured, self.vllm_version))
        return ["forge: summary appended to $GITHUB_STEP_SUMMARY"]


class HtmlReportSink(_Collecting):
    """The HTML report (index.html and its plots), with the session's tune runs."""

    def __init__(self, report_dir: Path, tune_runs: Sequence[Path] = ()) -> None:
        super().__init__()
        self.report_dir = Path(report_dir)
        self.tune_runs = [Path(d) for d in tune_runs]

    def finish(self) -> list[str]:
        """Write the report when a gate test ran or a tune run is to be shown."""
        from pytest_forge.html_report import write_html_report  # matplotlib: only when asked

        if not (self.ran or self.tune_runs):
            return []
        path = write_html_report(self.report_dir, self.results, self.tune_runs, self.unmeasured)
        return [f"forge: HTML report written to {path}"]


@dataclass(frozen=True)
class OutputOptions:
    """Which files to write, and what the run was: everything the sinks need."""

    results_json: Path | None = None
    bench_json: Path | None = None  # github-action-benchmark; + its .smaller sibling
    step_summary: Path | None = None  # appended to
    report_dir: Path | None = None
    tune_runs: tuple[Path, ...] = ()  # shown in the HTML report
    hardware: str = "unknown"
    vllm_version: str | None = None  # when no result says which vLLM measured it
    shard: str | None = None  # --forge-shard "I/N"; a merge's "1/2+2/2"
    # --forge-hardware-only's deselected gate tests (None: off); a merge's: those no shard ran
    hardware_deselected: tuple[Mapping[str, str], ...] | None = None


def step_summary_from_env(environ: Mapping[str, str] = os.environ) -> Path | None:
    """$GITHUB_STEP_SUMMARY as a path, or None when it is unset or empty."""
    value = environ.get("GITHUB_STEP_SUMMARY")
    return Path(value) if value else None


def build_sinks(options: OutputOptions) -> list[Sink]:
    """One sink per destination ``options`` names, in the order their lines are printed."""
    sinks: list[Sink] = []
    if options.results_json is not None:
        sinks.append(
            ResultsJsonSink(
                options.results_json,
                options.hardware,
                options.vllm_version,
                options.shard,
                options.hardware_deselected,
            )
        )
    if options.bench_json is not None:
        sinks.append(ActionBenchmarkSink(options.bench_json))
    if options.step_summary is not None:
        sinks.append(StepSummarySink(options.step_summary, options.vllm_version))
    if options.report_dir is not None:
        sinks.append(HtmlReportSink(options.report_dir, options.tune_runs))
    return sinks


def write_all(
    sinks: Sequence[Sink],
    results: Sequence[CaseResult],
    unmeasured: Sequence[Unmeasured] = (),
) -> list[str]:
    """Feed every result and not-measured test to every sink, finish each; return the lines."""
    lines: list[str] = []
    for sink in sinks:
        for result in results:
            sink.add(result)
        for entry in unmeasured:
            sink.add_unmeasured(entry)
        lines += sink.finish()
    return lines
