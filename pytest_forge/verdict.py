"""Verdict: a Measurement judged against the committed baseline, floors and SLOs.

Rules (DESIGN.md): accuracy >= floor; median output throughput >= baseline x (1 - tolerance);
every configured SLO holds; no failed requests. Without a committed baseline the throughput
check is not made: the verdict says so and invents nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pytest_forge.slo import SLO

if TYPE_CHECKING:
    from pytest_forge.accuracy import AccuracyResult
    from pytest_forge.metrics import Measurement
    from pytest_forge.recipe import Baseline

DEFAULT_TOLERANCE = 0.05

Status = Literal["pass", "fail", "no-baseline"]


@dataclass(frozen=True)
class Check:
    name: str  # "throughput", "accuracy", "slo.ttft_p99_ms", "requests"
    passed: bool
    message: str


@dataclass
class Verdict:
    recipe_id: str
    workload: str
    checks: list[Check] = field(default_factory=list)
    baseline: Baseline | None = None
    output_throughput: float | None = None
    accuracy: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    vllm_now: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def status(self) -> Status:
        if not self.passed:
            return "fail"
        return "pass" if self.baseline is not None else "no-baseline"

    @property
    def floors_hold(self) -> bool:
        """Accuracy, SLOs and request failures: what a tuning candidate must keep."""
        return all(c.passed for c in self.checks if c.name != "throughput")

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def change_vs_baseline(self) -> float | None:
        if self.baseline is None or self.output_throughput is None:
            return None
        if self.baseline.output_throughput <= 0:
            return None
        return self.output_throughput / self.baseline.output_throughput - 1.0

    @property
    def versions(self) -> str:
        """vLLM versions then (baseline) and now, for every message and summary line."""
        then = self.baseline.measured_with.vllm if self.baseline is not None else None
        now = self.vllm_now or "unknown"
        if then is None:
            return f"vLLM {now}"
        if then == now:
            return f"vLLM {now}"
        return f"vLLM {then} (baseline) -> {now} (now)"

    def failure_message(self) -> str:
        lines = [f"{self.recipe_id} x {self.workload}: {self.versions}"]
        lines += [f"  {c.name}: {c.message}" for c in self.failures]
        return "\n".join(lines)

    def summary_message(self) -> str:
        lines = [f"{self.recipe_id} x {self.workload}: {self.status} ({self.versions})"]
        lines += [f"  {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.message}" for c in self.checks]
        return "\n".join(lines)


def judge(
    recipe_id: str,
    workload: str,
    measurement: Measurement,
    accuracy: AccuracyResult | None,
    *,
    baseline: Baseline | None,
    accuracy_floor: float | None,
    tolerance: float | None,
    slo: SLO | None,
    vllm_now: str | None,
) -> Verdict:
    tol = DEFAULT_TOLERANCE if tolerance is None else tolerance
    throughput = measurement.median("output_throughput")
    verdict = Verdict(
        recipe_id=recipe_id,
        workload=workload,
        baseline=baseline,
        output_throughput=throughput,
        accuracy=accuracy.value if accuracy is not None else None,
        tolerance=tol,
        vllm_now=vllm_now,
    )
    checks = verdict.checks

    total = measurement.repeats[0].completed + measurement.repeats[0].failed
    failed = sum(r.failed for r in measurement.repeats)
    if failed:
        errors: dict[str, int] = {}
        for r in measurement.repeats:
            for text, n in r.errors.items():
                errors[text] = errors.get(text, 0) + n
        top = max(errors, key=lambda k: errors[k]) if errors else "unknown error"
        checks.append(
            Check(
                "requests",
                False,
                f"{failed} of {total * len(measurement.repeats)} requests failed "
                f"(most common: {top})",
            )
        )

    if baseline is not None:
        floor_value = baseline.output_throughput * (1.0 - tol)
        ok = throughput >= floor_value
        change = throughput / baseline.output_throughput - 1.0 if baseline.output_throughput else 0
        cmp = ">=" if ok else "<"
        checks.append(
            Check(
                "throughput",
                ok,
                f"output_throughput {throughput:.1f} tok/s {cmp} baseline "
                f"{baseline.output_throughput:.1f} x (1 - tolerance {tol:.0%}) = "
                f"{floor_value:.1f} ({change:+.1%} vs baseline; baseline measured with "
                f"vLLM {baseline.measured_with.vllm} on {baseline.measured_with.hardware}, "
                f"now vLLM {vllm_now or 'unknown'})",
            )
        )

    if accuracy_floor is not None:
        if accuracy is not None and accuracy.value is None and accuracy.scorer == "agreement":
            # Agreement compares with the outputs recorded beside the baseline: like a
            # missing baseline, missing recordings are reported, not failed.
            checks.append(Check("accuracy", True, f"not measured: {accuracy.note}"))
        elif accuracy is None or accuracy.value is None:
            note = accuracy.note if accuracy is not None else "no scorer applies"
            checks.append(
                Check(
                    "accuracy",
                    False,
                    f"accuracy floor {accuracy_floor} is set but no accuracy could be "
                    f"computed: {note}",
                )
            )
        else:
            ok = accuracy.value >= accuracy_floor
            checks.append(
                Check(
                    "accuracy",
                    ok,
                    f"accuracy {accuracy.value:.3f} ({accuracy.scorer}) "
                    f"{'>=' if ok else '<'} floor {accuracy_floor}",
                )
            )

    for name, limit in (slo or SLO()).model_dump().items():
        if limit is None:
            continue
        value = measurement.median(name)
        if value is None:
            checks.append(Check(f"slo.{name}", False, f"{name} could not be measured"))
            continue
        ok = value <= limit
        checks.append(
            Check(
                f"slo.{name}",
                ok,
                f"{name} {value:.1f} ms {'<=' if ok else '>'} SLO {limit:.1f} ms",
            )
        )
    return verdict
