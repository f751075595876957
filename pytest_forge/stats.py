"""Regression statistics: t confidence intervals on current/reference ratios, and the verdict.

Every comparison works on the log scale, where a ratio is a difference and throughput or
latency noise is close to symmetric; intervals are Student t intervals on log values,
exponentiated back to a ratio r = current / reference. t intervals stay calibrated at the
2-10 repeats a benchmark affords, where a bootstrap of the median is far too narrow. The
point estimate is the centre of that interval: the ratio of geometric means (unpaired) or
the geometric mean of the per-round ratios (paired), so it always lies inside the interval.

Decision rule (`decide`), an equivalence / non-inferiority test with the tolerance as the
smallest effect that matters, on the two-sided interval [lo, hi] at level `confidence`
(so each side is a one-sided test at alpha = (1 - confidence) / 2):

- higher is better (throughput), margin m = 1 - tolerance:
  "fail" if hi < m, "pass" if lo >= m, else "inconclusive";
- lower is better (latency), margin m = 1 + tolerance:
  "fail" if lo > m, "pass" if hi <= m, else "inconclusive".

A measured improvement never fails: its interval contains its point ratio, on the good
side of 1. "pass" therefore claims, with confidence, that any regression is within tolerance.

Cases (`method` names the one used):

- unpaired, >= 2 values each side: Student t on log values with the variance pooled over
  both sides (the runner's noise, shared by both), so added repeats narrow the interval.
- unpaired, one reference value (old baselines kept only the median): the reference is
  taken as exact and the interval is a one-sample t of log(current) - log(reference). This
  ignores the reference's own noise, so it is anti-conservative when that noise matters.
- unpaired, one current value: a t *prediction* interval from the reference's spread,
  assuming the single current run is as noisy as one reference repeat. Treating a raw
  single run as exact would pass far too often.
- one value on each side, or fewer than 2 paired rounds: no spread is known, so the
  interval is (0, inf) and the outcome is always inconclusive: one pair never passes.
- paired (interleaved A/B rounds): one-sample t on the per-round log ratios, which cancels
  drift shared by both arms within a round.
- zero spread (all values identical): the interval collapses to the point and decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Comparison:
    """How `current` compares with `reference` for one metric."""

    ratio: float  # geometric-mean ratio current/reference (the interval's centre)
    ci_low: float  # two-sided `confidence` interval of that ratio; (0, inf) when unknown
    ci_high: float
    confidence: float
    outcome: Outcome
    higher_is_better: bool
    tolerance: float  # smallest effect that matters, as a fraction (0.05 = 5 %)
    n_reference: int
    n_current: int
    paired: bool
    method: str

    def describe(self) -> str:
        """Compact summary, e.g. `ratio 0.912 [0.887, 0.938] 95% CI, n=5 vs 5`."""
        level = f"{round(self.confidence * 100, 6):g}%"
        n = f"{self.n_current} paired" if self.paired else f"{self.n_reference} vs {self.n_current}"
        return f"ratio {self.ratio:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] {level} CI, n={n}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; an unbounded interval end (inf) becomes None."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in asdict(self).items()
        }


def decide(ci_low: float, ci_high: float, *, higher_is_better: bool, tolerance: float) -> Outcome:
    """Verdict for a ratio interval [ci_low, ci_high] under the module's decision rule."""
    _check_tolerance(tolerance, higher_is_better)
    if higher_is_better:
        margin = 1.0 - tolerance
        if ci_high < margin:
            return "fail"
        return "pass" if ci_low >= margin else "inconclusive"
    margin = 1.0 + tolerance
    if ci_low > margin:
        return "fail"
    return "pass" if ci_high <= margin else "inconclusive"


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation: sample stdev / mean; 0.0 for fewer than 2 values."""
    if len(values) < 2:
        return 0.0
    mean, var = _mean_var([float(v) for v in values])
    if var == 0.0:
        return 0.0
    return math.sqrt(var) / mean if mean else math.inf


def compare_unpaired(
    reference: Sequence[float],
    current: Sequence[float],
    *,
    higher_is_better: bool,
    tolerance: float,
    confidence: float = 0.95,
) -> Comparison:
    """Compare independent repeats (absolute-baseline mode); see the module docstring."""
    opts = _options(higher_is_better, tolerance, confidence)
    ref, cur = _logs("reference", reference), _logs("current", current)
    (ref_mean, ref_var), (cur_mean, cur_var) = _mean_var(ref), _mean_var(cur)
    n_ref, n_cur = len(ref), len(cur)
    if n_ref >= 2 and n_cur >= 2:
        # Student's t with the variance pooled over both sides: a repeat's noise is a
        # property of the runner class and the workload, which both sides share. Welch's
        # separate variances would leave the interval as wide as a 2- or 3-repeat baseline
        # allows (df ~ 1-2, t ~ 4-13) however many repeats the current run adds; pooled, the
        # added repeats narrow it (df = n_ref + n_cur - 2).
        df = n_ref + n_cur - 2.0
        pooled = ((n_ref - 1) * ref_var + (n_cur - 1) * cur_var) / df
        se = math.sqrt(pooled * (1.0 / n_ref + 1.0 / n_cur))
        method = "pooled t on log values"
    elif n_cur >= 2:
        se, df = math.sqrt(cur_var / n_cur), n_cur - 1.0
        method = "one-sample t on log values vs a fixed reference"
    elif n_ref >= 2:
        # The new run's own noise is one repeat's worth: widen by sqrt(1 + 1/n).
        se, df = math.sqrt(ref_var * (1.0 + 1.0 / n_ref)), n_ref - 1.0
        method = "t prediction interval on log values (single current run)"
    else:
        se, df, method = math.inf, 0.0, "none (one value per side)"
    shape = {"n_reference": n_ref, "n_current": n_cur, "paired": False, "method": method}
    return _build(cur_mean - ref_mean, se, df, opts, shape)


def compare_paired(
    reference: Sequence[float],
    current: Sequence[float],
    *,
    higher_is_better: bool,
    tolerance: float,
    confidence: float = 0.95,
) -> Comparison:
    """Compare interleaved A/B rounds on the per-round ratios current[i] / reference[i]."""
    opts = _options(higher_is_better, tolerance, confidence)
    ref, cur = _logs("reference", reference), _logs("current", current)
    if len(ref) != len(cur):
        raise ValueError(
            f"paired comparison needs one reference per current value, "
            f"got {len(ref)} reference and {len(cur)} current values"
        )
    n = len(ref)
    mean, var = _mean_var([c - r for r, c in zip(ref, cur, strict=True)])
    if n >= 2:
        se, df, method = math.sqrt(var / n), n - 1.0, "paired t on log ratios"
    else:
        se, df, method = math.inf, 0.0, "none (one paired round)"
    shape = {"n_reference": n, "n_current": n, "paired": True, "method": method}
    return _build(mean, se, df, opts, shape)


def _build(
    centre: float, se: float, df: float, opts: dict[str, Any], shape: dict[str, Any]
) -> Comparison:
    """The Comparison for a log-ratio estimate `centre` with standard error `se`."""
    if math.isinf(se):
        low, high = 0.0, math.inf  # no spread estimate: say so rather than invent one
    elif se == 0.0:
        low = high = math.exp(centre)
    else:
        # Lazy: plugins must not import scipy at load time. stdtrit is the t quantile that
        # scipy.stats' t-tests use, without their tens of microseconds of per-call overhead.
        from scipy.special import stdtrit

        half = float(stdtrit(df, 0.5 + opts["confidence"] / 2.0)) * se
        low, high = _exp(centre - half), _exp(centre + half)
    verdict = decide(
        low, high, higher_is_better=opts["higher_is_better"], tolerance=opts["tolerance"]
    )
    return Comparison(
        ratio=_exp(centre), ci_low=low, ci_high=high, outcome=verdict, **opts, **shape
    )


def _logs(name: str, values: Sequence[float]) -> list[float]:
    if len(values) == 0:
        raise ValueError(f"{name} has no values")
    out = []
    for i, value in enumerate(values):
        v = float(value)
        if not (math.isfinite(v) and v > 0.0):
            raise ValueError(
                f"{name} values must be finite and > 0 (ratios are compared on a log scale), "
                f"got {value!r} at index {i}"
            )
        out.append(math.log(v))
    return out


def _mean_var(xs: list[float]) -> tuple[float, float]:
    # Identical values give an exact zero variance, so the interval is exactly the point.
    if all(x == xs[0] for x in xs):
        return xs[0], 0.0
    mean = math.fsum(xs) / len(xs)
    return mean, math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _check_tolerance(tolerance: float, higher_is_better: bool) -> None:
    if not (math.isfinite(tolerance) and tolerance >= 0.0):
        raise ValueError(f"tolerance must be a finite fraction >= 0, got {tolerance!r}")
    if higher_is_better and tolerance >= 1.0:
        raise ValueError(f"tolerance must be < 1 when higher is better, got {tolerance!r}")


def _options(higher_is_better: bool, tolerance: float, confidence: float) -> dict[str, Any]:
    _check_tolerance(tolerance, higher_is_better)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    return {"higher_is_better": higher_is_better, "tolerance": tolerance, "confidence": confidence}
