"""What a benchmark produces: per-case results, a recipe's evaluation, and their stored forms.

:class:`CaseResult` is one recipe x workload measured and judged; :class:`Evaluation` is one
recipe's server boot with every workload. ``case_to_dict``/``case_from_dict`` carry a result
from a pytest-xdist worker to the controller; :func:`baseline_from` turns a measurement into
the baseline a recipe file stores. The pipeline produces these and the tuner consumes them,
so both depend on this module and neither on the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_forge.accuracy import AccuracyResult
from pytest_forge.errors import ForgeError
from pytest_forge.metric_registry import JUDGED, THROUGHPUT
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import Baseline, MeasuredWith
from pytest_forge.verdict import Check, Verdict


@dataclass
class CaseResult:
    """One recipe x workload: its measurement, accuracy and verdict."""

    recipe_id: str
    workload: str
    measurement: Measurement
    accuracy: AccuracyResult | None
    verdict: Verdict
    baseline_written: bool = False
    notes: list[str] = field(default_factory=list)
    reference: Measurement | None = None  # A/B: side A, measured in the same rounds


@dataclass
class Evaluation:
    """One recipe through the pipeline: one server boot, every workload of the recipe."""

    measurements: dict[str, Measurement]
    verdicts: dict[str, Verdict]
    error: str | None = None  # boot failure or death, with the vLLM log tail
    # The gate's per-workload results, for the summary table (empty where no pipeline ran).
    cases: list[CaseResult] = field(default_factory=list)


def case_to_dict(result: CaseResult) -> dict[str, Any]:
    """JSON-ready form of a result, to carry it from a pytest-xdist worker to the controller."""
    v = result.verdict
    return {
        "recipe_id": result.recipe_id,
        "workload": result.workload,
        "measurement": result.measurement.to_dict(),
        "accuracy": result.accuracy.model_dump(mode="json") if result.accuracy else None,
        "verdict": {
            "checks": [asdict(c) for c in v.checks],
            "baseline": v.baseline.model_dump(mode="json") if v.baseline else None,
            "output_throughput": v.output_throughput,
            "accuracy": v.accuracy,
            "tolerance": v.tolerance,
            "vllm_now": v.vllm_now,
            "mode": v.mode,
            "reference_label": v.reference_label,
            "reference_throughput": v.reference_throughput,
            "vllm_reference": v.vllm_reference,
        },
        "notes": list(result.notes),
        "baseline_written": result.baseline_written,
        "reference": result.reference.to_dict() if result.reference is not None else None,
    }


def case_from_dict(data: dict[str, Any]) -> CaseResult:
    """The result :func:`case_to_dict` wrote."""
    vd = data["verdict"]
    verdict = Verdict(
        recipe_id=data["recipe_id"],
        workload=data["workload"],
        checks=[Check(**c) for c in vd["checks"]],
        baseline=Baseline.model_validate(vd["baseline"]) if vd["baseline"] else None,
        output_throughput=vd["output_throughput"],
        accuracy=vd["accuracy"],
        tolerance=vd["tolerance"],
        vllm_now=vd["vllm_now"],
        mode=vd.get("mode", "baseline"),
        reference_label=vd.get("reference_label"),
        reference_throughput=vd.get("reference_throughput"),
        vllm_reference=vd.get("vllm_reference"),
    )
    accuracy = AccuracyResult.model_validate(data["accuracy"]) if data["accuracy"] else None
    return CaseResult(
        data["recipe_id"],
        data["workload"],
        Measurement.from_dict(data["measurement"]),
        accuracy,
        verdict,
        baseline_written=bool(data.get("baseline_written", False)),
        notes=list(data.get("notes", [])),
        reference=Measurement.from_dict(data["reference"]) if data.get("reference") else None,
    )


def baseline_from(
    measurement: Measurement, accuracy: float | None, with_: MeasuredWith
) -> Baseline:
    """A baseline is always a measurement: medians over the repeats, never typed."""
    throughput = measurement.median(THROUGHPUT.name)
    if throughput is None:
        raise ForgeError("no output throughput was measured, so there is no baseline to record")
    return Baseline(
        output_throughput=round(throughput, 2),
        request_throughput=_round(measurement.median("request_throughput"), 4),
        ttft_p99_ms=_round(measurement.median("ttft_p99_ms"), 2),
        tpot_p99_ms=_round(measurement.median("tpot_p99_ms"), 3),
        itl_p99_ms=_round(measurement.median("itl_p99_ms"), 3),
        e2el_p99_ms=_round(measurement.median("e2el_p99_ms"), 2),
        accuracy=_round(accuracy, 4),
        goodput=_round(measurement.median("goodput"), 4),
        repeats=len(measurement.repeats),
        cv=round(measurement.cv(THROUGHPUT.name), 4),
        measured_with=with_,
        samples={
            spec.name: [round(v, 4) for v in measurement.values(spec.name)]
            for spec in JUDGED
            if measurement.values(spec.name)
        },
    )


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
