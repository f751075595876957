"""Reports computed from results: JUnit properties, the summary table (terminal, Markdown,
HTML), the per-metric comparison rows, the Markdown summary for $GITHUB_STEP_SUMMARY and
github-action-benchmark entries. Metric names, units and formats come from metric_registry."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pytest_forge.metric_registry import (
    ACTION_BENCHMARK,
    JUDGED_BY_NAME,
    JUNIT,
    METRICS,
    SUMMARY,
    THROUGHPUT,
)

if TYPE_CHECKING:
    from pytest_forge.results import CaseResult
    from pytest_forge.session import Unmeasured


class _PropertyHolder(Protocol):
    # A pytest.Item as far as JUnit properties go (no pytest import for that).
    user_properties: list[tuple[str, object]]


def result_properties(result: CaseResult) -> dict[str, Any]:
    """A result's JUnit properties: its headline metrics, accuracy, verdict and comparisons."""
    head = result.measurement.headline()
    props: dict[str, Any] = {spec.name: head.get(spec.name) for spec in JUNIT}
    props["accuracy"] = result.accuracy.value if result.accuracy is not None else None
    props["accuracy_scorer"] = result.accuracy.scorer if result.accuracy is not None else None
    verdict = result.verdict
    props["vllm_version"] = verdict.vllm_now
    props["verdict"] = verdict.status
    props["judged"] = verdict.judged
    props["reference"] = verdict.mode
    if verdict.baseline is not None:
        props["baseline_output_throughput"] = verdict.baseline.output_throughput
        props["baseline_vllm_version"] = verdict.baseline.measured_with.vllm
        props["change_vs_baseline"] = verdict.change_vs_baseline
    if verdict.mode == "ab":
        props["a_output_throughput"] = verdict.reference_throughput
        props["a_vllm_version"] = verdict.vllm_reference
    # Each judged metric's ratio to its reference and the interval the decision used.
    for check in verdict.checks:
        c = check.comparison
        if c is not None:
            props[f"{check.name}_ratio"] = c["ratio"]
            props[f"{check.name}_ci_low"] = c["ci_low"]
            props[f"{check.name}_ci_high"] = c["ci_high"]
            props[f"{check.name}_outcome"] = c["outcome"]
    return props


def _fmt_prop(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def record_item(item: _PropertyHolder, result: CaseResult) -> None:
    """A test's JUnit properties (written under every junit_family).

    pytest-benchmark's rounds are fed from the test's report (benchmark_bridge.py), so they
    also arrive on the pytest-xdist controller.
    """
    for key, value in result_properties(result).items():
        item.user_properties.append((key, _fmt_prop(value)))


# -- terminal summary ------------------------------------------------------------------


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def summary_rows(results: Iterable[CaseResult]) -> list[list[str]]:
    """The summary table's rows, one per result, in :data:`SUMMARY_HEADER`'s columns."""
    throughput, *latencies = SUMMARY
    accuracy = METRICS["accuracy"]
    rows = []
    for r in results:
        head = r.measurement.headline()
        rows.append(
            [
                r.recipe_id,
                r.workload,
                throughput.number(_number(head.get(throughput.name))),
                _change_cell(r, r.verdict.change_vs_baseline),
                *(spec.number(_number(head.get(spec.name))) for spec in latencies),
                accuracy.number(r.accuracy.value if r.accuracy else None),
                "RECORDED" if r.baseline_written else r.verdict.status.upper(),
            ]
        )
    return rows


def _change_cell(result: CaseResult, change: float | None) -> str:
    if result.baseline_written:
        return "new baseline"
    comparison = result.verdict.comparison()
    if comparison is not None:
        return interval_text(comparison)
    if change is not None:
        return f"{change:+.1%}"
    return "no baseline" if result.verdict.mode == "baseline" else "not compared"


def interval_text(comparison: dict[str, Any]) -> str:
    """``+3.1% [-1.2%, +7.5%]``: the change vs the reference and its confidence interval."""

    # An unknown bound (one value per side: no spread) is None in the JSON form.
    def pct(x: float | None, unknown: str) -> str:
        return unknown if x is None else f"{x - 1:+.1%}"

    low = pct(comparison["ci_low"], "-100%")
    return f"{comparison['ratio'] - 1:+.1%} [{low}, {pct(comparison['ci_high'], 'inf')}]"


COMPARISON_HEADER = ["case", "metric", "reference", "measured", "ratio [95% CI]", "tolerance", ""]


def comparison_rows(results: Iterable[CaseResult]) -> list[list[str]]:
    """One row per judged metric: the reference (baseline or A), now (B), ratio, interval."""
    rows = []
    for r in results:
        ref_word, now_word = ("A", "B") if r.verdict.mode == "ab" else ("baseline", "now")
        for check in r.verdict.checks:
            c = check.comparison
            if c is None:
                continue
            spec = JUDGED_BY_NAME[THROUGHPUT.name if check.name == "throughput" else check.name]
            if r.reference is not None:
                ref = r.reference.median(spec.name)
            else:
                values = r.verdict.baseline.values(spec.name) if r.verdict.baseline else []
                ref = statistics.median(values) if values else None

            def bound(x: float | None) -> str:
                return "inf" if x is None else f"{x:.3f}"

            rows.append(
                [
                    f"{r.recipe_id} / {r.workload}",
                    spec.name,
                    f"{ref_word} {spec.format(ref)}",
                    f"{now_word} {spec.format(r.measurement.median(spec.name))}",
                    f"{c['ratio']:.3f} [{bound(c['ci_low'])}, {bound(c['ci_high'])}]",
                    f"{c['tolerance']:.0%}",
                    str(c["outcome"]),
                ]
            )
    return rows


def judged_counts(
    results: Sequence[CaseResult], unmeasured: Sequence[Unmeasured]
) -> dict[str, int]:
    """How many selected gate tests were judged against a reference, and how many not."""
    judged = sum(1 for r in results if r.verdict.judged)
    recorded = sum(1 for r in results if r.baseline_written and not r.verdict.judged)
    not_judged = len(results) - judged - recorded + len(unmeasured)
    return {"judged": judged, "recorded": recorded, "not_judged": not_judged}


def judged_line(counts: dict[str, int], strict: bool) -> str:
    """The terminal line saying how many gate tests were judged (a warning when not strict)."""
    total = sum(counts.values())
    text = f"forge: {counts['judged']} of {total} gate test(s) judged against a reference"
    if counts["recorded"]:
        text += f", {counts['recorded']} baseline(s) recorded"
    if counts["not_judged"]:
        text += f", {counts['not_judged']} NOT judged"
        if not strict:
            text = (
                "forge: WARNING: " + text.removeprefix("forge: ") + " (they passed or skipped "
                "without a verdict; --forge-strict fails them, as it does by default under CI)"
            )
    return text


def _column(spec_name: str) -> str:
    spec = METRICS[spec_name]
    # "output tok/s", "TTFT p99 ms": the throughput column is named by its unit.
    return f"output {spec.unit}" if spec is THROUGHPUT else f"{spec.label} {spec.unit}"


SUMMARY_HEADER = [
    "recipe",
    "workload",
    _column(SUMMARY[0].name),
    "vs reference [95% CI]",
    *(_column(spec.name) for spec in SUMMARY[1:]),
    "accuracy",
    "verdict",
]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))
    return "\n".join(lines)


def versions_line(results: Sequence[CaseResult]) -> str:
    """vLLM now, and the versions the references were measured with when they differ."""
    nows = {r.verdict.vllm_now for r in results if r.verdict.vllm_now}
    thens = {r.verdict.baseline.measured_with.vllm for r in results if r.verdict.baseline}
    thens |= {r.verdict.vllm_reference for r in results if r.verdict.vllm_reference}
    now = ", ".join(sorted(nows)) or "unknown"
    if thens and thens != nows:
        return f"vLLM now: {now}; references measured with vLLM {', '.join(sorted(thens))}"
    return f"vLLM {now}"


def unmeasured_reason(entry: Unmeasured, width: int = 300) -> str:
    """The first lines of why a test measured nothing, on one line."""
    text = " ".join(line.strip() for line in entry.reason.splitlines()[:4] if line.strip())
    return text if len(text) <= width else text[: width - 3] + "..."


def markdown_summary(
    results: Sequence[CaseResult],
    unmeasured: Sequence[Unmeasured] = (),
    vllm_now: str | None = None,
) -> str:
    """The Markdown summary appended to $GITHUB_STEP_SUMMARY."""
    out = ["### pytest-forge", ""]
    counts = judged_counts(results, unmeasured)
    out += [
        f"**{counts['judged']} judged**, {counts['not_judged']} not judged"
        + (f", {counts['recorded']} recorded" if counts["recorded"] else ""),
        "",
    ]
    labels = sorted({r.verdict.reference_label for r in results if r.verdict.reference_label})
    out += [f"A/B: {label}" for label in labels] + ([""] if labels else [])
    if results:
        out += [versions_line(results), ""]
        out.append("| " + " | ".join(SUMMARY_HEADER) + " |")
        out.append("|" + "---|" * len(SUMMARY_HEADER))
        for row in summary_rows(results):
            out.append("| " + " | ".join(row) + " |")
    else:
        out.append(f"vLLM {vllm_now or 'unknown'}: no test measured anything.")
    if unmeasured:
        out += ["", "Not measured:", "", "| test | outcome | reason |", "|---|---|---|"]
        for u in unmeasured:
            reason = unmeasured_reason(u).replace("|", "\\|")
            out.append(f"| `{u.test}` | {u.outcome.upper()} | {reason} |")
    compared = comparison_rows(results)
    if compared:
        out += ["", "<details><summary>Against the reference, per metric</summary>", ""]
        out.append("| " + " | ".join(COMPARISON_HEADER) + " |")
        out.append("|" + "---|" * len(COMPARISON_HEADER))
        out += ["| " + " | ".join(row) + " |" for row in compared]
        out += ["", "</details>"]
    failures = [r for r in results if not r.verdict.passed]
    if failures:
        out += ["", "<details><summary>Failures</summary>", "", "```"]
        out += [r.verdict.failure_message() for r in failures]
        out += ["```", "</details>"]
    return "\n".join(out) + "\n"


def github_benchmark_entries(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """github-action-benchmark's custom format: throughput bigger-is-better, latency smaller."""
    entries = []
    for r in results:
        head = r.measurement.headline()
        name = f"{r.recipe_id}/{r.workload}"
        extra = f"vLLM {r.verdict.vllm_now}; repeats {head.get('repeats')}; cv {head.get('cv')}"
        for spec in ACTION_BENCHMARK:
            value = _number(head.get(spec.name))
            if value is None:
                continue
            entries.append(
                {
                    "name": f"{name} {spec.name}",
                    "unit": spec.unit,
                    "value": round(value, 4),
                    "extra": extra,
                    "biggerIsBetter": spec.higher_is_better,
                }
            )
    return entries
