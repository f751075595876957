"""What a tune's experiments produce: outcomes and results, and the helpers that turn
them into stored records and readable text."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pytest_forge.metric_registry import JUDGED_BY_NAME, THROUGHPUT
from pytest_forge.recipe import Recipe
from pytest_forge.results import Evaluation
from pytest_forge.tune.agent_types import HistoryEntry
from pytest_forge.tune.agent_types import Status as StoredStatus
from pytest_forge.tune.confirmation import ABConfirmation

# What the agent may see in its history: skipped and error outcomes are never stored.
STORED_STATUSES: tuple[str, ...] = get_args(StoredStatus)
Status = Literal[StoredStatus, "skipped", "error"]

# The latency an outcome's summary line shows.
_E2EL_P99 = JUDGED_BY_NAME["e2el_p99_ms"].name
# How much of a crash's text (message + vLLM log tail) is stored and shown to the agent.
ERROR_SNIPPET_CHARS = 2000


@dataclass
class ExperimentOutcome:
    """One experiment as it ended: what ran, its measurements and score, kept or why not."""

    exp: int | None  # None: skipped, nothing stored
    slot: int | None  # None: the baseline
    status: Status
    recipe_id: str | None  # content hash of the measured recipe
    generation: int | None
    parent_id: str | None
    changes: dict[str, Any]
    rationale: str
    score: float | None
    metrics: dict[str, dict[str, Any]]  # per workload Measurement.headline()
    accuracy: dict[str, float | None]
    reason: str
    usage: dict[str, float]  # the agent's usage for this experiment (calls, tokens, $)
    started_at: str
    duration_s: float
    resumed: bool = False
    # What resume and audits need; part of the stored record.
    objective: str | None = None
    best_score: float | None = None  # the best score once this experiment was decided
    noise: float | None = None
    floors_hold: bool | None = None
    error: str | None = None
    elapsed_s: float | None = None  # active tuning time when this experiment ended
    recipe: dict[str, Any] | None = None  # the serving setup that was measured
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How the validation read the agent's answer ("max_num_seqs read as config.max_num_seqs").
    notes: list[str] = field(default_factory=list)
    layer: int | None = None  # the tuning layer it ran in (layers.py; 0: the baseline)

    def to_record(self) -> dict[str, Any]:
        """The JSON record the run store appends (``resumed`` is not part of it)."""
        record = dataclasses.asdict(self)
        del record["resumed"]
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any], resumed: bool = True) -> ExperimentOutcome:
        """An outcome from a stored record; fields a record lacks take their empty value."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in record.items() if k in names}
        data["resumed"] = resumed
        for key in ("changes", "metrics", "accuracy", "usage", "measurements"):
            data[key] = data.get(key) or {}
        data["notes"] = list(data.get("notes") or [])
        for key in ("rationale", "reason", "started_at"):
            data[key] = data.get(key) or ""
        data.setdefault("duration_s", 0.0)
        data.setdefault("exp", None)
        data.setdefault("slot", None)
        data.setdefault("recipe_id", None)
        data.setdefault("generation", None)
        data.setdefault("parent_id", None)
        data.setdefault("score", None)
        data.setdefault("status", "invalid")
        return cls(**data)

    def summary(self) -> str:
        """One readable line: what ran, what it scored, and why it was kept or not."""
        label = f"exp {self.exp}" if self.exp is not None else f"slot {self.slot}"
        head = f"{label} [{self.status}{', resumed' if self.resumed else ''}]"
        if self.recipe_id:
            head += f" {self.recipe_id}"
            if self.generation is not None:
                head += f" gen {self.generation}"
        if self.changes:
            head += " (" + ", ".join(f"{k}={v!r}" for k, v in self.changes.items()) + ")"
        parts = [head]
        if self.status == "baseline":
            parts.append(f"score {self.score:.3f} (reference)" if self.score is not None else "")
            parts.append(_metrics_line(self.metrics, self.accuracy))
        if self.reason:
            parts.append(self.reason)
        if self.rationale and self.status != "baseline":
            parts.append(f"rationale: {self.rationale}")
        if self.notes:
            parts.append("note: " + "; ".join(self.notes))
        return " — ".join(p for p in parts if p)


@dataclass(frozen=True)
class TuneResult:
    """How a tune ended: the winner written to ``recipes/`` (if any) and why."""

    winner: Recipe | None  # the recipe written to recipes/, None when nothing was written
    path: Path | None
    baseline_score: float | None
    best_score: float | None  # best score during the tune
    message: str
    confirmed_score: float | None = None  # the winner's score on re-measurement
    confirmation: Evaluation | None = None  # the winner's re-measurement, when it ran
    # A winner was found but could not be written (the recipe file changed meanwhile):
    # the tune's last item fails with the message.
    failed: bool = False
    ab: ABConfirmation | None = None  # the winner's interleaved A/B, when it ran


# -- helpers ------------------------------------------------------------------------------
def now_iso() -> str:
    """The current UTC time, to the second, as ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def serving_setup(recipe: Recipe) -> dict[str, Any]:
    """The part of a recipe that decides how it is served, as stored with an experiment."""
    data = recipe.model_dump(mode="json")
    keys = ("model", "config", "compilation", "quant", "env", "kernels", "lineage")
    return {k: data.get(k) for k in keys}


def usage_dict(agent: Any) -> dict[str, float]:
    """The agent's spend so far (calls, tokens, dollars) as numbers; {} when it has none."""
    usage = getattr(agent, "usage", None)
    out: dict[str, float] = {}
    for name in ("calls", "input_tokens", "output_tokens", "cost_usd"):
        value = getattr(usage, name, None)
        if isinstance(value, int | float):
            out[name] = float(value)
    return out


def usage_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What was spent between two :func:`usage_dict` readings."""
    return {k: round(v - before.get(k, 0.0), 6) for k, v in after.items()}


def floor_failures(evaluation: Evaluation) -> list[str]:
    """Every broken floor (accuracy, SLO, failed requests), per workload, as text."""
    out: list[str] = []
    for workload in sorted(evaluation.measurements):
        verdict = evaluation.verdicts.get(workload)
        if verdict is None:
            out.append(f"{workload}: no verdict, so its floors are unknown")
            continue
        if not verdict.floors_hold:
            out += [
                f"{workload} {c.name}: {c.message}" for c in verdict.failures if not c.reference
            ]
    return out


def snippet(text: str | None, limit: int = ERROR_SNIPPET_CHARS) -> str:
    """The head line and the tail of an error (vLLM puts the cause at the end of its log)."""
    text = (text or "").strip()
    if len(text) <= limit:
        return text
    head = text.splitlines()[0][:200]
    return f"{head}\n[...]\n{text[-(limit - len(head) - 7) :]}"


def crash_summary(text: str) -> str:
    """First line plus the last meaningful log line: short enough for the agent's history."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    first, last = lines[0][:200], lines[-1][:200]
    return first if first == last else f"{first} [last log line: {last}]"


def _metrics_line(metrics: Mapping[str, Mapping[str, Any]], accuracy: Mapping[str, Any]) -> str:
    parts = []
    for workload, head in metrics.items():
        tok = head.get(THROUGHPUT.name)
        p99 = head.get(_E2EL_P99)
        acc = accuracy.get(workload)
        bits = [f"{tok:.1f} tok/s" if isinstance(tok, int | float) else "- tok/s"]
        if isinstance(p99, int | float):
            bits.append(f"e2el p99 {p99:.0f} ms")
        if isinstance(acc, int | float):
            bits.append(f"accuracy {acc:.3f}")
        parts.append(f"{workload}: {', '.join(bits)}")
    return "; ".join(parts)


def history_entry(record: Mapping[str, Any]) -> HistoryEntry:
    """A stored experiment as the agent sees it in its history."""
    return HistoryEntry(
        exp=int(record.get("exp") or 0),
        recipe_id=str(record.get("recipe_id") or ""),
        changes=dict(record.get("changes") or {}),
        rationale=str(record.get("rationale") or ""),
        status=record.get("status") or "invalid",
        score=record.get("score"),
        metrics=dict(record.get("metrics") or {}),
        reason=str(record.get("reason") or ""),
    )
