"""What a tune optimises, and when a candidate counts as better: pure functions.

A score is the geometric mean, over the recipe's workloads, of candidate / reference for the
objective's metric (inverted when lower is better), so the committed recipe measured at the
start of the run scores 1.0 and higher is always better. A geometric mean lets no single
workload's scale dominate, and one workload halving cannot be bought back by another
doubling unnoticed (it nets 1.0, which never clears the keep threshold).

A candidate is kept only when its floors hold (accuracy, SLOs, no failed requests: the seed
tuner computed an accuracy floor and never applied it) and its score beats the best by more
than both the user's minimum improvement and the run-to-run noise of the repeats (the seed
kept candidates on one lucky run).

Objective ``pareto`` keeps trade-offs rather than one number: its score is the throughput
score (so the baseline, resume and the winner's confirmation work as for ``throughput``),
but a candidate is kept when it joins the Pareto front of throughput, p99 TTFT, p99 TPOT
and accuracy (``pareto.py``), and the tune's best is the front's highest-throughput point
that holds every floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_forge.errors import ForgeError
from pytest_forge.metric_registry import METRICS


class Scorable(Protocol):
    """What scoring reads from a measurement (``pytest_forge.metrics.Measurement`` is one)."""

    @property
    def repeats(self) -> Sequence[object]:
        """The timed repeats (only their number is read)."""
        ...

    def median(self, metric: str) -> float | None:
        """Median of ``metric`` over the repeats; None when not measured."""
        ...

    def cv(self, metric: str = ...) -> float:
        """Coefficient of variation of ``metric`` over the repeats."""
        ...


@dataclass(frozen=True)
class Objective:
    """What a tune maximises: one metric's median over repeats, in a direction."""

    name: str
    metric: str  # the Measurement metric whose median over repeats is compared
    higher_is_better: bool
    unit: str
    # How candidates are kept when not by this one score (objective pareto): replaces the
    # description of the metric.
    summary: str | None = None

    def describe(self) -> str:
        """One line for the tune's header: the metric, its unit and which way is better."""
        if self.summary is not None:
            return f"{self.name}: {self.summary}"
        direction = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.name}: median {self.metric} over repeats ({self.unit}, {direction} is better)"
        )


def _objective(
    name: str, metric: str, unit_note: str = "", summary: str | None = None
) -> Objective:
    spec = METRICS[metric]  # name, unit and direction: the registry's
    return Objective(name, spec.name, spec.higher_is_better, spec.unit + unit_note, summary)


PARETO = "pareto"
OBJECTIVES: dict[str, Objective] = {
    "throughput": _objective("throughput", "output_throughput"),
    "goodput": _objective("goodput", "goodput", " meeting every SLO"),
    "latency": _objective("latency", "e2el_p99_ms"),
    # Scored (and confirmed) on throughput; kept when joining the front (pareto.py).
    PARETO: _objective(
        PARETO,
        "output_throughput",
        summary=(
            "the Pareto front of median output throughput (higher is better) against p99 "
            "TTFT and p99 TPOT (lower is better) and accuracy; a candidate is kept when no "
            "front point beats it beyond the noise, and the best recipe is the front's "
            "highest-throughput point that holds every floor"
        ),
    ),
}

# One repeat reports a CV of 0, which would claim a noiseless run. Assume instead the
# run-to-run spread typical of a shared machine, so a single lucky run is not kept.
SINGLE_RUN_CV = 0.05


@dataclass(frozen=True)
class Decision:
    """Keep the candidate or not, and why."""

    keep: bool
    reason: str


def objective(name: str) -> Objective:
    """The objective called ``name``; ForgeError naming the choices otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ForgeError(
            f"unknown tuning objective {name!r}; choose one of {', '.join(OBJECTIVES)}"
        ) from None


def check_reference(name: str, reference: Mapping[str, Scorable]) -> str | None:
    """Why ``reference`` (the baseline's measurements) cannot anchor scores, or None."""
    obj = objective(name)
    if not reference:
        return "the baseline measured no workload"
    for workload, m in reference.items():
        value = m.median(obj.metric)
        if value is None:
            if obj.metric == "goodput":
                return (
                    f"objective goodput needs a per-request SLO (ttft, tpot or e2el) for "
                    f"every workload; workload {workload} has none"
                )
            return f"the baseline did not measure {obj.metric} on workload {workload}"
        if value <= 0:
            return (
                f"the baseline's {obj.metric} on workload {workload} is {value:g}: no ratio "
                f"against it means anything"
                + ("; no request met the SLOs" if obj.metric == "goodput" else "")
            )
    return None


def ratio(name: str, candidate: Scorable, reference: Scorable) -> float:
    """Candidate vs reference for one workload, oriented so that higher is better."""
    obj = objective(name)
    ref = reference.median(obj.metric)
    if ref is None or ref <= 0:
        raise ForgeError(f"cannot score {obj.name}: reference {obj.metric} is {ref}")
    value = candidate.median(obj.metric)
    if value is None or (value <= 0 and not obj.higher_is_better):
        # Not measured (e.g. every request failed): as bad as it gets, not a crash.
        return 0.0
    if obj.higher_is_better:
        return max(value, 0.0) / ref
    return ref / value


def score(
    name: str, measurements: Mapping[str, Scorable], reference: Mapping[str, Scorable]
) -> float:
    """Geometric mean over the reference's workloads of candidate/reference (1.0 = baseline)."""
    missing = sorted(set(reference) - set(measurements))
    if missing:
        raise ForgeError(
            f"cannot score {name}: no measurement for workload(s) {', '.join(missing)}"
        )
    ratios = [ratio(name, measurements[w], reference[w]) for w in sorted(reference)]
    if not ratios:
        raise ForgeError(f"cannot score {name}: the reference has no workloads")
    if any(r <= 0.0 for r in ratios):
        return 0.0
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def _cv(m: Scorable, metric: str) -> float:
    if len(m.repeats) < 2:
        return SINGLE_RUN_CV
    return abs(m.cv(metric))


def metric_se(m: Scorable, metric: str) -> float:
    """Relative standard error of ``metric``'s median over ``m``'s repeats.

    About 1.2533 x cv / sqrt(n) for a median of n repeats; one repeat assumes
    :data:`SINGLE_RUN_CV` rather than claiming a noiseless run.
    """
    n = max(1, len(getattr(m, "repeats", []) or [None]))
    return 1.2533 * _cv(m, metric) / math.sqrt(n)


def noise_band(
    name: str,
    candidate: Mapping[str, Scorable],
    best: Mapping[str, Scorable],
    sigmas: float = 2.0,
) -> float:
    """Relative change of the score that noise alone can explain.

    Each workload's median over n repeats has a standard error of about
    1.2533 x cv / sqrt(n); a ratio of two independent medians adds their variances, and
    the geometric mean over W workloads divides the summed variance by W². ``sigmas`` of
    that standard error is the band a real improvement must clear.
    """
    metric = objective(name).metric
    workloads = sorted(set(candidate) & set(best))
    if not workloads:
        return 0.0
    variance = 0.0
    for workload in workloads:
        for m in (candidate[workload], best[workload]):
            variance += metric_se(m, metric) ** 2
    return sigmas * math.sqrt(variance) / len(workloads)


def decide(
    candidate_score: float,
    best_score: float,
    floors_hold: bool,
    min_improvement: float,
    noise: float,
) -> Decision:
    """Keep only when floors hold and candidate >= best x (1 + max(min_improvement, noise))."""
    change = candidate_score / best_score - 1.0 if best_score > 0 else math.inf
    numbers = f"score {candidate_score:.3f} vs best {best_score:.3f}: {change:+.1%}"
    bar = f"max(min {min_improvement:.1%}, noise {noise:.1%})"
    if not floors_hold:
        return Decision(False, f"floors do not hold ({numbers})")
    keep = candidate_score >= best_score * (1.0 + max(min_improvement, noise))
    return Decision(keep, f"{numbers} {'>=' if keep else '<'} {bar}")


__all__ = [
    "OBJECTIVES",
    "PARETO",
    "SINGLE_RUN_CV",
    "Decision",
    "Objective",
    "Scorable",
    "check_reference",
    "decide",
    "metric_se",
    "noise_band",
    "objective",
    "ratio",
    "score",
]
