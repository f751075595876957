"""``forge compare RUN_A RUN_B``: what changed between two benchmark runs.

A run is a gate run directory (``.forge/gate/<stamp>/results.json``, written by the plugin
at session end) or a tune run directory (``.forge/runs/<NNN>_<ts>/experiments.jsonl``, of
which the best experiment counts). Both become rows keyed by (recipe, workload); the
comparison lists every shared metric with its change and marks a regression when a
throughput falls, or a latency rises, by more than the threshold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pytest_forge.errors import ForgeError
from pytest_forge.metric_registry import COMPARE_ORDER, direction

RESULTS_FILE = "results.json"
EXPERIMENTS_FILE = "experiments.jsonl"
DEFAULT_THRESHOLD = 0.05

# Table order (metric_registry.COMPARE_ORDER); metrics not listed follow alphabetically.
# cv, repeats and the like have no better direction: shown, never a regression.
_ORDER = tuple(spec.name for spec in COMPARE_ORDER)


# ---------------------------------------------------------------------------- loading


class _GateResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    recipe: str
    workload: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    accuracy: float | None = None
    verdict: str | None = None


class _GateResults(BaseModel):
    model_config = ConfigDict(extra="allow")
    pytest_forge: str | None = None
    vllm_version: str | None = None
    hardware: str | None = None
    results: list[_GateResult]


@dataclass
class Row:
    """One recipe × workload of a run: its numeric metrics, accuracy and verdict."""

    recipe: str
    workload: str
    metrics: dict[str, float]
    verdict: str | None = None


@dataclass
class RunResults:
    """One run read back: a gate run or a tune run's best experiment, keyed by case."""

    path: Path
    kind: Literal["gate", "tune"]
    vllm_version: str | None
    hardware: str | None
    rows: dict[tuple[str, str], Row]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _numeric(metrics: Mapping[str, Any], accuracy: Any) -> dict[str, float]:
    out = {k: v for k, raw in metrics.items() if (v := _number(raw)) is not None}
    if (acc := _number(accuracy)) is not None:
        out["accuracy"] = acc
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ForgeError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ForgeError(f"{path}: not valid JSON: {e}") from None


def _load_gate(path: Path) -> RunResults:
    try:
        data = _GateResults.model_validate(_read_json(path))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "<top>"
        raise ForgeError(f"{path}: {where}: {err.get('msg', 'invalid value')}") from None
    rows: dict[tuple[str, str], Row] = {}
    for result in data.results:
        rows[(result.recipe, result.workload)] = Row(
            result.recipe,
            result.workload,
            _numeric(result.metrics, result.accuracy),
            result.verdict,
        )
    return RunResults(path.parent, "gate", data.vllm_version, data.hardware, rows)


def _best_experiment(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    # The store's rule: the best so far is the last experiment kept (or the baseline).
    best = None
    for record in records:
        if record.get("status") in ("baseline", "kept"):
            best = record
    return best


def _verdict_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        # A serialized Verdict: {"passed": bool, ...}
        passed = value.get("passed")
        return None if passed is None else ("pass" if passed else "fail")
    return None


def _load_tune(run_dir: Path) -> RunResults:
    from pytest_forge.tune.store import RunStore

    store = RunStore.open(run_dir)
    config = store.config
    best = _best_experiment(store.experiments())
    if best is None:
        raise ForgeError(
            f"{run_dir / EXPERIMENTS_FILE}: no baseline or kept experiment to compare yet"
        )
    recipe = str(config.get("recipe_id") or best.get("recipe_id") or run_dir.name)
    metrics = best.get("metrics") or {}
    accuracy = best.get("accuracy") or {}
    if not isinstance(metrics, Mapping) or not isinstance(accuracy, Mapping):
        raise ForgeError(f"{run_dir / EXPERIMENTS_FILE}: best experiment has malformed metrics")
    # A status (baseline, kept) is not a verdict; one is only known if the record has it.
    raw_verdicts = best.get("verdicts")
    verdicts: Mapping[str, Any] = raw_verdicts if isinstance(raw_verdicts, Mapping) else {}
    rows = {
        (recipe, str(workload)): Row(
            recipe,
            str(workload),
            _numeric(values if isinstance(values, Mapping) else {}, accuracy.get(workload)),
            _verdict_text(verdicts.get(workload)),
        )
        for workload, values in metrics.items()
    }
    vllm = config.get("vllm") or best.get("vllm_version")
    hardware = config.get("hardware")
    return RunResults(
        run_dir, "tune", str(vllm) if vllm else None, str(hardware) if hardware else None, rows
    )


def load_run(path: str | Path) -> RunResults:
    """A gate run (directory or its results.json) or a tune run directory."""
    p = Path(path)
    if p.is_file() and p.name == RESULTS_FILE:
        return _load_gate(p)
    if p.is_dir() and (p / RESULTS_FILE).is_file():
        return _load_gate(p / RESULTS_FILE)
    if p.is_dir() and (p / EXPERIMENTS_FILE).is_file():
        return _load_tune(p)
    if not p.exists():
        raise ForgeError(f"{p}: no such run directory")
    raise ForgeError(
        f"{p}: not a run: expected a gate run (.forge/gate/<stamp>/{RESULTS_FILE}) or a "
        f"tune run (.forge/runs/<NNN>_<ts>/{EXPERIMENTS_FILE})"
    )


# ---------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one case in both runs, its change and whether it regressed."""

    metric: str
    a: float
    b: float
    delta_pct: float | None  # None when A is 0
    regression: bool


@dataclass
class PairComparison:
    """One recipe x workload both runs have: its verdicts and metric changes."""

    recipe: str
    workload: str
    verdict_a: str | None
    verdict_b: str | None
    deltas: list[MetricDelta]

    @property
    def verdict_regressed(self) -> bool:
        """A pass in A that is anything else in B."""
        return self.verdict_a == "pass" and self.verdict_b not in (None, "pass")

    @property
    def regressions(self) -> list[str]:
        """The metrics (and "verdict") that regressed from A to B."""
        names = [d.metric for d in self.deltas if d.regression]
        if self.verdict_regressed:
            names.append("verdict")
        return names


@dataclass
class Comparison:
    """Run A against run B: every shared case, and the cases only one of them has."""

    a: RunResults
    b: RunResults
    threshold: float
    pairs: list[PairComparison]
    only_a: list[tuple[str, str]] = field(default_factory=list)
    only_b: list[tuple[str, str]] = field(default_factory=list)

    @property
    def regression_count(self) -> int:
        """Regressed metrics (and verdicts) over every shared case."""
        return sum(len(p.regressions) for p in self.pairs)

    @property
    def has_regression(self) -> bool:
        """Whether anything regressed (``forge compare`` then exits non-zero)."""
        return self.regression_count > 0


def _metric_order(names: set[str]) -> list[str]:
    known = [m for m in _ORDER if m in names]
    return known + sorted(names - set(known))


def _delta(metric: str, a: float, b: float, threshold: float) -> MetricDelta:
    change = None if a == 0 else (b - a) / abs(a)
    worse = direction(metric)
    regression = False
    if worse == "higher":
        regression = b < a * (1 - threshold) if a > 0 else False
    elif worse == "lower":
        # From zero (no failures, no preemptions) any rise is beyond every threshold.
        regression = b > a * (1 + threshold) if a > 0 else b > 0
    return MetricDelta(metric, a, b, None if change is None else change * 100, regression)


def compare_runs(a: RunResults, b: RunResults, threshold: float = DEFAULT_THRESHOLD) -> Comparison:
    """Per shared recipe × workload, every metric both runs have, with regressions marked."""
    if not 0 <= threshold < 1:
        raise ForgeError(f"regression threshold must be in [0, 1), got {threshold}")
    pairs: list[PairComparison] = []
    for key in sorted(a.rows.keys() & b.rows.keys()):
        row_a, row_b = a.rows[key], b.rows[key]
        names = _metric_order(row_a.metrics.keys() & row_b.metrics.keys())
        deltas = [_delta(m, row_a.metrics[m], row_b.metrics[m], threshold) for m in names]
        pairs.append(PairComparison(key[0], key[1], row_a.verdict, row_b.verdict, deltas))
    return Comparison(
        a,
        b,
        threshold,
        pairs,
        only_a=sorted(a.rows.keys() - b.rows.keys()),
        only_b=sorted(b.rows.keys() - a.rows.keys()),
    )


# ---------------------------------------------------------------------------- rendering


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"


def _describe(label: str, run: RunResults) -> str:
    return (
        f"{label}: {run.path} ({run.kind} run)  vLLM {run.vllm_version or 'unknown'}"
        f"  hardware {run.hardware or 'unknown'}"
    )


def render_comparison(comp: Comparison) -> str:
    """The table ``forge compare`` prints."""
    lines = [
        _describe("A", comp.a),
        _describe("B", comp.b),
        f"regression: throughput down or latency up by more than {comp.threshold:.0%}",
        "",
    ]
    for pair in comp.pairs:
        verdict = ""
        if pair.verdict_a or pair.verdict_b:
            mark = "  REGRESSION" if pair.verdict_regressed else ""
            verdict = f"  verdict {pair.verdict_a or '-'} -> {pair.verdict_b or '-'}{mark}"
        lines.append(f"{pair.recipe} × {pair.workload}{verdict}")
        if not pair.deltas:
            lines.append("  (no metric in common)")
        width = max([len("metric"), *(len(d.metric) for d in pair.deltas)])
        table = [("metric", "A", "B", "delta", "")]
        for d in pair.deltas:
            delta = "n/a" if d.delta_pct is None else f"{d.delta_pct:+.1f}%"
            table.append(
                (d.metric, _fmt(d.a), _fmt(d.b), delta, "REGRESSION" if d.regression else "")
            )
        if pair.deltas:
            value_width = max(len(row[i]) for row in table for i in (1, 2))
            for name, va, vb, delta, mark in table:
                lines.append(
                    f"  {name:<{width}}  {va:>{value_width}}  {vb:>{value_width}}  "
                    f"{delta:>8}  {mark}".rstrip()
                )
        lines.append("")
    for label, keys in (("only in A", comp.only_a), ("only in B", comp.only_b)):
        if keys:
            lines.append(f"{label}: " + ", ".join(f"{r} × {w}" for r, w in keys))
    if not comp.pairs:
        lines.append("no recipe × workload in common: nothing to compare")
    count = comp.regression_count
    lines.append(f"{count} regression{'s' if count != 1 else ''} across {len(comp.pairs)} pairs")
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "DEFAULT_THRESHOLD",
    "Comparison",
    "MetricDelta",
    "PairComparison",
    "Row",
    "RunResults",
    "compare_runs",
    "direction",
    "load_run",
    "render_comparison",
]
