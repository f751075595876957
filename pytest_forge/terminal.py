"""What pytest-forge writes on pytest's terminal: the header lines and the summary sections.

The tables and lines themselves are computed in report.py; this module decides which go
out, in which order, for a gate run and for a tune.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pytest_forge import report
from pytest_forge.endpoint import redact_text, redact_url
from pytest_forge.hardware_select import summary_line
from pytest_forge.session import ForgeSession


def header_lines(session: ForgeSession) -> list[str]:
    """The header: recipes and workloads, and what every baseline is compared against."""
    forge = session.config
    lines = [f"forge: recipes {forge.recipes_dir}, workloads {forge.workloads_dir}"]
    if forge.endpoint_url:
        lines.append(f"forge: benchmarking the running server at {redact_url(forge.endpoint_url)}")
    else:
        # What every baseline is compared against: the versions "now".
        lines.append(
            f"forge: vLLM {session.vllm_version or 'not installed'} on "
            f"{session.hardware.describe()}"
        )
    if forge.tune:
        from pytest_forge.tune_items import tune_header

        lines.append(redact_text(tune_header(session)))  # the agent spec may hold a URL
    return lines


def write_summary(
    terminal: pytest.TerminalReporter,
    config: pytest.Config,
    session: ForgeSession,
    output_lines: Sequence[str],
) -> None:
    """The forge sections of pytest's terminal summary; ``output_lines`` say which files
    the session wrote (at session finish)."""
    if session.config.tune:
        from pytest_forge.tune_items import tune_summary

        text = tune_summary(config)
        if text:
            terminal.write_sep("=", "pytest-forge tune")
            terminal.write_line(text)
    if session.results:
        _write_results(terminal, session)
    if (session.results or session.unmeasured) and not session.config.tune:
        # (A tune's rows are its winner's confirmation run, not gate tests: nothing to count.)
        counts = report.judged_counts(session.results, session.unmeasured)
        line = report.judged_line(counts, session.config.strict)
        loud = counts["not_judged"] and not session.config.strict
        terminal.write_line(line, yellow=bool(loud), bold=bool(loud))
    deselected = summary_line(config)
    if deselected:
        terminal.write_line(deselected)
    for line in output_lines:
        terminal.write_line(line)
    if session.boots:
        terminal.write_line(f"forge: {session.boots} vLLM server boot(s)")


def _write_results(terminal: pytest.TerminalReporter, session: ForgeSession) -> None:
    """The results table, with the versions measured, A/B labels and each result's notes."""
    results = session.results
    terminal.write_sep("=", "pytest-forge summary")
    terminal.write_line(report.versions_line(results))
    for label in sorted({r.verdict.reference_label for r in results if r.verdict.reference_label}):
        terminal.write_line(f"A/B: {label}")
    table = report.format_table(report.SUMMARY_HEADER, report.summary_rows(results))
    for line in table.splitlines():
        terminal.write_line(line)
    for r in results:
        for note in r.notes:
            terminal.write_line(f"forge: {note}")
    if any(r.verdict.status == "no-baseline" for r in results) and not (
        session.config.update_baselines
    ):
        terminal.write_line(
            "forge: tests without a committed baseline measured and reported only; "
            "record baselines with --forge-update-baselines, or compare A/B with "
            "--forge-ab-ref REF"
        )


__all__ = ["header_lines", "write_summary"]
