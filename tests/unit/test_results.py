"""Results and their stored forms (results.py), and the module layering that keeps the
pipeline and the tuner from importing each other."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import pytest_forge
from pytest_forge.accuracy import AccuracyResult
from pytest_forge.errors import ForgeError
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import MeasuredWith
from pytest_forge.results import CaseResult, baseline_from, case_from_dict, case_to_dict
from pytest_forge.verdict import Check, Verdict
from tests.unit.test_tuner import fake_measurement

WITH = MeasuredWith(
    vllm="0.32.0", pytest_forge="0.1.0", hardware="test cpu", backend="vllm", date="2026-11-22"
)


def test_a_case_result_survives_the_trip_from_a_worker_to_the_controller() -> None:
    m = fake_measurement("chat", [100.0, 110.0, 105.0])
    baseline = baseline_from(m, 0.97, WITH)
    verdict = Verdict(
        "tiny",
        "chat",
        [Check("throughput", True, "ok", reference=True)],
        baseline=baseline,
        output_throughput=105.0,
        accuracy=0.97,
        vllm_now="0.32.0",
        mode="ab",
        reference_label="A = main",
        reference_throughput=101.0,
        vllm_reference="0.31.0",
    )
    accuracy = AccuracyResult(scorer="agreement", value=0.97, scored=20, failed=0)
    reference = fake_measurement("chat", [101.0, 99.0])
    result = CaseResult("tiny", "chat", m, accuracy, verdict, True, ["a note"], reference=reference)

    back = case_from_dict(json.loads(json.dumps(case_to_dict(result))))

    assert back.verdict == verdict
    assert back.accuracy == accuracy
    assert (back.notes, back.baseline_written) == (["a note"], True)
    assert back.measurement.to_dict() == m.to_dict()
    assert back.reference is not None and back.reference.to_dict() == reference.to_dict()


def test_a_baseline_is_the_measurements_medians() -> None:
    m = fake_measurement("chat", [100.0, 120.0, 110.0], p99_ms=200.0)
    baseline = baseline_from(m, 0.912345, WITH)
    assert baseline.output_throughput == 110.0
    assert baseline.e2el_p99_ms == 200.0
    assert baseline.accuracy == 0.9123
    assert baseline.repeats == 3
    assert baseline.samples["output_throughput"] == [100.0, 120.0, 110.0]
    assert baseline.measured_with == WITH


def test_no_baseline_from_a_measurement_without_throughput() -> None:
    empty = Measurement("chat", [], [], [], "0.32.0", False)
    with pytest.raises(ForgeError, match="no output throughput was measured"):
        baseline_from(empty, None, WITH)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere: at the top, in a function or
    under TYPE_CHECKING (each of these hides a cycle just as well)."""
    root = Path(pytest_forge.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = ("pytest_forge", *path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        here = todo.pop()
        if here == goal:
            return True
        if here not in seen:
            seen.add(here)
            todo.extend(graph[here])
    return False


def test_the_pipeline_results_and_the_tuner_import_no_cycle() -> None:
    graph = _import_graph()
    layered = [
        m
        for m in graph
        if m in ("pytest_forge.pipeline", "pytest_forge.results", "pytest_forge.ab")
        or m.startswith("pytest_forge.tune.")
    ]
    assert "pytest_forge.results" in layered and "pytest_forge.tune.tuner" in layered
    cycles = [(a, b) for a in layered for b in graph[a] if _reaches(graph, b, a)]
    assert cycles == []
    # The tuner takes results from results.py, never from the pipeline that makes them.
    assert not _reaches(graph, "pytest_forge.tune.tuner", "pytest_forge.pipeline")
