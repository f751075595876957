"""Every metric pytest-forge reports: name, unit, which way is better, how it is shown.

One place for what a metric is called, what "better" means for it and how it is formatted,
so the verdict, the terminal and Markdown summaries, JUnit properties, github-action-benchmark
files, ``forge compare``, the HTML report and the tuner's objective agree. Names are
:class:`~pytest_forge.metrics.RepeatSummary` / ``Measurement.headline()`` keys (and
``accuracy``). The tuples at the end are the selections each output reads, in its order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower"]
# How Measurement.headline() folds a metric's per-repeat values into one figure.
Aggregate = Literal["median", "total", "cv", "count", "none"]


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric: its name, how it is shown, and which way is better."""

    name: str  # a RepeatSummary / headline key
    label: str  # short, for messages and tables ("TTFT p99")
    unit: str
    better: Direction | None  # None: no better way (cv, counts of repeats)
    digits: int = 1  # decimals shown
    default_tolerance: float | None = None  # judged metrics: the smallest change that matters
    description: str | None = None  # long name, for plot axes ("p99 time to first token")
    aggregate: Aggregate = "median"

    @property
    def higher_is_better(self) -> bool:
        """True when a higher value is better (False also for metrics without a direction)."""
        return self.better == "higher"

    @property
    def axis_label(self) -> str:
        """``description (unit)``, as a plot axis shows it."""
        return f"{self.description or self.label} ({self.unit})"

    def format(self, value: float | None) -> str:
        """``value`` with this metric's decimals and unit; ``-`` when not measured."""
        return "-" if value is None else f"{value:.{self.digits}f} {self.unit}"

    def number(self, value: float | None) -> str:
        """``value`` with this metric's decimals, no unit; ``-`` when not measured."""
        return "-" if value is None else f"{value:.{self.digits}f}"


# Latency percentiles swing more than throughput from repeat to repeat (a p99 over a few
# hundred requests is decided by a handful of them), so their default margins are wider:
# a doubled p99 TTFT is still caught, a 10 % wobble of one slow request is not a failure.
THROUGHPUT = MetricSpec(
    "output_throughput",
    "output throughput",
    "tok/s",
    "higher",
    default_tolerance=0.05,
    description="output throughput",
)
_LATENCY_NAMES = {
    "ttft": ("TTFT", 1, "time to first token"),
    "tpot": ("TPOT", 2, "time per output token"),
    "itl": ("ITL", 2, "inter-token latency"),
    "e2el": ("E2E latency", 1, "end-to-end latency"),
}
LATENCY: tuple[MetricSpec, ...] = tuple(
    MetricSpec(
        f"{metric}_{stat}_ms",
        f"{label} {stat}",
        "ms",
        "lower",
        digits,
        default_tolerance=tol,
        description=f"{stat} {long}",
    )
    for metric, (label, digits, long) in _LATENCY_NAMES.items()
    for stat, tol in (("p50", 0.15), ("p99", 0.30))
)
JUDGED: tuple[MetricSpec, ...] = (THROUGHPUT, *LATENCY)
JUDGED_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in JUDGED}
LATENCY_NAMES: tuple[str, ...] = tuple(spec.name for spec in LATENCY)

_OTHERS: tuple[MetricSpec, ...] = (
    MetricSpec("request_throughput", "request throughput", "req/s", "higher", 4),
    MetricSpec("total_token_throughput", "total token throughput", "tok/s", "higher"),
    MetricSpec(
        "goodput", "goodput", "req/s", "higher", 4, description="requests meeting every SLO"
    ),
    MetricSpec("accuracy", "accuracy", "", "higher", 3, aggregate="none"),
    MetricSpec("prefix_cache_hit_rate", "prefix cache hit rate", "", "higher", 3),
    MetricSpec("failed", "failed requests", "requests", "lower", 0, aggregate="total"),
    MetricSpec("preemptions", "preemptions", "", "lower", 0),
    # Spread of output throughput over the repeats; shown, never a regression.
    MetricSpec("cv", "CV", "", None, 3, aggregate="cv"),
    MetricSpec("completed", "completed requests", "requests", None, 0, aggregate="total"),
    MetricSpec("kv_cache_usage_max", "max KV-cache usage", "", None, 3),
    MetricSpec("repeats", "repeats", "", None, 0, aggregate="count"),
)

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (*JUDGED, *_OTHERS)}


def _select(*names: str) -> tuple[MetricSpec, ...]:
    # A typo here would silently drop a metric from an output: fail at import instead.
    return tuple(METRICS[name] for name in names)


# Measurement.headline(): what results.json, baselines and the tuner's records carry.
HEADLINE = _select(
    "output_throughput",
    "request_throughput",
    "total_token_throughput",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "itl_p99_ms",
    "e2el_p99_ms",
    "goodput",
    "failed",
    "completed",
    "cv",
    "repeats",
    "preemptions",
    "prefix_cache_hit_rate",
    "kv_cache_usage_max",
)
# Every gate testcase's JUnit properties (and pytest-benchmark extra_info).
JUNIT = _select(
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
# github-action-benchmark series (bigger or smaller is better, by the metric's direction).
ACTION_BENCHMARK = _select(
    "output_throughput", "request_throughput", "ttft_p99_ms", "tpot_p99_ms", "e2el_p99_ms"
)
# The summary table's metric columns (terminal, Markdown, HTML), after recipe and workload.
SUMMARY = _select("output_throughput", "ttft_p99_ms", "tpot_p99_ms")
# ``forge compare``'s row order; metrics not listed follow alphabetically.
COMPARE_ORDER = _select(
    "output_throughput",
    "request_throughput",
    "total_token_throughput",
    "goodput",
    "accuracy",
    "prefix_cache_hit_rate",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "itl_p99_ms",
    "e2el_p99_ms",
    "failed",
    "preemptions",
    "cv",
)
# The Pareto plots' latency axis: the first of these a result measured.
PARETO_LATENCY = _select("e2el_p99_ms", "ttft_p99_ms")


def direction(name: str) -> Direction | None:
    """Which way is better for a metric; any other ``*_ms`` latency is lower-is-better."""
    spec = METRICS.get(name)
    if spec is not None:
        return spec.better
    return "lower" if name.endswith("_ms") else None


def default_tolerances() -> dict[str, float]:
    """Each judged metric's default tolerance (a fresh dict: callers override entries)."""
    return {spec.name: spec.default_tolerance or 0.0 for spec in JUDGED}


def tolerance_for(spec: MetricSpec, tolerances: Mapping[str, float]) -> float:
    """``spec``'s tolerance in ``tolerances``, else its default (0 for unjudged metrics)."""
    value = tolerances.get(spec.name)
    return value if value is not None else spec.default_tolerance or 0.0
