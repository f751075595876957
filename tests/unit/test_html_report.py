"""The --forge-report HTML report: PNG plots, the summary table, escaping, tune runs."""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.errors import ForgeError
from pytest_forge.html_figures import (
    ParetoPoint,
    pareto_figure,
    pareto_indices,
    throughput_figure,
)
from pytest_forge.html_report import write_html_report
from pytest_forge.tune_figures import tune_figure
from pytest_forge.verdict import Check, Verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- stand-ins for the pipeline's CaseResult contract ---------------------------------------


@dataclass
class FakeMeasuredWith:
    vllm: str


@dataclass
class FakeBaseline:
    output_throughput: float
    measured_with: FakeMeasuredWith
    ttft_p99_ms: float | None = None


@dataclass
class FakeAccuracy:
    value: float | None
    scorer: str = "exact"


@dataclass
class FakeMeasurement:
    head: dict[str, Any]

    def headline(self) -> dict[str, Any]:
        return dict(self.head)


@dataclass
class FakeResult:
    recipe_id: str
    workload: str
    measurement: FakeMeasurement
    accuracy: FakeAccuracy | None
    verdict: Verdict
    notes: list[str] = field(default_factory=list)
    baseline_written: bool = False


def case(
    recipe: str,
    workload: str,
    tok_s: float,
    e2el_ms: float | None,
    *,
    baseline: float | None = None,
    then: str = "0.31.0",
    passed: bool = True,
    accuracy: float | None = 0.99,
    tolerance: float = 0.05,
) -> FakeResult:
    head = {
        "output_throughput": tok_s,
        "ttft_p99_ms": 40.0,
        "tpot_p99_ms": 3.25,
        "e2el_p99_ms": e2el_ms,
        "cv": 0.01,
        "repeats": 3,
    }
    base = None if baseline is None else FakeBaseline(baseline, FakeMeasuredWith(then))
    checks = [Check("throughput", passed, "output_throughput measured vs baseline")]
    verdict = Verdict(
        recipe_id=recipe,
        workload=workload,
        checks=checks if base is not None else [],
        baseline=base,  # type: ignore[arg-type]
        output_throughput=tok_s,
        accuracy=accuracy,
        tolerance=tolerance,
        vllm_now="0.32.0",
    )
    acc = None if accuracy is None else FakeAccuracy(accuracy)
    return FakeResult(recipe, workload, FakeMeasurement(head), acc, verdict)


@pytest.fixture
def results() -> list[FakeResult]:
    return [
        case("tiny-llama-cpu", "chat", 120.0, 900.0, baseline=110.0),
        case("tiny-llama-cpu", "<b>rag</b>", 60.0, 1500.0, baseline=100.0, passed=False),
        case("eager $x$ & co", "chat", 90.0, 700.0, accuracy=None),
    ]


@pytest.fixture
def tune_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "001_2026-11-22T03-00-00"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")

    def head(tok: float, p99: float) -> dict[str, float]:
        return {"output_throughput": tok, "e2el_p99_ms": p99}

    records = [
        {"exp": 0, "status": "baseline", "score": 1.0, "recipe_id": "base",
         "metrics": {"chat": head(100, 900)}, "rationale": "committed recipe"},
        {"exp": 1, "status": "kept", "score": 1.12, "recipe_id": "c1",
         "metrics": {"chat": head(112, 950)}, "rationale": "max_num_seqs: 64 <script>x</script>"},
        {"exp": 2, "status": "rejected", "score": 0.93, "recipe_id": "c2",
         "metrics": {"chat": head(93, 1200)}, "rationale": "smaller batch"},
        {"exp": 3, "status": "crashed", "score": None, "recipe_id": "c3",
         "metrics": {}, "rationale": "kv cache fp8"},
        {"exp": 4, "status": "invalid", "score": None, "recipe_id": "c4", "rationale": "bad arg"},
        {"exp": 5, "status": "kept", "score": 1.2, "recipe_id": "c5",
         "metrics": {"chat": head(120, 1000)}, "rationale": "prefix caching"},
    ]  # fmt: skip
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (run / "experiments.jsonl").write_text(lines + '{"exp": 6, "sta')  # a kill mid-write
    return run


def assert_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert len(data) > 10_000, f"{path.name} is suspiciously small ({len(data)} bytes)"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


# -- Pareto front ----------------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The front's points themselves, in front order."""
    return [points[i] for i in pareto_indices(points)]


def test_pareto_front_keeps_only_undominated_points_sorted_by_latency() -> None:
    points = [
        (100.0, 50.0),
        (200.0, 80.0),
        (150.0, 40.0),  # dominated by (100, 50)
        (300.0, 80.0),  # same throughput as (200, 80), slower
        (50.0, 10.0),
        (400.0, 120.0),
        (100.0, 50.0),  # duplicate
        (100.0, 45.0),  # same latency, less throughput
        (math.nan, 500.0),  # unmeasured latency cannot be on the front
    ]
    assert pareto_front(points) == [(50.0, 10.0), (100.0, 50.0), (200.0, 80.0), (400.0, 120.0)]
    assert pareto_indices(points) == [4, 0, 1, 5]


def test_pareto_front_edge_cases() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(5.0, 1.0)]) == [(5.0, 1.0)]
    # One point better on both axes dominates all the others.
    assert pareto_front([(3.0, 1.0), (1.0, 9.0), (2.0, 5.0)]) == [(1.0, 9.0)]
    assert pareto_indices([(None, 3.0), (1.0, None), (2.0, 2.0)]) == [2]


# -- figures ---------------------------------------------------------------------------------


def test_throughput_figure_bars_and_pass_line(results: list[FakeResult]) -> None:
    fig = throughput_figure(results)  # type: ignore[arg-type]
    ax = fig.axes[0]
    assert ax.get_title() == "Output throughput: measured vs baseline"
    assert "tok/s" in ax.get_xlabel()  # horizontal bars: throughput runs along x
    lengths = sorted(round(p.get_width(), 3) for p in ax.patches)
    # Three measured bars, two baselines (the third case has none).
    assert lengths == sorted([120.0, 60.0, 90.0, 110.0, 100.0])
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert sorted(p.get_width() for p in hatched) == [100.0, 110.0]
    floors = sorted(round(seg[0][0], 6) for coll in ax.collections for seg in coll.get_segments())
    assert floors == [95.0, 104.5]  # baseline x (1 - 0.05)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("baseline" in t and "tolerance" in t for t in legend)
    assert ax.get_yticklabels()[0].get_text() == "tiny-llama-cpu / chat"
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["120.0 tok/s  +9.1%", "60.0 tok/s  -40.0%", "90.0 tok/s  no baseline"]


def test_pareto_figure_draws_each_workloads_front() -> None:
    points = [
        ParetoPoint("a", "chat", 100.0, 50.0),
        ParetoPoint("b", "chat", 200.0, 80.0),
        ParetoPoint("c", "chat", 150.0, 40.0),
        ParetoPoint("d", "rag", 500.0, 20.0),
    ]
    fig = pareto_figure(points, "p99 end-to-end latency (ms)", "Throughput vs p99 latency")
    ax = fig.axes[0]
    fronts = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()]
    assert sorted(fronts) == [([100.0, 200.0], [50.0, 80.0]), ([500.0], [20.0])]
    assert all(ln.get_drawstyle() == "steps-post" for ln in ax.get_lines())
    annotated = {t.get_text() for t in ax.texts if t.get_visible()}
    assert annotated == {"a", "b", "d"}  # "c" is dominated
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["chat", "rag"]
    assert "Pareto front" in legend[-1]
    assert ax.get_xlabel().endswith("(ms)")


def test_pareto_labels_do_not_overprint() -> None:
    # Same spot on two workloads, and a crowded front: every shown label has its own room.
    points = [
        ParetoPoint(f"recipe-with-a-long-name-{i}", "chat", 100.0 + i, 10.0 + i) for i in range(6)
    ]
    points.append(ParetoPoint("twin", "rag", 100.0, 10.0))
    fig = pareto_figure(points, "p99 end-to-end latency (ms)", "t")
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    shown = [t.get_window_extent(renderer) for t in ax.texts if t.get_visible()]
    assert len(shown) >= 2
    for i, a in enumerate(shown):
        assert ax.bbox.x0 <= a.x0 and a.x1 <= ax.bbox.x1
        assert not any(a.overlaps(b) for b in shown[i + 1 :])


def test_tune_figure_marks_statuses_and_running_best(tune_run: Path) -> None:
    from pytest_forge.tune.store import RunStore

    records = RunStore(tune_run).experiments()
    fig = tune_figure("001_x", records)
    ax = fig.axes[0]
    assert ax.get_title() == "Tune 001_x: score per experiment"
    best = next(line for line in ax.get_lines() if line.get_label() == "running best")
    assert list(best.get_ydata()) == [1.0, 1.12, 1.12, 1.12, 1.12, 1.2]
    by_label = {c.get_label(): c for c in ax.collections}
    kept = by_label["kept (or baseline)"].get_offsets()
    assert sorted(map(tuple, kept.tolist())) == [(0.0, 1.0), (1.0, 1.12), (5.0, 1.2)]
    assert by_label["rejected"].get_offsets().tolist() == [[2.0, 0.93]]
    crashed = by_label["crashed / invalid (no score)"].get_offsets()
    assert sorted(crashed[:, 0].tolist()) == [3.0, 4.0]


# -- the report --------------------------------------------------------------------------------


def test_report_writes_pngs_and_an_escaped_summary(
    tmp_path: Path, results: list[FakeResult]
) -> None:
    out = tmp_path / "report"
    index = write_html_report(out, results)  # type: ignore[arg-type]
    assert index == out / "index.html"
    page = index.read_text(encoding="utf-8")

    for png in ("throughput.png", "pareto.png"):
        width, height = assert_png(out / png)
        assert width == 1000 and 300 < height < 1000
        assert f'src="{png}"' in page

    # User-file strings are escaped, never markup.
    assert "<b>rag</b>" not in page
    assert "&lt;b&gt;rag&lt;/b&gt;" in page
    assert "eager $x$ &amp; co" in page
    assert page.count("<tr>") == 1 + len(results)
    # The rows carry the terminal summary's figures and a coloured verdict.
    assert "<td>tiny-llama-cpu</td><td>chat</td>" in page
    assert '<td class="num">+9.1%</td>' in page
    assert '<td class="num">-40.0%</td>' in page
    assert '<td class="num">no baseline</td>' in page
    assert 'class="verdict v-pass"' in page
    assert 'class="verdict v-fail"' in page
    assert 'class="verdict v-no-baseline"' in page
    assert "vLLM now: 0.32.0; baselines measured with vLLM: 0.31.0" in page
    assert "generated " in page
    assert "<h2>Failures</h2>" in page
    # Self-contained: nothing fetched from elsewhere.
    assert "http://" not in page and "https://" not in page


def test_report_includes_tune_runs(
    tmp_path: Path, results: list[FakeResult], tune_run: Path
) -> None:
    out = tmp_path / "report"
    page = write_html_report(out, results[:1], tune_runs=[tune_run]).read_text()  # type: ignore[arg-type]
    score_png = "tune-1-001_2026-11-22T03-00-00.png"
    pareto_png = "tune-1-001_2026-11-22T03-00-00-pareto.png"
    for png in (score_png, pareto_png):
        assert_png(out / png)
        assert f'src="{png}"' in page
    assert "<h2>Tune run 001_2026-11-22T03-00-00</h2>" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    # Six complete experiments; the half-written seventh line is not one.
    assert page.count('class="s-') == 6


def test_report_names_a_missing_tune_run(tmp_path: Path, results: list[FakeResult]) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ForgeError, match="nope: tune run directory not found"):
        write_html_report(tmp_path / "r", results, tune_runs=[missing])  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()  # checked before anything is written


def test_missing_matplotlib_says_how_to_install(
    tmp_path: Path, results: list[FakeResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ForgeError, match=r"pip install pytest-forge\[report\]"):
        write_html_report(tmp_path / "r", results)  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_plugin_import_does_not_import_matplotlib() -> None:
    import subprocess

    code = (
        "import sys, pytest_forge.html_report, pytest_forge.report; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
