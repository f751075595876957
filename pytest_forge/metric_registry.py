"""The metrics the verdict judges against a reference: name, unit, direction, tolerance.

One place for what "better" means per metric, so the verdict, the baselines' per-repeat
samples and the reports agree. Names are :class:`~pytest_forge.metrics.RepeatSummary` fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    name: str  # a RepeatSummary field
    label: str  # for messages and tables
    unit: str
    higher_is_better: bool
    default_tolerance: float  # the smallest change that matters, as a fraction
    digits: int = 1  # decimals shown

    def format(self, value: float | None) -> str:
        return "-" if value is None else f"{value:.{self.digits}f} {self.unit}"


# Latency percentiles swing more than throughput from repeat to repeat (a p99 over a few
# hundred requests is decided by a handful of them), so their default margins are wider:
# a doubled p99 TTFT is still caught, a 10 % wobble of one slow request is not a failure.
THROUGHPUT = MetricSpec("output_throughput", "output throughput", "tok/s", True, 0.05)
LATENCY: tuple[MetricSpec, ...] = tuple(
    MetricSpec(f"{metric}_{stat}_ms", f"{label} {stat}", "ms", False, tol, digits)
    for metric, label, digits in (
        ("ttft", "TTFT", 1),
        ("tpot", "TPOT", 2),
        ("itl", "ITL", 2),
        ("e2el", "E2E latency", 1),
    )
    for stat, tol in (("p50", 0.15), ("p99", 0.30))
)
JUDGED: tuple[MetricSpec, ...] = (THROUGHPUT, *LATENCY)
JUDGED_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in JUDGED}
LATENCY_NAMES: tuple[str, ...] = tuple(spec.name for spec in LATENCY)


def default_tolerances() -> dict[str, float]:
    """Each judged metric's default tolerance (a fresh dict: callers override entries)."""
    return {spec.name: spec.default_tolerance for spec in JUDGED}
