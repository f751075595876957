"""Experiment records as table rows: the summary and cells the run store's TSV and
``forge report`` share, and which record is the best so far."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_forge.metric_registry import JUDGED_BY_NAME, THROUGHPUT

# The latency a record's summary reports: the worst workload's end-to-end p99.
_E2EL_P99 = JUDGED_BY_NAME["e2el_p99_ms"].name
# Statuses of a measured and scored experiment: ✓ the reference or a keep, ✗ a reject.
_KEPT_MARK = {"baseline": "✓", "kept": "✓", "rejected": "✗"}
# The best so far is the last of these (the baseline until something is kept).
BEST_STATUSES = ("baseline", "kept")

TSV_COLUMNS = (
    "exp",
    "slot",
    "status",
    "kept",
    "recipe_id",
    "generation",
    "parent_id",
    "score",
    "tok_s",
    "p99_ms",
    "accuracy",
    "duration_s",
    "agent_cost_usd",
    "changes",
    "rationale",
    "reason",
)


def num(value: Any) -> float | None:
    """``value`` as a float when it is a number (never a bool), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``; "-" when there is none."""
    return "-" if value is None else format(value, spec)


def text(value: Any) -> str:
    """``value`` as text; "-" when there is none."""
    return "-" if value is None else str(value)


def one_line(value: Any) -> str:
    """``value`` as text on one line (a rationale's newlines and tabs become spaces)."""
    return " ".join(str(value or "").split())


def truncate(value: str, width: int) -> str:
    """``value`` cut to ``width`` characters, ending in "..." when cut."""
    return value if len(value) <= width else value[: width - 3].rstrip() + "..."


def kept_mark(status: str | None) -> str:
    """✓ baseline or kept, ✗ measured and rejected, - never scored (invalid, crashed)."""
    return _KEPT_MARK.get(status or "", "-")


def best_record(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The best experiment so far: the last one kept, else the baseline (None: neither)."""
    best = None
    for record in records:
        if record.get("status") in BEST_STATUSES:
            best = record
    return best


def _headline_values(record: Mapping[str, Any], key: str) -> list[float]:
    metrics = record.get("metrics") or {}
    return [v for head in metrics.values() if (v := num((head or {}).get(key))) is not None]


def record_summary(record: Mapping[str, Any]) -> dict[str, float | None]:
    """Across workloads: mean tok/s, the worst E2E p99 and the worst accuracy."""
    tok = _headline_values(record, THROUGHPUT.name)
    p99 = _headline_values(record, _E2EL_P99)
    acc = [v for v in (record.get("accuracy") or {}).values() if num(v) is not None]
    return {
        "tok_s": sum(tok) / len(tok) if tok else None,
        "p99_ms": max(p99) if p99 else None,
        "accuracy": min(acc) if acc else None,
    }


def _blank_if_none(value: Any) -> Any:
    return "" if value is None else value


def tsv(records: Sequence[Mapping[str, Any]]) -> str:
    """The experiments as a tab-separated table for people (``experiments.tsv``)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    for r in records:
        s = record_summary(r)
        usage = r.get("usage") or {}
        writer.writerow(
            [
                r.get("exp"),
                _blank_if_none(r.get("slot")),
                r.get("status"),
                kept_mark(r.get("status")),
                r.get("recipe_id") or "",
                _blank_if_none(r.get("generation")),
                r.get("parent_id") or "",
                fmt(num(r.get("score")), ".4f"),
                fmt(s["tok_s"], ".1f"),
                fmt(s["p99_ms"], ".1f"),
                fmt(s["accuracy"], ".3f"),
                fmt(num(r.get("duration_s")), ".1f"),
                fmt(num(usage.get("cost_usd")), ".4f"),
                json.dumps(r.get("changes") or {}, ensure_ascii=False, sort_keys=True),
                one_line(r.get("rationale")),
                one_line(r.get("reason")),
            ]
        )
    return out.getvalue()


__all__ = [
    "BEST_STATUSES",
    "TSV_COLUMNS",
    "best_record",
    "fmt",
    "kept_mark",
    "num",
    "one_line",
    "record_summary",
    "text",
    "truncate",
    "tsv",
]
