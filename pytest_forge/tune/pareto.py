"""The Pareto front of a tune (``--forge-objective pareto``): points, noise-aware dominance,
the front and its winner. Pure functions over measurements and stored records.

A point is one measured recipe as ratios to experiment 0 (the committed recipe measured at
the start of the run), aggregated as the tune's score is: for each metric, the geometric
mean over the recipe's workloads of candidate / experiment 0. Every ratio is oriented so
that higher is better (experiment 0 / candidate for the p99 latencies), so experiment 0 is
the point (1, 1, 1, 1). The metrics are median output throughput (higher is better), p99
TTFT and p99 TPOT (lower is better), and accuracy (higher is better) where it was scored.

**Dominance respects noise.** Point A dominates point B when A is better than B beyond the
band in at least one metric and worse beyond the band in none; two points whose metrics
all lie within their bands are a *tie*, the same trade-off. The band of a measured metric
is ``max(min_change, sigmas x sqrt(se_A² + se_B²))``, where ``se`` is the relative
standard error of the point's geometric mean (each workload's median over n repeats has a
relative standard error of about 1.2533 x cv / sqrt(n), see ``objective.metric_se``; W
workloads divide the summed variance by W²). That is the rule ``objective.noise_band``
applies to the single score: a keep must clear both the user's minimum improvement and
the noise. Accuracy is scored once per workload (no repeats to take a spread from): its
band is ``max(min_change, ACCURACY_BAND)``. Metrics one of the two points lacks (accuracy
not scored, a latency not measured) are left out of their comparison.

**The front** is the points no other point dominates; among points that tie each other
the earliest stands (duplicates appear once, and a re-measured twin does not crowd the
front), so a candidate *joins* the front only when no front point dominates or ties it.
**The winner** is the front's highest-throughput point that holds every floor and meets
the recipe's SLOs; experiment 0 is a point too, so the winner may be the committed recipe
(no winner).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_forge.metric_registry import METRICS, THROUGHPUT
from pytest_forge.tune.objective import Scorable, metric_se

ACCURACY = "accuracy"
# The metrics of a point, in the order reports show them.
MEASURED_METRICS: tuple[str, ...] = (THROUGHPUT.name, "ttft_p99_ms", "tpot_p99_ms")
FRONT_METRICS: tuple[str, ...] = (*MEASURED_METRICS, ACCURACY)
# Accuracy has no repeats: a relative difference under 1 % of the other point's is a tie
# (e.g. 2 answers in 200), so greedy decoding's numeric wobble does not make trade-offs.
ACCURACY_BAND = 0.01
LABELS: dict[str, str] = {
    THROUGHPUT.name: "tok/s",
    "ttft_p99_ms": "TTFT p99",
    "tpot_p99_ms": "TPOT p99",
    ACCURACY: "accuracy",
}


@dataclass(frozen=True)
class Noise:
    """What a difference must clear to count: ``sigmas`` standard errors, and ``min_change``
    (the tune's minimum improvement) at least."""

    sigmas: float = 2.0
    min_change: float = 0.0


@dataclass(frozen=True)
class Point:
    """One measured recipe as ratios to experiment 0; higher is better for every metric."""

    exp: int
    recipe_id: str
    ratios: Mapping[str, float]  # metric -> geometric mean ratio (1.0 = experiment 0)
    se: Mapping[str, float] = field(default_factory=dict)  # metric -> relative std error
    floors_hold: bool = True

    @property
    def throughput(self) -> float:
        """The throughput ratio: the tune's score under objective pareto."""
        return self.ratios.get(THROUGHPUT.name, 0.0)

    def change(self, metric: str) -> float | None:
        """The metric's change vs experiment 0 in its own direction (-0.1: 10 % lower)."""
        ratio = self.ratios.get(metric)
        if ratio is None:
            return None
        if _higher_is_better(metric):
            return ratio - 1.0
        return 1.0 / ratio - 1.0 if ratio > 0 else math.inf

    def describe(self) -> str:
        """``tok/s +12.0%, TTFT p99 -3.1%, ...``: the point vs experiment 0."""
        parts = []
        for metric in FRONT_METRICS:
            change = self.change(metric)
            if change is not None:
                text = "+inf" if math.isinf(change) else f"{change:+.1%}"
                parts.append(f"{LABELS[metric]} {text}")
        return ", ".join(parts)


def _higher_is_better(metric: str) -> bool:
    return metric == ACCURACY or METRICS[metric].higher_is_better


def _geomean(ratios: Sequence[float]) -> float:
    if any(r <= 0.0 for r in ratios):
        return 0.0
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def _oriented(metric: str, value: float | None, ref: float) -> float:
    """candidate / reference, inverted when lower is better; 0.0 when not measured."""
    if _higher_is_better(metric):
        return max(value or 0.0, 0.0) / ref
    # Not measured (every request failed) or no time at all: as bad as it gets.
    return ref / value if value is not None and value > 0 else 0.0


def point_of(
    exp: int,
    recipe_id: str,
    measurements: Mapping[str, Scorable],
    reference: Mapping[str, Scorable],
    *,
    accuracy: Mapping[str, float | None] | None = None,
    reference_accuracy: Mapping[str, float | None] | None = None,
    floors_hold: bool = True,
) -> Point:
    """A recipe's point: per metric, the geometric mean over ``reference``'s workloads of
    its ratio to ``reference`` (experiment 0). A metric experiment 0 did not measure on
    every workload (or measured as 0) is left out, as is accuracy unless both were scored."""
    workloads = sorted(reference)
    ratios: dict[str, float] = {}
    ses: dict[str, float] = {}
    for metric in MEASURED_METRICS:
        refs = [reference[w].median(metric) for w in workloads]
        if not workloads or any(r is None or r <= 0 for r in refs):
            continue
        values = []
        variance = 0.0
        for w, ref in zip(workloads, refs, strict=True):
            m = measurements.get(w)
            assert ref is not None
            values.append(_oriented(metric, m.median(metric) if m is not None else None, ref))
            if m is not None:
                variance += metric_se(m, metric) ** 2
        ratios[metric] = _geomean(values)
        ses[metric] = math.sqrt(variance) / len(workloads)
    acc = _accuracy_ratio(workloads, accuracy or {}, reference_accuracy or {})
    if acc is not None:
        ratios[ACCURACY] = acc
    return Point(exp, recipe_id, ratios, ses, floors_hold)


def _accuracy_ratio(
    workloads: Sequence[str],
    accuracy: Mapping[str, float | None],
    reference: Mapping[str, float | None],
) -> float | None:
    values = []
    for w in workloads:
        ref, value = reference.get(w), accuracy.get(w)
        if not isinstance(ref, int | float) or ref <= 0 or not isinstance(value, int | float):
            return None
        values.append(max(float(value), 0.0) / float(ref))
    return _geomean(values) if values else None


# -- dominance ---------------------------------------------------------------------------
def _band(a: Point, b: Point, metric: str, noise: Noise) -> float:
    if metric == ACCURACY:
        return max(noise.min_change, ACCURACY_BAND)
    spread = math.sqrt(a.se.get(metric, 0.0) ** 2 + b.se.get(metric, 0.0) ** 2)
    return max(noise.min_change, noise.sigmas * spread)


def _side(a: float, b: float, band: float) -> int:
    """+1: ``a`` is better than ``b`` beyond the band; -1: worse beyond it; 0: a tie."""
    if a == b:
        return 0
    if b <= 0.0:
        return 1 if a > 0.0 else 0
    if a <= 0.0:
        return -1
    ratio = a / b
    if ratio > 1.0 + band:
        return 1
    if ratio < 1.0 / (1.0 + band):
        return -1
    return 0


def compare(a: Point, b: Point, noise: Noise = Noise()) -> dict[str, int]:
    """Per shared metric: +1 when ``a`` beats ``b`` beyond the band, -1 when worse, 0 a tie."""
    return {
        m: _side(a.ratios[m], b.ratios[m], _band(a, b, m, noise))
        for m in FRONT_METRICS
        if m in a.ratios and m in b.ratios
    }


def dominates(a: Point, b: Point, noise: Noise = Noise()) -> bool:
    """Whether ``a`` beats ``b`` beyond the band in one metric and is worse beyond it in none."""
    sides = compare(a, b, noise).values()
    return any(s > 0 for s in sides) and not any(s < 0 for s in sides)


def ties(a: Point, b: Point, noise: Noise = Noise()) -> bool:
    """Whether every shared metric of ``a`` and ``b`` lies within its band: one trade-off."""
    return all(s == 0 for s in compare(a, b, noise).values())


def pareto_front(points: Sequence[Point], noise: Noise = Noise()) -> list[Point]:
    """The points no other point dominates, in the given order; of points that tie, the
    first stands (so duplicates appear once). A single point is its own front."""
    undominated = [
        p for p in points if not any(q is not p and dominates(q, p, noise) for q in points)
    ]
    front: list[Point] = []
    for p in undominated:
        if not any(ties(q, p, noise) for q in front):
            front.append(p)
    return front


def blocker(candidate: Point, front: Sequence[Point], noise: Noise = Noise()) -> Point | None:
    """The front point that keeps ``candidate`` off the front (dominates or ties it), if any."""
    for p in front:
        if dominates(p, candidate, noise) or ties(p, candidate, noise):
            return p
    return None


def select_winner(
    front: Sequence[Point], slo_ok: Callable[[Point], bool] | None = None
) -> Point | None:
    """The front's highest-throughput point that holds its floors and ``slo_ok`` (the
    recipe's SLOs); the earliest on an exact tie. None: no point qualifies."""
    eligible = [p for p in front if p.floors_hold and (slo_ok is None or slo_ok(p))]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (p.throughput, -p.exp))


# -- stored records ----------------------------------------------------------------------
def point_from_record(record: Mapping[str, Any], baseline: Mapping[str, Any]) -> Point | None:
    """A stored experiment's point against the run's baseline record; None when unmeasured."""
    from pytest_forge.metrics import Measurement

    def measured(r: Mapping[str, Any]) -> dict[str, Measurement]:
        data = r.get("measurements") or {}
        return {w: Measurement.from_dict(d) for w, d in data.items() if isinstance(d, Mapping)}

    measurements, reference = measured(record), measured(baseline)
    exp = record.get("exp")
    if not measurements or not reference or not isinstance(exp, int):
        return None
    return point_of(
        exp,
        str(record.get("recipe_id") or ""),
        measurements,
        reference,
        accuracy=record.get("accuracy") or {},
        reference_accuracy=baseline.get("accuracy") or {},
        floors_hold=record.get("floors_hold") is not False,
    )


def candidate_points(records: Sequence[Mapping[str, Any]]) -> list[Point]:
    """The points that may stand on a run's front: experiment 0 when it holds its floors
    (a point that breaks one cannot be committed, so it is no trade-off), and every kept
    experiment (each joined the front when it ran)."""
    if not records or records[0].get("status") != "baseline":
        return []
    baseline = records[0]
    points = []
    for record in records:
        status = record.get("status")
        if status == "kept" or (status == "baseline" and record.get("floors_hold") is not False):
            point = point_from_record(record, baseline)
            if point is not None:
                points.append(point)
    return points


def front_of_records(records: Sequence[Mapping[str, Any]], noise: Noise = Noise()) -> list[Point]:
    """The Pareto front of a run's stored experiments."""
    return pareto_front(candidate_points(records), noise)


__all__ = [
    "ACCURACY",
    "ACCURACY_BAND",
    "FRONT_METRICS",
    "LABELS",
    "MEASURED_METRICS",
    "Noise",
    "Point",
    "blocker",
    "candidate_points",
    "compare",
    "dominates",
    "front_of_records",
    "pareto_front",
    "point_from_record",
    "point_of",
    "select_winner",
    "ties",
]
