"""pytest_forge.stats: calibration, power and edge cases of the ratio intervals and verdicts."""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pytest_forge.stats import Comparison, compare_paired, compare_unpaired, cv, decide

TOL = 0.05
CONFIDENCE = 0.95
ALPHA = (1 - CONFIDENCE) / 2  # each side of the two-sided interval is a one-sided test
SIMS = 2000
# A simulated rate may exceed alpha by sampling error: allow 3 binomial standard errors.
RATE_LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)
DISTS = [0.02, 0.10, 0.25, "contaminated"]


def lognormal(rng: np.random.Generator, cv_: float, size: tuple[int, ...]) -> np.ndarray:
    """Lognormal noise with mean 1 and coefficient of variation `cv_`."""
    sigma = math.sqrt(math.log1p(cv_ * cv_))
    return rng.lognormal(-sigma * sigma / 2, sigma, size)


def noise(
    rng: np.random.Generator, dist: float | str, size: tuple[int, ...], higher_is_better: bool
) -> np.ndarray:
    """Lognormal noise of CV `dist`, or CV 2 % where 1 value in 10 is 30 % slower."""
    if dist == "contaminated":
        base = lognormal(rng, 0.02, size)
        slow = base / 1.3 if higher_is_better else base * 1.3  # slower: less tok/s, more ms
        return np.where(rng.random(size) < 0.1, slow, base)
    assert isinstance(dist, float)
    return lognormal(rng, dist, size)


def simulate(
    rng: np.random.Generator,
    *,
    ratio: float,
    n: int,
    paired: bool,
    higher_is_better: bool = True,
    dist: float | str = 0.03,
    n_reference: int | None = None,
    drift_cv: float = 0.0,
    sims: int = SIMS,
) -> list[Comparison]:
    """`sims` comparisons of reference vs current = `ratio` x reference, on fresh noise."""
    ref = noise(rng, dist, (sims, n_reference or n), higher_is_better)
    cur = ratio * noise(rng, dist, (sims, n), higher_is_better)
    if drift_cv:  # a per-round machine effect shared by A and B within each round
        drift = lognormal(rng, drift_cv, (sims, n))
        ref, cur = ref * drift, cur * drift
    compare = compare_paired if paired else compare_unpaired
    return [
        compare(r, c, higher_is_better=higher_is_better, tolerance=TOL)
        for r, c in zip(ref.tolist(), cur.tolist(), strict=True)
    ]


def rate(results: list[Comparison], outcome: str) -> float:
    return sum(c.outcome == outcome for c in results) / len(results)


# -- calibration: false alarms within alpha's sampling error --------------------------------


@pytest.mark.parametrize("higher_is_better", [True, False], ids=["throughput", "latency"])
@pytest.mark.parametrize("paired", [False, True], ids=["unpaired", "paired"])
@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("dist", DISTS, ids=["cv2", "cv10", "cv25", "contaminated"])
def test_false_pass_at_the_margin_is_at_most_alpha(
    dist: float | str, n: int, paired: bool, higher_is_better: bool
) -> None:
    # A true ratio exactly at the margin is a regression that matters: "pass" is a false pass.
    margin = 1 - TOL if higher_is_better else 1 + TOL
    rng = np.random.default_rng([n, int(paired), int(higher_is_better), DISTS.index(dist)])
    results = simulate(
        rng, ratio=margin, n=n, paired=paired, higher_is_better=higher_is_better, dist=dist
    )
    assert rate(results, "pass") <= RATE_LIMIT


@pytest.mark.parametrize("higher_is_better", [True, False], ids=["throughput", "latency"])
@pytest.mark.parametrize("paired", [False, True], ids=["unpaired", "paired"])
@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("dist", DISTS, ids=["cv2", "cv10", "cv25", "contaminated"])
def test_no_change_almost_never_fails(
    dist: float | str, n: int, paired: bool, higher_is_better: bool
) -> None:
    rng = np.random.default_rng([100 + n, int(paired), int(higher_is_better), DISTS.index(dist)])
    results = simulate(
        rng, ratio=1.0, n=n, paired=paired, higher_is_better=higher_is_better, dist=dist
    )
    assert rate(results, "fail") <= RATE_LIMIT


def test_single_reference_value_is_calibrated_when_that_value_is_exact() -> None:
    # Old baselines kept one median: treated as exact, the one-sample t interval is calibrated.
    rng = np.random.default_rng(7)
    cur = (1 - TOL) * lognormal(rng, 0.10, (SIMS, 5))
    results = [compare_unpaired([1.0], c, higher_is_better=True, tolerance=TOL) for c in cur]
    assert {c.method for c in results} == {"one-sample t on log values vs a fixed reference"}
    assert rate(results, "pass") <= RATE_LIMIT


def test_single_current_value_is_calibrated_including_its_own_noise() -> None:
    # One new run is as noisy as one reference repeat: the prediction interval accounts for it.
    rng = np.random.default_rng(8)
    results = simulate(rng, ratio=1 - TOL, n=1, n_reference=5, paired=False, dist=0.10)
    assert {c.method for c in results} == {
        "t prediction interval on log values (single current run)"
    }
    assert rate(results, "pass") <= RATE_LIMIT


# -- power ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "sure_from"), [(8, 0.15), (10, 0.10)])
def test_power_grows_with_the_regression(n: int, sure_from: float) -> None:
    # CV 3 % on every measured value, so the per-round ratio has CV ~4.2 %. At n=8 a 10 %
    # regression is caught ~87 % of the time (theory ~0.88), at n=10 ~94 %.
    rng = np.random.default_rng(n)
    regressions = [0.0, 0.05, 0.10, 0.15, 0.20]
    power = [
        rate(simulate(rng, ratio=1 - r, n=n, paired=True, sims=1000), "fail") for r in regressions
    ]
    for smaller, larger in itertools.pairwise(power):
        assert larger >= smaller - 0.03, power
    assert power[0] <= RATE_LIMIT, power
    assert power[2] >= 0.8, power
    assert all(p >= 0.9 for r, p in zip(regressions, power, strict=True) if r >= sure_from), power


def test_paired_beats_unpaired_under_drift() -> None:
    # Round effect CV 10 % shared by A and B, within-round noise CV 2 %, 10 % regression.
    rng = np.random.default_rng(11)
    n, sims = 6, 1000
    ref = lognormal(rng, 0.02, (sims, n))
    cur = 0.9 * lognormal(rng, 0.02, (sims, n))
    drift = lognormal(rng, 0.10, (sims, n))
    pairs = list(zip((ref * drift).tolist(), (cur * drift).tolist(), strict=True))
    paired = [compare_paired(r, c, higher_is_better=True, tolerance=TOL) for r, c in pairs]
    unpaired = [compare_unpaired(r, c, higher_is_better=True, tolerance=TOL) for r, c in pairs]

    def width(results: list[Comparison]) -> float:
        return statistics.median(math.log(c.ci_high / c.ci_low) for c in results)

    assert width(paired) < 0.3 * width(unpaired)
    assert rate(paired, "fail") >= 0.9
    assert rate(unpaired, "fail") <= 0.2


# -- agreement with scipy.stats -------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_intervals_match_scipy_t_tests(confidence: float) -> None:
    rng = np.random.default_rng(3)
    ref, cur = lognormal(rng, 0.05, (5,)) * 100, lognormal(rng, 0.08, (4,)) * 93
    got = compare_unpaired(ref, cur, higher_is_better=True, tolerance=TOL, confidence=confidence)
    student = scipy_stats.ttest_ind(np.log(cur), np.log(ref), equal_var=True)
    low, high = np.exp(student.confidence_interval(confidence_level=confidence))
    assert (got.ci_low, got.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert got.ratio == pytest.approx(np.exp(np.log(cur).mean() - np.log(ref).mean()))
    assert got.method == "pooled t on log values"

    got = compare_paired(ref[:4], cur, higher_is_better=False, tolerance=TOL, confidence=confidence)
    one = scipy_stats.ttest_1samp(np.log(cur) - np.log(ref[:4]), 0.0)
    low, high = np.exp(one.confidence_interval(confidence_level=confidence))
    assert (got.ci_low, got.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert got.method == "paired t on log ratios"
    assert got.paired and got.n_reference == got.n_current == 4


# -- edge cases -----------------------------------------------------------------------------


def test_one_reference_value_is_a_fixed_number() -> None:
    cur = [90.0, 91.0, 89.0, 90.5]
    got = compare_unpaired([100.0], cur, higher_is_better=True, tolerance=TOL)
    one = scipy_stats.ttest_1samp(np.log(cur) - math.log(100.0), 0.0)
    assert (got.ci_low, got.ci_high) == pytest.approx(tuple(np.exp(one.confidence_interval())))
    assert got.outcome == "fail"
    assert (got.n_reference, got.n_current, got.paired) == (1, 4, False)


def test_one_current_value_uses_a_prediction_interval() -> None:
    ref = [100.0, 101.0, 99.0, 100.5, 99.5]
    got = compare_unpaired(ref, [100.2], higher_is_better=True, tolerance=TOL)
    logs = np.log(ref)
    half = scipy_stats.t.ppf(0.975, 4) * logs.std(ddof=1) * math.sqrt(1 + 1 / 5)
    centre = math.log(100.2) - logs.mean()
    assert got.ci_low == pytest.approx(math.exp(centre - half))
    assert got.ci_high == pytest.approx(math.exp(centre + half))
    assert got.outcome == "pass"  # the reference spread (~0.8 %) is far inside 5 %


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_a_single_pair_is_never_conclusive(higher_is_better: bool) -> None:
    for got in (
        compare_unpaired([100.0], [100.0], higher_is_better=higher_is_better, tolerance=0.5),
        compare_paired([100.0], [50.0], higher_is_better=higher_is_better, tolerance=0.01),
    ):
        assert got.outcome == "inconclusive"
        assert (got.ci_low, got.ci_high) == (0.0, math.inf)
    one_round = compare_paired([100.0], [50.0], higher_is_better=True, tolerance=0.01)
    assert one_round.ratio == pytest.approx(0.5)


def test_zero_variance_collapses_the_interval_to_the_point() -> None:
    got = compare_unpaired([100.0] * 3, [90.0] * 3, higher_is_better=True, tolerance=TOL)
    assert got.ci_low == got.ci_high == got.ratio == pytest.approx(0.9)
    assert got.outcome == "fail"
    got = compare_unpaired([100.0] * 3, [97.0] * 3, higher_is_better=True, tolerance=TOL)
    assert got.outcome == "pass"
    got = compare_paired([100.0, 100.0], [104.0, 104.0], higher_is_better=False, tolerance=TOL)
    assert got.ci_low == got.ci_high == pytest.approx(1.04)
    assert got.outcome == "pass"
    # Zero spread on one side only: the pooled spread still comes from the other side.
    cur = [90.0, 91.0, 89.0]
    pooled = compare_unpaired([100.0] * 4, cur, higher_is_better=True, tolerance=TOL)
    assert pooled.ci_low < pooled.ratio < pooled.ci_high < 0.95
    assert pooled.outcome == "fail"


def test_added_repeats_narrow_the_interval_despite_a_small_noisy_baseline() -> None:
    # A 2-repeat baseline with a wild repeat: more current repeats must still settle it.
    ref = [100.0, 160.0]
    few = compare_unpaired(ref, [120.0, 125.0], higher_is_better=True, tolerance=TOL)
    many = compare_unpaired(ref, [120.0, 125.0] * 5, higher_is_better=True, tolerance=TOL)
    assert (many.ci_high - many.ci_low) < 0.5 * (few.ci_high - few.ci_low)


def test_paired_lengths_must_match() -> None:
    with pytest.raises(ValueError, match=r"one reference per current value.*3 reference and 2"):
        compare_paired([1.0, 2.0, 3.0], [1.0, 2.0], higher_is_better=True, tolerance=TOL)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("compare", [compare_unpaired, compare_paired])
def test_values_must_be_positive_and_finite(bad: float, compare: Callable[..., Comparison]) -> None:
    with pytest.raises(ValueError, match=r"current values must be finite and > 0.*at index 1"):
        compare([1.0, 2.0], [1.0, bad], higher_is_better=True, tolerance=TOL)
    with pytest.raises(ValueError, match="reference has no values"):
        compare([], [1.0], higher_is_better=True, tolerance=TOL)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        compare_unpaired([1.0], [1.0], higher_is_better=True, tolerance=-0.1)
    with pytest.raises(ValueError, match="tolerance must be < 1"):
        decide(0.5, 1.5, higher_is_better=True, tolerance=1.0)
    with pytest.raises(ValueError, match="confidence"):
        compare_paired([1.0], [1.0], higher_is_better=True, tolerance=TOL, confidence=95)


@pytest.mark.parametrize("higher_is_better", [True, False], ids=["throughput", "latency"])
def test_improvements_pass_and_never_fail(higher_is_better: bool) -> None:
    better = 1.1 if higher_is_better else 0.9
    ref = [100.0, 101.0, 99.0, 100.5]
    cur = [v * better for v in (100.2, 99.4, 100.9, 99.8)]
    for compare in (compare_unpaired, compare_paired):
        assert compare(ref, cur, higher_is_better=higher_is_better, tolerance=TOL).outcome == (
            "pass"
        )
    # Under heavy noise the verdict may be inconclusive, but a measured improvement never fails.
    rng = np.random.default_rng(5)
    for paired in (False, True):
        results = simulate(
            rng, ratio=better, n=3, paired=paired, higher_is_better=higher_is_better, dist=0.25
        )
        improved = [c for c in results if (c.ratio >= 1) == higher_is_better]
        assert improved and all(c.outcome != "fail" for c in improved)
        assert rate(results, "fail") <= RATE_LIMIT


@pytest.mark.parametrize("seed", range(6))
def test_lower_is_better_mirrors_higher_is_better(seed: int) -> None:
    # Latency = 1 / throughput: ratios and intervals invert, and with the margins mirrored
    # (1 - t_high = 1 / (1 + t_low)) the verdicts agree.
    rng = np.random.default_rng(seed)
    ref = lognormal(rng, 0.05, (5,)) * 100
    cur = lognormal(rng, 0.05, (5,)) * 100 * rng.uniform(0.85, 1.1)
    tol_low = 0.05
    tol_high = 1 - 1 / (1 + tol_low)
    for compare in (compare_unpaired, compare_paired):
        hi = compare(ref, cur, higher_is_better=True, tolerance=tol_high)
        lo = compare(1 / ref, 1 / cur, higher_is_better=False, tolerance=tol_low)
        assert lo.ratio == pytest.approx(1 / hi.ratio)
        assert (lo.ci_low, lo.ci_high) == pytest.approx((1 / hi.ci_high, 1 / hi.ci_low))
        assert lo.outcome == hi.outcome
    # Swapping the arms inverts the ratio too (the pooled t is symmetric).
    ab = compare_unpaired(ref, cur, higher_is_better=True, tolerance=TOL)
    ba = compare_unpaired(cur, ref, higher_is_better=True, tolerance=TOL)
    assert (ba.ci_low, ba.ci_high) == pytest.approx((1 / ab.ci_high, 1 / ab.ci_low))


@pytest.mark.parametrize(
    ("low", "high", "higher_is_better", "expected"),
    [
        (0.75, 0.9, True, "pass"),  # margin 0.75 inclusive
        (0.7499, 0.9, True, "inconclusive"),
        (0.6, 0.75, True, "inconclusive"),
        (0.6, 0.7499, True, "fail"),
        (1.0, 2.0, True, "pass"),
        (1.1, 1.25, False, "pass"),  # margin 1.25 inclusive
        (1.1, 1.2501, False, "inconclusive"),
        (1.25, 1.4, False, "inconclusive"),
        (1.2501, 1.4, False, "fail"),
        (0.5, 0.9, False, "pass"),
        (0.0, math.inf, True, "inconclusive"),
        (0.0, math.inf, False, "inconclusive"),
    ],
)
def test_decide_rule(low: float, high: float, higher_is_better: bool, expected: str) -> None:
    assert decide(low, high, higher_is_better=higher_is_better, tolerance=0.25) == expected


def test_describe_and_to_dict() -> None:
    got = compare_unpaired([100.0], [100.0], higher_is_better=True, tolerance=TOL)
    assert got.describe() == "ratio 1.000 [0.000, inf] 95% CI, n=1 vs 1"
    data = json.loads(json.dumps(got.to_dict(), allow_nan=False))
    assert data["ci_high"] is None and data["ci_low"] == 0.0
    assert data["outcome"] == "inconclusive" and data["method"] == got.method
    got = compare_paired(
        [100.0, 102.0, 98.0], [91.0, 93.0, 89.5], higher_is_better=True, tolerance=TOL
    )
    assert got.describe().startswith("ratio 0.91")
    assert got.describe().endswith("95% CI, n=3 paired")
    assert json.loads(json.dumps(got.to_dict()))["paired"] is True


def test_cv() -> None:
    assert cv([]) == cv([5.0]) == cv([2.0, 2.0, 2.0]) == 0.0
    assert cv([1.0, 2.0, 3.0]) == pytest.approx(0.5)
    assert cv(np.array([10.0, 12.0])) == pytest.approx(statistics.stdev([10, 12]) / 11)


def test_importing_the_module_does_not_import_scipy() -> None:
    code = "import sys, pytest_forge.stats; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
