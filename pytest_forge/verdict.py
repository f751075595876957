"""Verdict: a Measurement judged against its reference, its floors and its SLOs.

The reference is either a committed baseline (its per-repeat samples, measured on one
hardware class) or side A of an A/B run measured on this runner in this job, interleaved
with the change (side B). Each judged metric (metric_registry.JUDGED: output throughput;
TTFT, TPOT, ITL and E2E latency at p50 and p99) is decided on the ratio now/reference with
a confidence interval (stats.py), the tolerance being the smallest change that matters:

- fail: a regression beyond the tolerance, with confidence;
- pass: any regression is within the tolerance, with confidence;
- inconclusive: the interval straddles the margin. The caller adds repeats while it can;
  still inconclusive is a failure in strict mode.

Floors are absolute: accuracy >= floor, every configured SLO holds, no request failed.
Without a reference the metrics are reported, never judged against an invented number.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pytest_forge.metric_registry import (
    JUDGED,
    LATENCY_NAMES,
    THROUGHPUT,
    MetricSpec,
    default_tolerances,
    tolerance_for,
)
from pytest_forge.slo import SLO
from pytest_forge.stats import Comparison, compare_paired, compare_unpaired, cv

if TYPE_CHECKING:
    from pytest_forge.accuracy import AccuracyResult
    from pytest_forge.metrics import Measurement
    from pytest_forge.recipe import Baseline, Gates

DEFAULT_TOLERANCE: float = default_tolerances()[THROUGHPUT.name]

_REFERENCE_CHECKS = frozenset({"throughput", *LATENCY_NAMES})

Status = Literal["pass", "fail", "inconclusive", "no-baseline"]
Mode = Literal["baseline", "ab"]


@dataclass(frozen=True)
class Check:
    """One thing judged: a metric against the reference, a floor, an SLO, failed requests."""

    name: str  # "throughput", "ttft_p99_ms", ..., "accuracy", "slo.ttft_p99_ms", "requests"
    passed: bool
    message: str
    inconclusive: bool = False  # passed, but only because nothing could be decided
    reference: bool = False  # compares with the reference (baseline or side A): not a floor
    comparison: dict[str, Any] | None = None  # stats.Comparison.to_dict()

    def __post_init__(self) -> None:
        # A check named after a judged metric is a comparison with the reference, however
        # it was built (results carried from pytest-xdist workers, the tuner's records).
        if self.name in _REFERENCE_CHECKS:
            object.__setattr__(self, "reference", True)


@dataclass
class Verdict:
    """Every check of one recipe x workload, and what it was judged against."""

    recipe_id: str
    workload: str
    checks: list[Check] = field(default_factory=list)
    baseline: Baseline | None = None
    output_throughput: float | None = None
    accuracy: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    vllm_now: str | None = None
    mode: Mode = "baseline"
    reference_label: str | None = None  # A/B: what side A is
    reference_throughput: float | None = None  # A/B: side A's median output throughput
    vllm_reference: str | None = None  # A/B: side A's vLLM

    @property
    def passed(self) -> bool:
        """Every check passed (an inconclusive one counts as passed here)."""
        return all(c.passed for c in self.checks)

    @property
    def has_reference(self) -> bool:
        """Some metric was compared with a reference (baseline or side A)."""
        return any(c.reference for c in self.checks)

    @property
    def status(self) -> Status:
        """fail, inconclusive, pass (against a reference) or no-baseline."""
        if not self.passed:
            return "fail"
        if any(c.inconclusive for c in self.checks):
            return "inconclusive"
        return "pass" if self.has_reference else "no-baseline"

    @property
    def judged(self) -> bool:
        """Decided against a reference: a pass or fail that means something."""
        return self.status in ("pass", "fail")

    @property
    def floors_hold(self) -> bool:
        """Accuracy, SLOs and request failures: what a tuning candidate must keep."""
        return all(c.passed for c in self.checks if not c.reference)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]

    @property
    def undecided(self) -> list[Check]:
        """The checks too noisy to decide."""
        return [c for c in self.checks if c.inconclusive]

    def comparison(self, name: str = "throughput") -> dict[str, Any] | None:
        """The named check's comparison with the reference (ratio, interval), if any."""
        check = next((c for c in self.checks if c.name == name and c.comparison), None)
        return check.comparison if check is not None else None

    @property
    def change_vs_baseline(self) -> float | None:
        """Now / reference - 1 for output throughput (the ratio of the judged comparison)."""
        comparison = self.comparison()
        if comparison:
            return float(comparison["ratio"]) - 1.0
        reference = self.reference_throughput
        if reference is None and self.baseline is not None:
            reference = self.baseline.output_throughput
        if not reference or self.output_throughput is None:
            return None
        return self.output_throughput / reference - 1.0

    @property
    def versions(self) -> str:
        """vLLM versions then (reference) and now, for every message and summary line."""
        then = self.vllm_reference
        if then is None and self.baseline is not None:
            then = self.baseline.measured_with.vllm
        now = self.vllm_now or "unknown"
        if then is None or then == now:
            return f"vLLM {now}"
        word = "A" if self.mode == "ab" else "baseline"
        now_word = "B" if self.mode == "ab" else "now"
        return f"vLLM {then} ({word}) -> {now} ({now_word})"

    def failure_message(self) -> str:
        """The failed checks under the case and its versions, for the test's failure."""
        lines = [f"{self.recipe_id} x {self.workload}: {self.versions}"]
        if self.mode == "ab" and self.reference_label:
            lines.append(f"  {self.reference_label}")
        lines += [f"  {c.name}: {c.message}" for c in self.failures]
        return "\n".join(lines)

    def undecided_message(self) -> str:
        """The undecided checks under the case and its versions."""
        lines = [f"{self.recipe_id} x {self.workload}: {self.versions}"]
        lines += [f"  {c.name}: {c.message}" for c in self.undecided]
        return "\n".join(lines)


def tolerances(gates: Gates, throughput_override: float | None = None) -> dict[str, float]:
    """Each judged metric's tolerance: command line > recipe gates > metric_registry."""
    out = default_tolerances()
    if gates.throughput_tolerance is not None:
        out[THROUGHPUT.name] = gates.throughput_tolerance
    if throughput_override is not None:
        out[THROUGHPUT.name] = throughput_override
    out.update(gates.latency_tolerances())
    return out


def _check_name(spec: MetricSpec) -> str:
    # "throughput" is the name reports, the tuner and users already know for this check.
    return "throughput" if spec is THROUGHPUT else spec.name


def _margin_text(c: Comparison) -> str:
    sign = "-" if c.higher_is_better else "+"
    margin = 1 - c.tolerance if c.higher_is_better else 1 + c.tolerance
    return f"1 {sign} tolerance {c.tolerance:.0%} = {margin:.2f}"


def _metric_check(
    spec: MetricSpec,
    comparison: Comparison,
    now: list[float],
    reference: list[float],
    *,
    now_word: str,
    ref_word: str,
    context: str,
) -> Check:
    median_now = statistics.median(now)
    median_ref = statistics.median(reference)
    head = (
        f"{spec.name} {now_word} {spec.format(median_now)} vs {ref_word} "
        f"{spec.format(median_ref)}: {comparison.describe()}"
    )
    margin = _margin_text(comparison)
    if comparison.outcome == "fail":
        direction = "below" if spec.higher_is_better else "above"
        text = f"{head}, {direction} {margin} with confidence ({context})"
        return Check(
            _check_name(spec), False, text, reference=True, comparison=comparison.to_dict()
        )
    if comparison.outcome == "pass":
        text = f"{head}, within {margin} ({context})"
        return Check(_check_name(spec), True, text, reference=True, comparison=comparison.to_dict())
    spread = f"CV {cv(now):.0%} now"
    if len(reference) > 1:
        spread += f", {cv(reference):.0%} {ref_word}"
    text = (
        f"too noisy to decide: {spread}; {head} straddles {margin} ({context}); "
        "more repeats (--forge-max-repeats), a quieter runner or an A/B run can decide it"
    )
    return Check(
        _check_name(spec),
        True,
        text,
        inconclusive=True,
        reference=True,
        comparison=comparison.to_dict(),
    )


def reference_checks(
    now: Callable[[str], list[float]],
    reference: Callable[[str], list[float]],
    tolerance: Mapping[str, float],
    *,
    paired: bool,
    now_word: str,
    ref_word: str,
    context: str,
) -> list[Check]:
    """One check per judged metric that both sides measured."""
    checks = []
    for spec in JUDGED:
        values_now, values_ref = now(spec.name), reference(spec.name)
        if paired:
            # A round where either side measured nothing (e.g. no TPOT) pairs with nothing.
            n = min(len(values_now), len(values_ref))
            values_now, values_ref = values_now[:n], values_ref[:n]
        if not values_now or not values_ref or min(values_now + values_ref) <= 0:
            continue
        compare = compare_paired if paired else compare_unpaired
        comparison = compare(
            values_ref,
            values_now,
            higher_is_better=spec.higher_is_better,
            tolerance=tolerance_for(spec, tolerance),
        )
        checks.append(
            _metric_check(
                spec,
                comparison,
                values_now,
                values_ref,
                now_word=now_word,
                ref_word=ref_word,
                context=context,
            )
        )
    return checks


def floor_checks(
    measurement: Measurement,
    accuracy: AccuracyResult | None,
    *,
    accuracy_floor: float | None,
    slo: SLO | None,
) -> list[Check]:
    """Requests that failed, the accuracy floor and the SLOs: absolute, no reference."""
    checks = []
    failed = measurement.failed_requests
    if failed:
        total = sum(r.completed + r.failed for r in measurement.repeats)
        errors: dict[str, int] = {}
        for r in measurement.repeats:
            for text, n in r.errors.items():
                errors[text] = errors.get(text, 0) + n
        top = max(errors, key=lambda k: errors[k]) if errors else "unknown error"
        checks.append(
            Check("requests", False, f"{failed} of {total} requests failed (most common: {top})")
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
    return checks


def judge(
    recipe_id: str,
    workload: str,
    measurement: Measurement,
    accuracy: AccuracyResult | None,
    *,
    baseline: Baseline | None,
    accuracy_floor: float | None,
    tolerance: float | Mapping[str, float] | None,
    slo: SLO | None,
    vllm_now: str | None,
) -> Verdict:
    """Judge ``measurement`` against a committed baseline (unpaired: other time, same class)."""
    tol = _tolerance_map(tolerance)
    verdict = Verdict(
        recipe_id=recipe_id,
        workload=workload,
        baseline=baseline,
        output_throughput=measurement.median(THROUGHPUT.name),
        accuracy=accuracy.value if accuracy is not None else None,
        tolerance=tol[THROUGHPUT.name],
        vllm_now=vllm_now,
    )
    verdict.checks += floor_checks(measurement, accuracy, accuracy_floor=accuracy_floor, slo=slo)
    if baseline is not None:
        context = (
            f"baseline measured with vLLM {baseline.measured_with.vllm} on "
            f"{baseline.measured_with.hardware}, now vLLM {vllm_now or 'unknown'}"
        )
        verdict.checks += reference_checks(
            measurement.values,
            baseline.values,
            tol,
            paired=False,
            now_word="now",
            ref_word="baseline",
            context=context,
        )
    return verdict


def judge_ab(
    recipe_id: str,
    workload: str,
    a: Measurement,
    b: Measurement,
    accuracy: AccuracyResult | None,
    *,
    reference_label: str,
    accuracy_floor: float | None,
    tolerance: Mapping[str, float],
    slo: SLO | None,
    vllm_a: str | None,
    vllm_b: str | None,
) -> Verdict:
    """Judge side B against side A, measured in interleaved rounds (repeat i of each)."""
    verdict = Verdict(
        recipe_id=recipe_id,
        workload=workload,
        output_throughput=b.median(THROUGHPUT.name),
        accuracy=accuracy.value if accuracy is not None else None,
        tolerance=tolerance.get(THROUGHPUT.name, DEFAULT_TOLERANCE),
        vllm_now=vllm_b,
        mode="ab",
        reference_label=reference_label,
        reference_throughput=a.median(THROUGHPUT.name),
        vllm_reference=vllm_a,
    )
    # Side A must itself have served every request: a reference that failed is no reference.
    for check in floor_checks(a, None, accuracy_floor=None, slo=None):
        verdict.checks.append(Check("reference." + check.name, False, f"side A: {check.message}"))
    verdict.checks += floor_checks(b, accuracy, accuracy_floor=accuracy_floor, slo=slo)
    context = f"{len(b.repeats)} interleaved rounds; A vLLM {vllm_a or 'unknown'}, B vLLM " + (
        vllm_b or "unknown"
    )
    verdict.checks += reference_checks(
        b.values,
        a.values,
        tolerance,
        paired=True,
        now_word="B",
        ref_word="A",
        context=context,
    )
    return verdict


def _tolerance_map(tolerance: float | Mapping[str, float] | None) -> dict[str, float]:
    out = default_tolerances()
    if isinstance(tolerance, Mapping):
        out.update(tolerance)
    elif tolerance is not None:
        out[THROUGHPUT.name] = tolerance
    return out
