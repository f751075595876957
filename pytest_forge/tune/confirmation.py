"""The tune winner's A/B confirmation: per-workload paired ratios and their combined score.

The winner (side B) and the committed recipe (side A) run interleaved ABBA rounds on the
same runner (``pytest_forge.tune_confirm`` drives them through the gate's A/B path), so a
drift of the machine hits both sides of a round alike and cancels in the round's ratio.
Per workload, each round gives one ratio of the objective's metric, oriented so that
higher is better (B/A for throughput, A/B for latency); the per-workload interval is the
paired t interval of ``stats.compare_paired`` on those rounds.

The combined score is the geometric mean over the workloads of their geometric-mean
ratios, as the tune's own score (objective.py) is. On the log scale it is
L = (1/W) x sum_w m_w, where m_w is workload w's mean log ratio over its n_w rounds. The
workloads are measured in separate rounds, so their estimates are independent and
SE(L) = sqrt(sum_w se_w^2) / W with se_w = s_w / sqrt(n_w). The interval is
exp(L +- t(df) x SE(L)) with the Welch-Satterthwaite degrees of freedom
df = (sum_w se_w^2)^2 / sum_w (se_w^4 / (n_w - 1)); with one workload this is exactly the
paired t interval. A workload with fewer than two rounds has no spread estimate, which
makes the combined interval (0, inf): never a confirmation.

The winner is confirmed when nothing failed, every floor held (accuracy of B by agreement
with A's outputs of the same rounds, SLOs, no failed request) and the combined interval's
lower bound is above 1.0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_forge.metrics import Measurement
from pytest_forge.results import CaseResult
from pytest_forge.stats import Comparison, compare_paired

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Combined:
    """The geometric mean over workloads of the per-workload ratios, with its interval."""

    ratio: float
    ci_low: float  # (0, inf) when some workload has no spread estimate
    ci_high: float
    df: float  # Welch-Satterthwaite degrees of freedom (inf: zero spread everywhere)
    log_se: float  # standard error of the log of ``ratio``


@dataclass(frozen=True)
class WorkloadAB:
    """One workload's interleaved rounds: the metric per round on each side, and B's floors."""

    workload: str
    a_values: tuple[float, ...]  # the objective's metric per round, side A (committed)
    b_values: tuple[float, ...]  # the same rounds, side B (the winner)
    higher_is_better: bool
    floor_failures: tuple[str, ...] = ()  # B's broken floors (and A's failed requests)
    accuracy: float | None = None  # B's accuracy (by agreement with A's outputs)
    error: str | None = None  # why this workload has no usable ratios
    # The gate's A/B result: B's measurement, A's as its reference, the verdict.
    case: CaseResult | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_case(cls, case: CaseResult, metric: str, higher_is_better: bool) -> WorkloadAB:
        """A workload of ``run_ab_case``'s result, compared on ``metric``."""
        a = case.reference
        b = case.measurement
        a_values = tuple(a.values(metric)) if a is not None else ()
        b_values = tuple(b.values(metric))
        n = min(len(a_values), len(b_values))  # a round where a side measured nothing pairs none
        error = None
        if n == 0:
            error = f"{metric} was not measured on both sides"
        elif min(a_values[:n] + b_values[:n]) <= 0:
            error = f"{metric} was 0 in some round, so no ratio can be formed"
        failures = tuple(
            f"{case.workload} {c.name}: {c.message}"
            for c in case.verdict.failures
            if not c.reference
        )
        accuracy = case.accuracy.value if case.accuracy is not None else case.verdict.accuracy
        return cls(
            case.workload,
            a_values[:n],
            b_values[:n],
            higher_is_better,
            failures,
            accuracy,
            error,
            case,
        )

    @property
    def rounds(self) -> int:
        """How many paired rounds were measured."""
        return min(len(self.a_values), len(self.b_values))

    @property
    def ratios(self) -> tuple[float, ...]:
        """Per-round ratios, oriented so that above 1.0 means the winner is better."""
        pairs = zip(self.a_values, self.b_values, strict=False)
        return tuple(b / a if self.higher_is_better else a / b for a, b in pairs)

    @property
    def usable(self) -> bool:
        """Whether the ratios can be compared (measured, positive, no error)."""
        return self.error is None and self.rounds > 0

    @property
    def median_ratio(self) -> float | None:
        """The median of the per-round ratios."""
        return float(statistics.median(self.ratios)) if self.usable else None

    def comparison(self, confidence: float = CONFIDENCE) -> Comparison | None:
        """The paired t interval of the oriented ratio (stats.py); None when unusable."""
        if not self.usable:
            return None
        # Oriented so that "current / reference" is the ratio above: tolerance 0 makes the
        # outcome "pass" exactly when the interval lies at or above 1.0.
        ref, cur = (
            (self.a_values, self.b_values)
            if self.higher_is_better
            else (self.b_values, self.a_values)
        )
        return compare_paired(ref, cur, higher_is_better=True, tolerance=0.0, confidence=confidence)

    def log_stats(self) -> tuple[float, float, int]:
        """(mean log ratio, its standard error, rounds); the SE is inf below two rounds."""
        logs = [math.log(r) for r in self.ratios]
        n = len(logs)
        if n < 2:
            return (logs[0] if logs else 0.0), math.inf, n
        if all(x == logs[0] for x in logs):
            return logs[0], 0.0, n  # identical rounds: an exact zero spread
        mean = math.fsum(logs) / n
        var = math.fsum((x - mean) ** 2 for x in logs) / (n - 1)
        return mean, math.sqrt(var / n), n

    def to_dict(self, confidence: float = CONFIDENCE) -> dict[str, Any]:
        """JSON-ready: per-round values and ratios, the interval, floors, B's headline."""
        c = self.comparison(confidence)
        return {
            "workload": self.workload,
            "rounds": self.rounds,
            "a_values": list(self.a_values),
            "b_values": list(self.b_values),
            "ratios": [round(r, 6) for r in self.ratios],
            "median_ratio": self.median_ratio,
            "ratio": c.ratio if c is not None else None,
            "ci_low": c.ci_low if c is not None else None,
            "ci_high": _finite(c.ci_high) if c is not None else None,
            "accuracy": self.accuracy,
            "floors_hold": not self.floor_failures,
            "floor_failures": list(self.floor_failures),
            "error": self.error,
            "b_headline": self.case.measurement.headline() if self.case is not None else None,
            "a_headline": (
                self.case.reference.headline()
                if self.case is not None and self.case.reference is not None
                else None
            ),
        }


@dataclass(frozen=True)
class ABConfirmation:
    """The winner (B) against the committed recipe (A), interleaved on every workload."""

    metric: str  # the objective's metric
    higher_is_better: bool
    workloads: tuple[WorkloadAB, ...] = ()
    level: str | None = None  # "repeat": both servers up at once; "boot": one at a time
    error: str | None = None  # a boot failure or a server death: nothing is confirmed
    confidence: float = CONFIDENCE

    @property
    def problem(self) -> str | None:
        """Why the A/B cannot decide anything: its error, or a workload without ratios."""
        if self.error:
            return self.error
        if not self.workloads:
            return "no workload was measured"
        bad = [w for w in self.workloads if not w.usable]
        if bad:
            return "; ".join(f"{w.workload}: {w.error or 'no rounds'}" for w in bad)
        return None

    @property
    def floor_failures(self) -> list[str]:
        """Every broken floor of side B, over the workloads."""
        return [f for w in self.workloads for f in w.floor_failures]

    @property
    def floors_hold(self) -> bool:
        """Whether B held every floor on every workload."""
        return not self.floor_failures

    @property
    def combined(self) -> Combined | None:
        """The geometric mean ratio over workloads and its interval (module docstring)."""
        if self.problem is not None:
            return None
        return combine([w.log_stats() for w in self.workloads], self.confidence)

    @property
    def confirmed(self) -> bool:
        """A confirmed improvement: no problem, floors hold, interval entirely above 1.0."""
        c = self.combined
        return c is not None and self.floors_hold and c.ci_low > 1.0

    @property
    def measurements(self) -> dict[str, Measurement]:
        """Side B's measurement per workload (what the winner's baselines are made of)."""
        return {w.workload: w.case.measurement for w in self.workloads if w.case is not None}

    @property
    def cases(self) -> list[CaseResult]:
        """The gate's A/B results, one per workload that has one."""
        return [w.case for w in self.workloads if w.case is not None]

    def rounds_text(self) -> str:
        """ "6 interleaved rounds", or "4-8 interleaved rounds per workload"."""
        counts = sorted({w.rounds for w in self.workloads})
        if not counts:
            return "no interleaved rounds"
        if len(counts) == 1:
            return f"{counts[0]} interleaved round{'s' if counts[0] != 1 else ''}"
        return f"{counts[0]}-{counts[-1]} interleaved rounds per workload"

    def ratio_text(self) -> str:
        """``1.31x [1.22, 1.41]`` (the combined ratio and its interval), or the problem."""
        c = self.combined
        if c is None:
            return "no ratio"
        return f"{c.ratio:.2f}x [{c.ci_low:.2f}, {c.ci_high:.2f}]"

    def describe(self) -> str:
        """E.g. ``1.31x [1.22, 1.41] over the committed recipe in 6 interleaved rounds``,
        or ``no ratio: <the problem's first line>``."""
        problem = self.problem
        if problem is not None:
            first = next((ln.strip() for ln in problem.splitlines() if ln.strip()), problem)
            return f"no ratio: {first[:200]}"
        return f"{self.ratio_text()} over the committed recipe in {self.rounds_text()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run store's completed record."""
        c = self.combined
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "confidence": self.confidence,
            "level": self.level,
            "ratio": c.ratio if c is not None else None,
            "ci_low": c.ci_low if c is not None else None,
            "ci_high": _finite(c.ci_high) if c is not None else None,
            "df": _finite(c.df) if c is not None else None,
            "confirmed": self.confirmed,
            "floors_hold": self.floors_hold,
            "error": self.error,
            "problem": self.problem,
            "summary": self.describe(),
            "workloads": {w.workload: w.to_dict(self.confidence) for w in self.workloads},
        }


def combine(per_workload: Sequence[tuple[float, float, int]], confidence: float) -> Combined:
    """Combine (mean log ratio, SE, rounds) of independent workloads: see the module."""
    if not per_workload:
        raise ValueError("no workload to combine")
    w = len(per_workload)
    centre = math.fsum(m for m, _, _ in per_workload) / w
    ratio = _exp(centre)
    if any(math.isinf(se) for _, se, _ in per_workload):
        return Combined(ratio, 0.0, math.inf, 0.0, math.inf)
    variances = [se * se for _, se, _ in per_workload]
    total = math.fsum(variances)
    if total == 0.0:
        return Combined(ratio, ratio, ratio, math.inf, 0.0)
    df = total**2 / math.fsum(
        v * v / (n - 1) for v, (_, _, n) in zip(variances, per_workload, strict=True) if v > 0
    )
    se = math.sqrt(total) / w
    # Lazy: scipy is heavy and only needed once a tune ends (stats.py does the same).
    from scipy.special import stdtrit

    half = float(stdtrit(df, 0.5 + confidence / 2.0)) * se
    return Combined(ratio, _exp(centre - half), _exp(centre + half), df, se)


def settled_on(metric: str, higher_is_better: bool) -> Callable[[Measurement, Measurement], bool]:
    """When an A/B workload may stop adding rounds: the metric's paired interval lies
    entirely above or below 1.0, or B failed a request (no number of rounds mends that)."""

    def settled(a: Measurement, b: Measurement) -> bool:
        if b.failed_requests or a.failed_requests:
            return True
        a_values, b_values = a.values(metric), b.values(metric)
        n = min(len(a_values), len(b_values))
        if n == 0 or min(a_values[:n] + b_values[:n]) <= 0:
            return True  # nothing to compare: more rounds would not change that
        one = WorkloadAB(a.workload, tuple(a_values[:n]), tuple(b_values[:n]), higher_is_better)
        c = one.comparison()
        return c is not None and (c.ci_low > 1.0 or c.ci_high < 1.0)

    return settled


def stored_summary(done: Mapping[str, Any]) -> list[str]:
    """Lines for ``forge report``: a completed record's A/B confirmation, per workload."""
    ab = done.get("ab_confirmation")
    if not isinstance(ab, Mapping):
        return []
    lines = [f"A/B confirmation ({ab.get('metric')}): {ab.get('summary')}"]
    for name, w in (ab.get("workloads") or {}).items():
        if not isinstance(w, Mapping):
            continue
        lo, hi, ratio = w.get("ci_low"), w.get("ci_high"), w.get("ratio")
        if isinstance(ratio, int | float):
            high = f"{hi:.2f}" if isinstance(hi, int | float) else "inf"
            low = f"{lo:.2f}" if isinstance(lo, int | float) else "0.00"
            lines.append(f"  {name}: {ratio:.2f}x [{low}, {high}] in {w.get('rounds')} rounds")
        else:
            lines.append(f"  {name}: {w.get('error') or 'no ratio'}")
    return lines


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


__all__ = [
    "CONFIDENCE",
    "ABConfirmation",
    "Combined",
    "WorkloadAB",
    "combine",
    "settled_on",
    "stored_summary",
]
