"""``forge report RUN_DIR``: a tune run's experiments as a table, with the best so far."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_forge.tune.store import (
    CONFIG,
    RunStore,
    _fmt,
    _num,
    _one_line,
    _run_number,
    _text,
    _truncate,
    kept_mark,
    record_summary,
)

REPORT_COLUMNS = (
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
)
RATIONALE_WIDTH = 60


def _best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    best = None
    for r in records:
        if r.get("status") in ("baseline", "kept"):
            best = r
    return best


def _resolve_run_dir(path: Path) -> Path:
    """A run directory as given, or the latest run under ``.forge/`` or ``.forge/runs/``."""
    if (path / CONFIG).is_file():
        return path
    for root in (path / "runs", path):
        if root.is_dir():
            runs = [p for p in root.iterdir() if _run_number(p) is not None and p.is_dir()]
            if runs:
                return max(runs, key=lambda p: (_run_number(p), p.name))
    return path  # open() then says what is missing


def render_report(run_dir: Path) -> str:
    """The ``forge report RUN_DIR`` table: a header on the best so far, then every experiment."""
    run_dir = _resolve_run_dir(Path(run_dir))
    store = RunStore.open(run_dir)
    records = store.experiments()
    config = store.config
    best = _best_record(records)
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
    if best is not None:
        summary = record_summary(best)
        lines += [
            f"Best score: {_fmt(_num(best.get('score')), '.4f')}",
            f"Best recipe ID: {best.get('recipe_id') or '-'}",
            f"Best generation: {_text(best.get('generation'))}",
            f"Throughput: {_fmt(summary['tok_s'], '.1f')} tok/s",
            f"P99 latency: {_fmt(summary['p99_ms'], '.0f')} ms",
        ]
    done = store.completed()
    if done is not None:
        lines.append(f"Status: completed — {_one_line(done.get('message'))}")
    else:
        lines.append("Status: unfinished (interrupted or still running; resumable)")
    lines.append("")

    if not records:
        lines.append("no experiments recorded yet")
        return "\n".join(lines)

    lines.append(
        "tok/s: mean over the workloads; p99_ms: the worst workload's E2E latency p99; "
        "accuracy: the worst workload's"
    )
    rows = [list(REPORT_COLUMNS)]
    for r in records:
        s = record_summary(r)
        rationale = _one_line(r.get("rationale")) or _one_line(r.get("reason"))
        if r.get("status") == "baseline":
            rationale = rationale or "baseline"
        rows.append(
            [
                str(r.get("exp")),
                str(r.get("recipe_id") or "-"),
                "-" if r.get("generation") is None else str(r.get("generation")),
                _fmt(_num(r.get("score")), ".4f"),
                _fmt(s["tok_s"], ".1f"),
                _fmt(s["p99_ms"], ".0f"),
                _fmt(s["accuracy"], ".3f"),
                kept_mark(r.get("status")),
                str(r.get("status")),
                _truncate(rationale, RATIONALE_WIDTH),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(REPORT_COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


__all__ = ["render_report"]
