"""The files a run leaves at session end: results.json, benchmark JSON, the GitHub step
summary and the HTML report. The summaries themselves are computed in report.py."""

from __future__ import annotations

import json
import os

import pytest

from pytest_forge.fileio import atomic_write
from pytest_forge.html_report import write_html_report
from pytest_forge.pipeline import CaseResult
from pytest_forge.report import github_benchmark_entries, markdown_summary, results_document
from pytest_forge.session import forge_session
from pytest_forge.tune_items import tune_run_dirs


def write_outputs(config: pytest.Config, results: list[CaseResult]) -> list[str]:
    """Files the user asked for, and the run's results.json; returns lines to print."""
    lines = []
    session = forge_session(config)
    forge = session.config
    unmeasured = session.unmeasured
    ran = bool(results or unmeasured)
    if ran:
        path = session.run_dir / "results.json"
        doc = results_document(
            results, session.hardware.describe(), unmeasured, session.vllm_version
        )
        atomic_write(path, json.dumps(doc, indent=2))
        lines.append(f"forge: results in {path} (compare runs with `forge compare A B`)")
    if forge.bench_json is not None and ran:
        # github-action-benchmark splits series into "customBiggerIsBetter" /
        # "customSmallerIsBetter" tools; we write both files when both kinds exist.
        entries = github_benchmark_entries(results)
        forge.bench_json.parent.mkdir(parents=True, exist_ok=True)
        bigger = [e for e in entries if e.pop("biggerIsBetter")]
        smaller = [e for e in entries if e not in bigger]
        forge.bench_json.write_text(json.dumps(bigger, indent=2))
        lines.append(f"forge: bigger-is-better benchmark JSON written to {forge.bench_json}")
        smaller_path = forge.bench_json.with_name(
            forge.bench_json.stem + ".smaller" + forge.bench_json.suffix
        )
        smaller_path.write_text(json.dumps(smaller, indent=2))
        lines.append(f"forge: smaller-is-better benchmark JSON written to {smaller_path}")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and ran:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(markdown_summary(results, unmeasured, session.vllm_version))
        lines.append("forge: summary appended to $GITHUB_STEP_SUMMARY")
    tune_runs = tune_run_dirs(config) if forge.tune else []
    if forge.report_dir is not None and (ran or tune_runs):
        path = write_html_report(forge.report_dir, results, tune_runs, unmeasured)
        lines.append(f"forge: HTML report written to {path}")
    return lines
