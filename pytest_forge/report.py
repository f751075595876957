"""Reports computed from results: JUnit properties, pytest-benchmark rounds, the terminal
summary table, a Markdown summary for $GITHUB_STEP_SUMMARY, github-action-benchmark JSON,
and the live progress line."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pytest

from pytest_forge.metric_registry import JUDGED_BY_NAME, THROUGHPUT

if TYPE_CHECKING:
    from pytest_forge.bench import Progress
    from pytest_forge.pipeline import CaseResult
    from pytest_forge.session import Unmeasured

# Metrics every gate testcase carries as JUnit properties (and in pytest-benchmark extra_info).
JUNIT_METRICS = (
    "output_throughput",
    "request_throughput",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "itl_p99_ms",
    "e2el_p99_ms",
    "goodput",
    "completed",
    "failed",
    "cv",
    "repeats",
    "preemptions",
    "prefix_cache_hit_rate",
    "kv_cache_usage_max",
)


def result_properties(result: CaseResult) -> dict[str, Any]:
    head = result.measurement.headline()
    props: dict[str, Any] = {k: head.get(k) for k in JUNIT_METRICS}
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


def record_item(item: pytest.Item, result: CaseResult) -> None:
    """JUnit properties (written under every junit_family) and pytest-benchmark rounds."""
    props = result_properties(result)
    for key, value in props.items():
        item.user_properties.append((key, _fmt_prop(value)))
    _feed_pytest_benchmark(item, result, props)


def _feed_pytest_benchmark(item: pytest.Item, result: CaseResult, props: dict[str, Any]) -> None:
    """Each repeat is one round, so --benchmark-json carries the repeats and the metrics."""
    bs = getattr(item.config, "_benchmarksession", None)
    if bs is None or bs.skip or bs.disabled:
        return
    from pytest_benchmark.fixture import BenchmarkFixture

    fixture = BenchmarkFixture(
        item,
        add_stats=bs.benchmarks.append,
        logger=bs.logger,
        warner=item.warn,
        disabled=bs.disabled,
        **dict(bs.options, group=f"forge:{result.recipe_id}"),
    )
    fixture.extra_info.update({k: v for k, v in props.items() if v is not None})
    fixture.extra_info["workload"] = result.workload
    fixture.extra_info["recipe"] = result.recipe_id
    stats = fixture._make_stats(1)
    for repeat in result.measurement.repeats:
        stats.update(repeat.duration_s)


# -- terminal summary ------------------------------------------------------------------


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def summary_rows(results: Iterable[CaseResult]) -> list[list[str]]:
    rows = []
    for r in results:
        head = r.measurement.headline()
        change = r.verdict.change_vs_baseline
        rows.append(
            [
                r.recipe_id,
                r.workload,
                _num(head.get("output_throughput")),
                _change_cell(r, change),
                _num(head.get("ttft_p99_ms")),
                _num(head.get("tpot_p99_ms"), "{:.2f}"),
                _num(r.accuracy.value if r.accuracy else None, "{:.3f}"),
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


SUMMARY_HEADER = [
    "recipe",
    "workload",
    "output tok/s",
    "vs reference [95% CI]",
    "TTFT p99 ms",
    "TPOT p99 ms",
    "accuracy",
    "verdict",
]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))
    return "\n".join(lines)


def versions_line(results: list[CaseResult]) -> str:
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
    results: list[CaseResult], unmeasured: Sequence[Unmeasured] = (), vllm_now: str | None = None
) -> str:
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


def github_benchmark_entries(results: list[CaseResult]) -> list[dict[str, Any]]:
    """github-action-benchmark's custom format: throughput bigger-is-better, latency smaller."""
    entries = []
    for r in results:
        head = r.measurement.headline()
        name = f"{r.recipe_id}/{r.workload}"
        extra = f"vLLM {r.verdict.vllm_now}; repeats {head.get('repeats')}; cv {head.get('cv')}"
        for key, unit, bigger in (
            ("output_throughput", "tok/s", True),
            ("request_throughput", "req/s", True),
            ("ttft_p99_ms", "ms", False),
            ("tpot_p99_ms", "ms", False),
            ("e2el_p99_ms", "ms", False),
        ):
            value = head.get(key)
            if value is None:
                continue
            entries.append(
                {
                    "name": f"{name} {key}",
                    "unit": unit,
                    "value": round(float(value), 4),
                    "extra": extra,
                    "biggerIsBetter": bigger,
                }
            )
    return entries


def results_document(
    results: list[CaseResult],
    hardware: str,
    unmeasured: Sequence[Unmeasured] = (),
    vllm_now: str | None = None,
) -> dict[str, Any]:
    """The gate run's results.json, which ``forge compare RUN_A RUN_B`` reads."""
    from pytest_forge import __version__

    return {
        "pytest_forge": __version__,
        "vllm_version": next((r.verdict.vllm_now for r in results if r.verdict.vllm_now), None)
        or vllm_now,
        "hardware": hardware,
        **judged_counts(results, unmeasured),
        "not_measured": [asdict(u) for u in unmeasured],
        "results": [
            {
                "recipe": r.recipe_id,
                "workload": r.workload,
                "metrics": r.measurement.headline(),
                "accuracy": r.accuracy.value if r.accuracy is not None else None,
                "verdict": r.verdict.status,
                "judged": r.verdict.judged,
                "reference": r.verdict.mode,
                "reference_label": r.verdict.reference_label,
                "reference_metrics": r.reference.headline() if r.reference else None,
                "reference_vllm": r.verdict.vllm_reference,
                "comparisons": {
                    c.name: c.comparison for c in r.verdict.checks if c.comparison is not None
                },
                "baseline_vllm": r.verdict.baseline.measured_with.vllm
                if r.verdict.baseline
                else None,
            }
            for r in results
        ],
    }


# -- progress --------------------------------------------------------------------------


class ProgressPrinter:
    """A live status line on a terminal; plain, rate-limited lines in CI logs; or nothing."""

    def __init__(
        self,
        stream: Any,
        label: str,
        live: bool,
        enabled: bool,
        capman: Any = None,
        reporter: Any = None,
    ) -> None:
        self.stream = stream
        self.capman = capman
        self.reporter = reporter
        self.label = label
        self.live = live
        self.enabled = enabled
        self._last = 0.0
        self._last_phase = ""
        self._start = time.monotonic()
        self._shown = False

    def _write(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        if self.capman is not None:
            # pytest captures the test's output; the status line must reach the terminal.
            with self.capman.global_and_fixture_disabled():
                self._emit(text, force)
        else:
            self._emit(text, force)

    def _emit(self, text: str, force: bool) -> None:
        # Looked up now: while pytest captures, sys.stderr is its buffer, not the terminal.
        stream = self.stream or sys.stderr
        now = time.monotonic()
        if self.live:
            if not self._shown and self.reporter is not None:
                # A line of its own: never erase the "recipes/x.yaml .." pytest is writing.
                self.reporter.ensure_newline()
            self._shown = True
            width = shutil.get_terminal_size().columns - 1  # one row: no stale wrapped rows
            stream.write("\r\x1b[2K" + text[:width])
            stream.flush()
        elif force or now - self._last >= 30:
            # CI logs: one line per phase change, and at most one every 30 s otherwise.
            stream.write(text + "\n")
            stream.flush()
            self._last = now

    def phase(self, name: str) -> None:
        self._write(f"forge {self.label}: {name}", force=True)
        self._last_phase = name

    def update(self, p: Progress) -> None:
        phase = "warmup" if p.phase == "warmup" else f"repeat {p.repeat} of {p.repeats}"
        rate = p.output_tokens / p.elapsed_s if p.elapsed_s > 0 else 0.0
        text = f"forge {self.label}: {phase}, requests {p.done}/{p.total}, {rate:.0f} tok/s so far"
        self._write(text, force=phase != self._last_phase)
        self._last_phase = phase

    def done(self) -> None:
        if self.enabled and self.live and self._shown:
            self._write("")
            self._shown = False
            if self.reporter is not None:
                # The status line took pytest's line: make it write the file name again.
                self.reporter.currentfspath = None


def progress_printer(config: pytest.Config, label: str) -> ProgressPrinter:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    quiet = config.get_verbosity() < 0
    is_ci = bool(os.environ.get("CI"))
    live = sys.__stderr__ is not None and sys.__stderr__.isatty() and not is_ci
    enabled = reporter is not None and not quiet and (live or is_ci or config.get_verbosity() > 0)
    if hasattr(config, "workerinput"):
        enabled = False  # pytest-xdist workers share one terminal: status lines would clash
    capman = config.pluginmanager.get_plugin("capturemanager")
    return ProgressPrinter(None, label, live, enabled, capman, reporter)
