"""``forge report RUN_DIR``: a tune run's experiments as a table, with the best so far."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_forge.report import format_table
from pytest_forge.tune.confirmation import stored_summary
from pytest_forge.tune.objective import PARETO
from pytest_forge.tune.pareto import FRONT_METRICS, LABELS
from pytest_forge.tune.store import CONFIG, RunStore, runs_under
from pytest_forge.tune.table import (
    best_record,
    fmt,
    kept_mark,
    num,
    one_line,
    record_summary,
    text,
    truncate,
)

REPORT_COLUMNS = [
    "exp",
    "id",
    "gen",
    "score",
    "tok/s",
    "p99_ms",
    "accuracy",
    "kept",
    "status",
    "rationale",
]
RATIONALE_WIDTH = 60
# Objective pareto's front: tok/s as in the table below, the worst workload's p99s.
FRONT_COLUMNS = [
    "exp",
    "id",
    "role",
    "tok/s",
    "ttft_p99_ms",
    "tpot_p99_ms",
    "accuracy",
    "vs exp 0",
    "file",
]


def _resolve_run_dir(path: Path) -> Path:
    """A run directory as given, or the latest run under ``.forge/`` or ``.forge/runs/``."""
    if (path / CONFIG).is_file():
        return path
    for root in (path / "runs", path):
        runs = runs_under(root)
        if runs:
            return runs[0]
    return path  # open() then says what is missing


def _header(
    run_dir: Path,
    config: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    front: Mapping[str, Any] | None = None,
) -> list[str]:
    """The lines above the table: recipe, objective, counts and the best so far."""
    counts: dict[str, int] = {}
    for r in records:
        status = str(r.get("status"))
        counts[status] = counts.get(status, 0) + 1
    lines = [f"=== Forge Report: {run_dir} ==="]
    recipe = config.get("recipe_id")
    if recipe:
        lines.append(f"Recipe: {recipe}")
    objective = next((r.get("objective") for r in records if r.get("objective")), None)
    objective = objective or config.get("objective")
    if objective:
        lines.append(f"Objective: {objective}")
    breakdown = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines.append(f"Total experiments: {len(records)}" + (f" ({breakdown})" if breakdown else ""))
    best = best_record(records)
    winner = (front or {}).get("winner")
    if isinstance(winner, int) and 0 <= winner < len(records):
        best = records[winner]  # objective pareto: the front's winner, not the last keep
    if best is not None:
        summary = record_summary(best)
        lines += [
            f"Best score: {fmt(num(best.get('score')), '.4f')}",
            f"Best recipe ID: {best.get('recipe_id') or '-'}",
            f"Best generation: {text(best.get('generation'))}",
            f"Throughput: {fmt(summary['tok_s'], '.1f')} tok/s",
            f"P99 latency: {fmt(summary['p99_ms'], '.0f')} ms",
        ]
    return lines


def _row(r: Mapping[str, Any]) -> list[str]:
    s = record_summary(r)
    rationale = one_line(r.get("rationale")) or one_line(r.get("reason"))
    if r.get("status") == "baseline":
        rationale = rationale or "baseline"
    return [
        str(r.get("exp")),
        str(r.get("recipe_id") or "-"),
        text(r.get("generation")),
        fmt(num(r.get("score")), ".4f"),
        fmt(s["tok_s"], ".1f"),
        fmt(s["p99_ms"], ".0f"),
        fmt(s["accuracy"], ".3f"),
        kept_mark(r.get("status")),
        str(r.get("status")),
        truncate(rationale, RATIONALE_WIDTH),
    ]


def _front_lines(front: Mapping[str, Any] | None) -> list[str]:
    """Objective pareto: the front's points, their metrics and ready-to-commit files."""
    points = [p for p in (front or {}).get("points") or [] if isinstance(p, Mapping)]
    if not points:
        return [
            "Pareto front: the committed recipe alone (no candidate has joined it yet)",
            "",
        ]
    noise = (front or {}).get("noise") or {}
    lines = [
        f"Pareto front: {len(points)} point(s) over tok/s (higher is better), TTFT p99 and "
        "TPOT p99 (lower) and accuracy (higher)",
        "vs exp 0: geometric mean over the workloads of each ratio to the committed recipe; "
        "a point beats another only beyond the noise "
        f"({fmt(num(noise.get('sigmas')), 'g')} sigma, at least "
        f"{fmt(num(noise.get('min_change')), '.1%')})",
        "winner: the front's highest-throughput point within every floor; files: "
        "ready-to-commit recipes under the run directory",
    ]
    rows = []
    for p in points:
        role = "winner" if p.get("winner") else ("committed" if p.get("committed") else "front")
        change = p.get("change") or {}
        versus = ", ".join(
            f"{LABELS[m]} {fmt(num(change.get(m)), '+.1%')}" for m in FRONT_METRICS if m in change
        )
        rows.append(
            [
                text(p.get("exp")),
                text(p.get("recipe_id")),
                role,
                fmt(num(p.get("tok_s")), ".1f"),
                fmt(num(p.get("ttft_p99_ms")), ".1f"),
                fmt(num(p.get("tpot_p99_ms")), ".2f"),
                fmt(num(p.get("accuracy")), ".3f"),
                versus or "-",
                text(p.get("file") or ("(recipes/)" if p.get("committed") else None)),
            ]
        )
    table = format_table(FRONT_COLUMNS, rows)
    lines += [line.rstrip() for line in table.splitlines()]
    return [*lines, ""]


def render_report(run_dir: Path) -> str:
    """The ``forge report RUN_DIR`` table: a header on the best so far, then every experiment."""
    run_dir = _resolve_run_dir(Path(run_dir))
    store = RunStore.open(run_dir)
    records = store.experiments()
    config = store.config
    pareto = PARETO in (config.get("objective"), records[0].get("objective") if records else None)
    front = store.front() if pareto else None
    lines = _header(run_dir, config, records, front)
    done = store.completed()
    if done is not None:
        lines.append(f"Status: completed — {one_line(done.get('message'))}")
        lines += stored_summary(done)  # the winner's interleaved A/B, per workload
    else:
        lines.append("Status: unfinished (interrupted or still running; resumable)")
    lines.append("")

    if not records:
        lines.append("no experiments recorded yet")
        return "\n".join(lines)

    if pareto:
        lines += _front_lines(front)
    lines.append(
        "tok/s: mean over the workloads; p99_ms: the worst workload's E2E latency p99; "
        "accuracy: the worst workload's"
    )
    table = format_table(REPORT_COLUMNS, [_row(r) for r in records])
    # The rationale column is last: no padding after it.
    lines += [line.rstrip() for line in table.splitlines()]
    return "\n".join(lines)


__all__ = ["render_report"]
