"""The output sinks and results.json read back: what `forge merge` rebuilds from shards
must be what one runner writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_forge.accuracy import AccuracyResult
from pytest_forge.errors import ForgeError
from pytest_forge.metric_registry import ACTION_BENCHMARK, HEADLINE, JUNIT
from pytest_forge.metrics import Measurement, RepeatSummary
from pytest_forge.recipe import MeasuredWith
from pytest_forge.report import github_benchmark_entries, markdown_summary, result_properties
from pytest_forge.results import CaseResult, baseline_from
from pytest_forge.results_json import is_results_document, load_results, results_document
from pytest_forge.session import Unmeasured
from pytest_forge.sinks import (
    ActionBenchmarkSink,
    HtmlReportSink,
    OutputOptions,
    ResultsJsonSink,
    StepSummarySink,
    build_sinks,
    step_summary_from_env,
    write_all,
)
from pytest_forge.verdict import judge

WITH = MeasuredWith(
    vllm="0.31.0", pytest_forge="0.1.0", hardware="cpu", backend="cpu", date="2026-01-01"
)


def _measurement(workload: str, tok_s: list[float]) -> Measurement:
    repeats = [
        RepeatSummary(
            completed=10,
            failed=0,
            duration_s=2.0 + i / 10,
            total_input_tokens=100,
            total_output_tokens=int(t * 2),
            request_throughput=5.0 + i / 100,
            output_throughput=t,
            total_token_throughput=t + 50,
            goodput=None,
            ttft_p50_ms=20.0 + i,
            ttft_p99_ms=40.0 + i,
            tpot_p50_ms=3.0,
            tpot_p99_ms=3.25 + i / 10,
            itl_p50_ms=3.0,
            itl_p99_ms=4.0,
            e2el_p50_ms=500.0,
            e2el_p99_ms=900.0 + i,
        )
        for i, t in enumerate(tok_s)
    ]
    return Measurement(workload, repeats, [], [None] * len(repeats), "0.32.0", True)


def _case(recipe: str, workload: str, tok_s: list[float], base: list[float] | None) -> CaseResult:
    m = _measurement(workload, tok_s)
    baseline = None if base is None else baseline_from(_measurement(workload, base), 0.99, WITH)
    accuracy = AccuracyResult(scorer="exact", value=0.98, scored=10, failed=0)
    verdict = judge(
        recipe,
        workload,
        m,
        accuracy,
        baseline=baseline,
        accuracy_floor=0.9,
        tolerance=None,
        slo=None,
        vllm_now="0.32.0",
    )
    return CaseResult(recipe, workload, m, accuracy, verdict, notes=["a note"])


@pytest.fixture
def results() -> list[CaseResult]:
    return [
        _case("alpha", "chat", [100.0, 101.0, 99.0], [100.0, 100.5, 99.5]),  # pass
        _case("alpha", "rag", [60.0, 61.0, 59.0], [100.0, 100.5, 99.5]),  # fail
        _case("beta", "chat", [90.0, 91.0, 89.0], None),  # no baseline
    ]


UNMEASURED = [Unmeasured("recipes/gamma.yaml::chat", "failed", "boot failed: out of memory")]


def _options(out: Path, summary: Path) -> OutputOptions:
    return OutputOptions(
        results_json=out / "results.json",
        bench_json=out / "forge-bench.json",
        step_summary=summary,
        report_dir=out / "report",
        hardware="cpu (4 cores)",
        vllm_version="0.32.0",
    )


def test_every_sink_writes_and_says_so(tmp_path: Path, results: list[CaseResult]) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier\n")
    lines = write_all(build_sinks(_options(tmp_path, summary)), results, UNMEASURED)
    words = ["results", "bigger-is-better", "smaller-is-better", "summary", "HTML"]
    assert [line.split(" ")[1] for line in lines] == words
    assert (tmp_path / "forge-bench.json").is_file()
    assert (tmp_path / "forge-bench.smaller.json").is_file()
    assert summary.read_text().startswith("earlier\n### pytest-forge")
    assert (tmp_path / "report" / "index.html").is_file()
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["hardware"] == "cpu (4 cores)"
    assert doc["judged"] == 2 and doc["not_judged"] == 2


def test_nothing_ran_nothing_written(tmp_path: Path) -> None:
    assert write_all(build_sinks(_options(tmp_path, tmp_path / "s.md")), [], []) == []
    assert list(tmp_path.iterdir()) == []


def test_only_the_destinations_asked_for() -> None:
    sinks = build_sinks(OutputOptions(bench_json=Path("b.json")))
    assert [type(s) for s in sinks] == [ActionBenchmarkSink]
    sinks = build_sinks(
        OutputOptions(results_json=Path("r.json"), step_summary=Path("s"), report_dir=Path("d"))
    )
    assert [type(s) for s in sinks] == [ResultsJsonSink, StepSummarySink, HtmlReportSink]


def test_step_summary_from_env() -> None:
    assert step_summary_from_env({"GITHUB_STEP_SUMMARY": "/x/s.md"}) == Path("/x/s.md")
    assert step_summary_from_env({"GITHUB_STEP_SUMMARY": ""}) is None
    assert step_summary_from_env({}) is None


def test_results_json_read_back_rebuilds_every_output(
    tmp_path: Path, results: list[CaseResult]
) -> None:
    """What `forge merge` does with one shard: the files come out identical."""
    one, again = tmp_path / "one", tmp_path / "again"
    write_all(build_sinks(_options(one, tmp_path / "one.md")), results, UNMEASURED)
    run = load_results(one)  # the directory, or the file itself
    assert run.hardware == "cpu (4 cores)" and run.vllm_version == "0.32.0"
    assert run.unmeasured == UNMEASURED
    assert [r.verdict.status for r in run.results] == ["pass", "fail", "no-baseline"]
    options = _options(again, tmp_path / "again.md")
    write_all(build_sinks(options), run.results, run.unmeasured)
    for name in ("results.json", "forge-bench.json", "forge-bench.smaller.json"):
        assert (again / name).read_text() == (one / name).read_text(), name
    assert (tmp_path / "again.md").read_text() == (tmp_path / "one.md").read_text()

    def page(d: Path) -> str:
        return re.sub(r"generated \S+", "", (d / "report" / "index.html").read_text())

    assert page(again) == page(one)
    assert [result_properties(r) for r in run.results] == [result_properties(r) for r in results]


def test_results_json_keeps_its_summary_fields(results: list[CaseResult]) -> None:
    doc = results_document(results, "cpu", UNMEASURED, "0.32.0")
    entry = doc["results"][0]
    assert list(entry) == [
        "recipe",
        "workload",
        "metrics",
        "accuracy",
        "verdict",
        "judged",
        "reference",
        "reference_label",
        "reference_metrics",
        "reference_vllm",
        "comparisons",
        "baseline_vllm",
        "case",
    ]
    assert list(entry["metrics"]) == [spec.name for spec in HEADLINE]
    assert is_results_document(doc)
    assert not is_results_document({"results": []}) and not is_results_document([])


def test_load_results_refuses_what_it_cannot_rebuild(
    tmp_path: Path, results: list[CaseResult]
) -> None:
    doc = results_document(results, "cpu")
    del doc["results"][0]["case"]  # a results.json from before it carried whole results
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ForgeError, match=r"results\[0\] has no 'case'"):
        load_results(path)
    path.write_text('{"benchmarks": []}')
    with pytest.raises(ForgeError, match=r"not a pytest-forge results\.json"):
        load_results(path)
    path.write_text("{")
    with pytest.raises(ForgeError, match="not valid JSON"):
        load_results(path)
    with pytest.raises(ForgeError, match="cannot read"):
        load_results(tmp_path / "missing")


def test_outputs_read_the_metric_registry(results: list[CaseResult]) -> None:
    props = result_properties(results[0])
    assert list(props)[: len(JUNIT)] == [spec.name for spec in JUNIT]
    entries = github_benchmark_entries(results[:1])
    assert [(e["name"].split(" ")[1], e["unit"], e["biggerIsBetter"]) for e in entries] == [
        (spec.name, spec.unit, spec.higher_is_better) for spec in ACTION_BENCHMARK
    ]
    assert [e["unit"] for e in entries] == ["tok/s", "req/s", "ms", "ms", "ms"]
    md = markdown_summary(results, UNMEASURED)
    header = "| recipe | workload | output tok/s | vs reference [95% CI] | TTFT p99 ms |"
    assert header in md
    assert "| alpha | chat | 100.0 | -0.0% [-1.8%, +1.8%] | 41.0 | 3.35 | 0.980 | PASS |" in md
