"""The tuning loop: baseline, one agent-proposed mutation per slot, keep or revert, confirm.

Each pytest tune item calls one method of :class:`Tuner`: ``run_baseline()`` (exp 0, the
committed recipe measured now: the reference every score is relative to), ``run_slot(n)``
(one experiment) and ``finalize()`` (re-measure the winner and write it into ``recipes/``).

Every experiment is appended to the run store the moment it ends, with the full
``Measurement.to_dict()`` of each workload, so a Tuner built over an existing store replays it
(reference, best recipe, best score, spend, time used) and never re-runs a stored
experiment: a SIGKILL costs at most the experiment in flight.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_forge.errors import AgentError, ForgeError, RecipeError
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import Baseline, Lineage, MeasuredWith, Quant, Recipe
from pytest_forge.tune import objective as obj
from pytest_forge.tune.store import RunStore

if TYPE_CHECKING:
    from pytest_forge.pipeline import CaseResult
    from pytest_forge.tune.agent import Agent, HistoryEntry
    from pytest_forge.verdict import Verdict

Status = Literal["baseline", "kept", "rejected", "invalid", "crashed", "skipped", "error"]
# What the agent may see in its history (skipped and error outcomes are never stored).
STORED_STATUSES = ("baseline", "kept", "rejected", "invalid", "crashed")

# How much of a crash's text (message + vLLM log tail) is stored and shown to the agent.
ERROR_SNIPPET_CHARS = 2000


@dataclass(frozen=True)
class TuneOptions:
    budget: int  # candidate experiments per recipe (the baseline is not one)
    max_hours: float | None = None  # active tuning time, counted across resumes
    max_dollars: float | None = None  # agent spend, counted across resumes
    min_improvement: float = 0.02
    objective: str = "throughput"
    patience: int = 3  # converged after this many experiments in a row without a keep
    noise_sigmas: float = 2.0

    def __post_init__(self) -> None:
        obj.objective(self.objective)  # raises, naming the valid choices
        if self.budget < 0:
            raise ForgeError(f"tune budget must be >= 0, got {self.budget}")
        if self.patience < 1:
            raise ForgeError(f"tune patience must be >= 1, got {self.patience}")
        if self.min_improvement < 0:
            raise ForgeError(f"min improvement must be >= 0, got {self.min_improvement}")
        if self.noise_sigmas < 0:
            raise ForgeError(f"noise sigmas must be >= 0, got {self.noise_sigmas}")
        if self.max_hours is not None and self.max_hours <= 0:
            raise ForgeError(f"max hours must be > 0, got {self.max_hours}")
        if self.max_dollars is not None and self.max_dollars < 0:
            raise ForgeError(f"max dollars must be >= 0, got {self.max_dollars}")


@dataclass
class Evaluation:
    """One recipe through the pipeline: one server boot, every workload of the recipe."""

    measurements: dict[str, Measurement]
    verdicts: dict[str, Verdict]
    error: str | None = None  # boot failure or death, with the vLLM log tail
    # The gate's per-workload results, for the summary table (empty where no pipeline ran).
    cases: list[CaseResult] = field(default_factory=list)


@dataclass
class ExperimentOutcome:
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

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        del record["resumed"]
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any], resumed: bool = True) -> ExperimentOutcome:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in record.items() if k in names}
        data["resumed"] = resumed
        for key in ("changes", "metrics", "accuracy", "usage", "measurements"):
            data[key] = data.get(key) or {}
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
        return " — ".join(p for p in parts if p)


@dataclass(frozen=True)
class TuneResult:
    winner: Recipe | None  # the recipe written to recipes/, None when nothing was written
    path: Path | None
    baseline_score: float | None
    best_score: float | None  # best score during the tune
    message: str
    confirmed_score: float | None = None  # the winner's score on re-measurement
    confirmation: Evaluation | None = None  # the winner's re-measurement, when it ran


def baseline_from(
    measurement: Measurement, verdict: Verdict | None, measured_with: MeasuredWith
) -> Baseline:
    """A recipe baseline from a measurement: the gate's own conversion (medians over repeats)."""
    from pytest_forge.pipeline import baseline_from as pipeline_baseline_from

    accuracy = verdict.accuracy if verdict is not None else None
    return pipeline_baseline_from(measurement, accuracy, measured_with)


def measurement_from_dict(data: Mapping[str, Any]) -> Measurement:
    """Rebuild a stored ``Measurement.to_dict()`` (summaries only, no per-request records)."""
    return Measurement.from_dict(data)


class Tuner:
    """The tune of one committed recipe, driven one step at a time."""

    def __init__(
        self,
        recipe: Recipe,
        agent: Agent,
        store: RunStore,
        options: TuneOptions,
        *,
        hardware: Any,
        hardware_class: str,
        search_space: Any,
        evaluate: Callable[[Recipe], Evaluation],
        measured_with: Callable[[], MeasuredWith],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recipe = recipe
        self.agent = agent
        self.store = store
        self.options = options
        self.hardware = hardware
        self.hardware_class = hardware_class
        self.search_space = search_space
        self.evaluate = evaluate
        self.measured_with = measured_with
        self.clock = clock
        self.objective = obj.objective(options.objective)

        self._t0 = clock()
        self._usage0 = _usage_dict(agent)
        self._records: list[dict[str, Any]] = []
        self._prior_elapsed = 0.0
        self._prior_cost = 0.0
        self._reference: dict[str, Measurement] | None = None
        self._best = recipe
        self._best_score = 1.0
        self._best_measurements: dict[str, Measurement] | None = None
        self._kept_rationales: list[str] = []
        self._baseline_error: str | None = None
        self._already_written = False
        self._result: TuneResult | None = None
        self._replay(store.experiments())

    # -- state -------------------------------------------------------------------------
    @property
    def best(self) -> Recipe:
        return self._best

    @property
    def best_score(self) -> float:
        return self._best_score

    @property
    def experiments(self) -> list[dict[str, Any]]:
        return list(self._records)

    def elapsed_s(self) -> float:
        """Active tuning time: this process's plus what the stored experiments had used."""
        return self._prior_elapsed + (self.clock() - self._t0)

    def spent_usd(self) -> float:
        now = _usage_dict(self.agent).get("cost_usd", 0.0)
        return self._prior_cost + max(0.0, now - self._usage0.get("cost_usd", 0.0))

    # -- resume ------------------------------------------------------------------------
    def _replay(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        where = self.store.path / "experiments.jsonl"
        base = records[0]
        if base.get("status") != "baseline" or base.get("exp") != 0:
            raise ForgeError(f"{where}:1: the first experiment of a run must be the baseline")
        for number, record in enumerate(records):
            if record.get("exp") != number:
                raise ForgeError(
                    f"{where}:{number + 1}: experiment number {record.get('exp')} out of "
                    f"sequence (expected {number})"
                )
        if base.get("objective") != self.options.objective:
            raise ForgeError(
                f"{self.store.path}: this run tunes for {base.get('objective')!r}, not "
                f"{self.options.objective!r}; resume with the run's objective or start a new run"
            )
        kept = [r for r in records if r.get("status") == "kept"]
        if base.get("recipe_id") != self.recipe.content_hash:
            # finalize() writes the winner and then marks the run completed: a kill in
            # between leaves recipes/ holding this run's winner. Anything else is an edit.
            if (
                kept
                and self.recipe.content_hash == kept[-1].get("recipe_id")
                and self.recipe.lineage.parent_id == base.get("recipe_id")
            ):
                self._already_written = True
            else:
                raise ForgeError(
                    f"{self.recipe.path}: the recipe changed since tune run {self.store.name} "
                    f"measured it (content hash {base.get('recipe_id')} then, "
                    f"{self.recipe.content_hash} now); start a new tune run"
                )
        self._reference = {
            w: measurement_from_dict(d) for w, d in (base.get("measurements") or {}).items()
        }
        best = self.recipe if not self._already_written else self._committed_from(base)
        self._best_measurements = self._reference
        for record in records:
            self._records.append(record)
            cost = (record.get("usage") or {}).get("cost_usd")
            if isinstance(cost, int | float):
                self._prior_cost += float(cost)
            if isinstance(record.get("elapsed_s"), int | float):
                self._prior_elapsed = max(self._prior_elapsed, float(record["elapsed_s"]))
            if record.get("status") != "kept":
                continue
            try:
                best = self._derive(best, record.get("changes") or {}, record.get("rationale"))
            except RecipeError as exc:
                raise ForgeError(
                    f"{where}: cannot replay kept exp {record.get('exp')}: {exc}"
                ) from None
            if best.content_hash != record.get("recipe_id"):
                raise ForgeError(
                    f"{where}: replaying kept exp {record.get('exp')} gives recipe "
                    f"{best.content_hash}, not the stored {record.get('recipe_id')}"
                )
            self._best_score = float(record["score"])
            self._best_measurements = {
                w: measurement_from_dict(d) for w, d in (record.get("measurements") or {}).items()
            }
            self._kept_rationales.append(str(record.get("rationale") or ""))
        self._best = best
        if not self._already_written:
            # Cheap and idempotent; repairs a best_recipe.yaml a kill left one step behind.
            self._write_best(best)

    def _committed_from(self, base: Mapping[str, Any]) -> Recipe:
        """The committed recipe as the baseline measured it (recipes/ now holds the winner)."""
        setup = base.get("recipe") or {}
        return self.recipe.model_copy(
            update={
                "config": setup.get("config", {}),
                "compilation": setup.get("compilation"),
                "quant": Quant.model_validate(setup.get("quant") or {}),
                "env": setup.get("env", {}),
                "kernels": setup.get("kernels", []),
                "lineage": Lineage.model_validate(setup.get("lineage") or {}),
            }
        )

    def _stored(self, *, slot: int | None, baseline: bool = False) -> dict[str, Any] | None:
        for record in self._records:
            if baseline and record.get("status") == "baseline":
                return record
            if not baseline and record.get("slot") == slot and record.get("status") != "baseline":
                return record
        return None

    # -- the steps ---------------------------------------------------------------------
    def run_baseline(self) -> ExperimentOutcome:
        """Exp 0: the committed recipe measured now; its measurements anchor every score."""
        stored = self._stored(slot=None, baseline=True)
        if stored is not None:
            return ExperimentOutcome.from_record(stored)
        t_start, started_at = self.clock(), _now()
        error = None
        if self._baseline_error is None:
            evaluation = self._evaluate(self.recipe)
            problem = obj.check_reference(self.objective.name, evaluation.measurements)
            if evaluation.error:
                error = _snippet(evaluation.error)
                problem = f"the committed recipe failed to serve: {_crash_summary(error)}"
            if problem is None:
                return self._store_baseline(evaluation, t_start, started_at)
            # Kept short: every skipped slot repeats it; the outcome carries the log tail.
            self._baseline_error = f"baseline of {self.recipe.id} unusable: {problem}"
        # Not stored: a resumed run measures the baseline again rather than being stuck.
        return self._outcome(
            exp=None,
            slot=None,
            status="error",
            candidate=self.recipe,
            parent_id=self.recipe.lineage.parent_id,
            reason=self._baseline_error + (f"\n{error}" if error else ""),
            error=error,
            t_start=t_start,
            started_at=started_at,
        )

    def _store_baseline(
        self, evaluation: Evaluation, t_start: float, started_at: str
    ) -> ExperimentOutcome:
        floors = _floor_failures(evaluation)
        reason = "reference for every score in this run"
        if floors:
            reason += (
                "; note: the committed recipe itself breaks a floor ("
                + "; ".join(floors)
                + "), and candidates must hold every floor"
            )
        outcome = self._outcome(
            exp=0,
            slot=None,
            status="baseline",
            candidate=self.recipe,
            parent_id=self.recipe.lineage.parent_id,
            rationale="committed recipe",
            reason=reason,
            evaluation=evaluation,
            score=1.0,
            floors_hold=not floors,
            t_start=t_start,
            started_at=started_at,
        )
        outcome.best_score = 1.0
        self._append(outcome)
        self._reference = dict(evaluation.measurements)
        self._best_measurements = self._reference
        self._write_best(self.recipe)
        return outcome

    def run_slot(self, slot: int) -> ExperimentOutcome:
        """One experiment: one proposal from the agent, measured, then kept or reverted."""
        stored = self._stored(slot=slot)
        if stored is not None:
            return ExperimentOutcome.from_record(stored)
        if self._stored(slot=None, baseline=True) is None and self._baseline_error is None:
            self.run_baseline()  # a slot without its reference cannot be scored
        t_start, started_at = self.clock(), _now()
        stop = self._stop_reason(slot)
        if stop is not None:
            return self._outcome(
                exp=None,
                slot=slot,
                status="skipped",
                candidate=None,
                parent_id=self._best.content_hash,
                reason=stop,
                t_start=t_start,
                started_at=started_at,
            )

        exp = len(self._records)
        parent = self._best
        usage_before = _usage_dict(self.agent)

        def finish(status: Status, **kw: Any) -> ExperimentOutcome:
            outcome = self._outcome(
                exp=exp,
                slot=slot,
                status=status,
                parent_id=parent.content_hash,
                usage=_usage_delta(usage_before, _usage_dict(self.agent)),
                t_start=t_start,
                started_at=started_at,
                **kw,
            )
            outcome.best_score = self._best_score if status != "kept" else outcome.score
            self._append(outcome)
            return outcome

        try:
            proposal = self.agent.propose(self._context())
        except AgentError as exc:
            return finish("invalid", candidate=None, reason=f"agent: {exc}")
        changes = dict(proposal.changes)
        rationale = str(proposal.rationale)
        try:
            candidate = self._derive(parent, changes, rationale)
        except RecipeError as exc:
            return finish(
                "invalid", candidate=None, changes=changes, rationale=rationale, reason=str(exc)
            )
        twin = self._tried(candidate.content_hash)
        if twin is not None:
            return finish(
                "invalid",
                candidate=candidate,
                changes=changes,
                rationale=rationale,
                reason=f"recipe {candidate.content_hash} was already measured as exp "
                f"{twin['exp']} ({twin['status']}); not measured again",
            )

        evaluation = self._evaluate(candidate)
        if evaluation.error:
            snippet = _snippet(evaluation.error)
            return finish(
                "crashed",
                candidate=candidate,
                changes=changes,
                rationale=rationale,
                reason=f"crashed: {_crash_summary(evaluation.error)}",
                error=snippet,
            )
        assert self._best_measurements is not None and self._reference is not None
        try:
            score = obj.score(self.objective.name, evaluation.measurements, self._reference)
        except ForgeError as exc:
            return finish(
                "crashed",
                candidate=candidate,
                changes=changes,
                rationale=rationale,
                reason=f"could not be scored: {exc}",
                evaluation=evaluation,
            )
        floor_failures = _floor_failures(evaluation)
        noise = obj.noise_band(
            self.objective.name,
            evaluation.measurements,
            self._best_measurements,
            self.options.noise_sigmas,
        )
        decision = obj.decide(
            score, self._best_score, not floor_failures, self.options.min_improvement, noise
        )
        reason = decision.reason
        if floor_failures:
            reason += ": " + "; ".join(floor_failures)
        outcome = finish(
            "kept" if decision.keep else "rejected",
            candidate=candidate,
            changes=changes,
            rationale=rationale,
            reason=reason,
            evaluation=evaluation,
            score=score,
            noise=noise,
            floors_hold=not floor_failures,
        )
        if decision.keep:
            self._best = candidate
            self._best_score = score
            self._best_measurements = dict(evaluation.measurements)
            self._kept_rationales.append(rationale)
            self._write_best(candidate)
        return outcome

    def finalize(self, remeasure: bool = True) -> TuneResult:
        """Confirm the best candidate by re-measuring it, then write it to the recipe file.

        ``remeasure=False`` trusts the tune's own measurement of the winner (stored with it,
        so this works after a resume too). Idempotent: a second call returns the first result.
        """
        if self._result is not None:
            return self._result
        rid, best_id = self.recipe.id, self._best.content_hash
        if self._already_written:
            return self._complete(
                TuneResult(
                    self.recipe,
                    self.recipe.path,
                    1.0,
                    self._best_score,
                    f"{rid}: this run's winner {best_id} is already written to "
                    f"{self.recipe.path} (the run was interrupted just after writing it)",
                )
            )
        if self._reference is None:
            if self._baseline_error is None:
                # Nothing ran: leave the run resumable rather than marking it completed.
                return TuneResult(
                    None, None, None, None, f"{rid}: no baseline was measured; recipes/ untouched"
                )
            return self._untouched(f"tune stopped: {self._baseline_error}")
        if best_id == self.recipe.content_hash:
            return self._untouched("no candidate beat the committed baseline")
        if self.recipe.path is None:
            return self._untouched(f"winner {best_id} found but the recipe has no file")

        if remeasure:
            evaluation = self._evaluate(self._best)
            if evaluation.error:
                return self._untouched(
                    f"the confirmation run of candidate {best_id} failed: "
                    f"{_crash_summary(evaluation.error)}",
                    confirmation_error=_snippet(evaluation.error),
                )
            try:
                confirmed = obj.score(self.objective.name, evaluation.measurements, self._reference)
            except ForgeError as exc:
                return self._untouched(f"the confirmation run of {best_id} cannot be scored: {exc}")
            floors = _floor_failures(evaluation)
            needed = 1.0 + self.options.min_improvement
            if floors or confirmed < needed:
                why = (
                    f"breaks a floor ({'; '.join(floors)})"
                    if floors
                    else f"scored {confirmed:.3f} vs the baseline's 1.000, below the {needed:.3f} "
                    f"a win needs (min improvement {self.options.min_improvement:.1%})"
                )
                return self._untouched(
                    f"candidate {best_id} (tune score {self._best_score:.3f}) did not hold up "
                    f"on re-measurement: it {why}",
                    confirmed=confirmed,
                    confirmation=evaluation,
                )
            measurements, accuracy = (
                evaluation.measurements,
                {w: v.accuracy for w, v in evaluation.verdicts.items()},
            )
        else:
            assert self._best_measurements is not None
            evaluation, confirmed = None, self._best_score
            measurements = self._best_measurements
            kept = [r for r in self._records if r.get("status") == "kept"]
            accuracy = dict(kept[-1].get("accuracy") or {})

        winner, path = self._write_winner(measurements, accuracy)
        changes = ", ".join(
            f"{k}: {v['from']!r} -> {v['to']!r}" for k, v in self.recipe.diff(winner).items()
        )
        message = (
            f"{rid}: candidate {best_id} confirmed at score {confirmed:.3f} vs the baseline's "
            f"1.000 (tune score {self._best_score:.3f}); written to {path} as generation "
            f"{winner.lineage.generation} ({changes})"
        )
        return self._complete(
            TuneResult(winner, path, 1.0, self._best_score, message, confirmed, evaluation),
            confirmation=evaluation,
        )

    def _write_winner(
        self, measurements: Mapping[str, Measurement], accuracy: Mapping[str, float | None]
    ) -> tuple[Recipe, Path]:
        """The best recipe, as the committed recipe's next generation, into its own file."""
        committed = self.recipe
        assert committed.path is not None
        with_ = self.measured_with()
        baselines = {
            w: baseline_from(m, None, with_).model_copy(update={"accuracy": accuracy.get(w)})
            for w, m in sorted(measurements.items())
        }
        winner = self._best.model_copy(
            update={
                "lineage": Lineage(
                    generation=committed.lineage.generation + 1,
                    parent_id=committed.content_hash,
                    rationale="; ".join(r for r in self._kept_rationales if r) or None,
                )
            }
        ).with_baselines(baselines)
        return winner, winner.save(committed.path)

    def _untouched(
        self,
        why: str,
        *,
        confirmed: float | None = None,
        confirmation: Evaluation | None = None,
        confirmation_error: str | None = None,
    ) -> TuneResult:
        base = 1.0 if self._reference is not None else None
        best = self._best_score if self._reference is not None else None
        return self._complete(
            TuneResult(
                None,
                None,
                base,
                best,
                f"{self.recipe.id}: {why}; recipes/ untouched",
                confirmed,
                confirmation,
            ),
            confirmation=confirmation,
            confirmation_error=confirmation_error,
        )

    # -- helpers -----------------------------------------------------------------------
    def _complete(
        self,
        result: TuneResult,
        *,
        confirmation: Evaluation | None = None,
        confirmation_error: str | None = None,
    ) -> TuneResult:
        summary: dict[str, Any] = {
            "recipe_id": self.recipe.id,
            "winner": result.winner.content_hash if result.winner is not None else None,
            "path": str(result.path) if result.path is not None else None,
            "baseline_score": result.baseline_score,
            "best_score": result.best_score,
            "confirmed_score": result.confirmed_score,
            "message": result.message,
            "experiments": len(self._records),
            "elapsed_s": round(self.elapsed_s(), 3),
            "agent_cost_usd": round(self.spent_usd(), 6),
        }
        if confirmation is not None:
            summary["confirmation"] = {
                w: m.headline() for w, m in confirmation.measurements.items()
            }
        if confirmation_error is not None:
            summary["confirmation_error"] = confirmation_error
        self.store.mark_completed(summary)
        self._result = result
        return result

    def _evaluate(self, recipe: Recipe) -> Evaluation:
        try:
            return self.evaluate(recipe)
        except ForgeError as exc:
            # A boot failure may arrive raised rather than returned; either way it is a
            # crash of this recipe, not of the tune.
            return Evaluation({}, {}, error=str(exc) or type(exc).__name__)

    def _derive(self, parent: Recipe, changes: Mapping[str, Any], rationale: Any) -> Recipe:
        candidate = parent.with_changes(changes)
        return candidate.model_copy(
            update={
                "lineage": Lineage(
                    generation=parent.lineage.generation + 1,
                    parent_id=parent.content_hash,
                    rationale=str(rationale) if rationale else None,
                )
            }
        )

    def _tried(self, content_hash: str) -> dict[str, Any] | None:
        for record in self._records:
            if record.get("recipe_id") == content_hash and record.get("status") != "invalid":
                return record
        return None

    def _stop_reason(self, slot: int) -> str | None:
        if self._baseline_error is not None:
            return f"the tune cannot proceed: {self._baseline_error}"
        o = self.options
        done = [r for r in self._records if r.get("status") != "baseline"]
        if len(done) >= o.budget or slot > o.budget:
            return f"budget of {o.budget} experiments used ({len(done)} run)"
        if o.max_hours is not None and self.elapsed_s() >= o.max_hours * 3600:
            return (
                f"time limit of {o.max_hours:g} h reached "
                f"({self.elapsed_s() / 3600:.2f} h of tuning so far)"
            )
        spent = self.spent_usd()
        if o.max_dollars is not None and spent >= o.max_dollars:
            return f"budget of ${o.max_dollars:.2f} spent (${spent:.2f} on agent calls)"
        streak = 0
        for record in reversed(done):
            if record.get("status") == "kept":
                break
            streak += 1
        if streak >= o.patience:
            return (
                f"converged: {streak} experiments in a row without a keep (patience "
                f"{o.patience}, min improvement {o.min_improvement:.1%}); best score "
                f"{self._best_score:.3f}"
            )
        return None

    def _objective_text(self) -> str:
        o = self.objective
        ratio = "candidate / baseline" if o.higher_is_better else "baseline / candidate"
        return (
            f"{o.describe()}; score = geometric mean over the workloads of {ratio}, "
            "so the baseline scores 1.0"
        )

    def _context(self) -> Any:
        from pytest_forge.tune.agent import ProposalContext

        return ProposalContext(
            recipe=self._best,
            hardware=self.hardware,
            hardware_class=self.hardware_class,
            search_space=self.search_space,
            history=[_history_entry(r) for r in self._records],
            objective=self._objective_text(),
            tried_hashes={str(r["recipe_id"]) for r in self._records if r.get("recipe_id")},
        )

    def _outcome(
        self,
        *,
        exp: int | None,
        slot: int | None,
        status: Status,
        candidate: Recipe | None,
        parent_id: str | None,
        t_start: float,
        started_at: str,
        reason: str = "",
        changes: Mapping[str, Any] | None = None,
        rationale: str = "",
        evaluation: Evaluation | None = None,
        score: float | None = None,
        noise: float | None = None,
        floors_hold: bool | None = None,
        error: str | None = None,
        usage: dict[str, float] | None = None,
    ) -> ExperimentOutcome:
        measurements = evaluation.measurements if evaluation is not None else {}
        verdicts = evaluation.verdicts if evaluation is not None else {}
        return ExperimentOutcome(
            exp=exp,
            slot=slot,
            status=status,
            recipe_id=candidate.content_hash if candidate is not None else None,
            generation=candidate.lineage.generation if candidate is not None else None,
            parent_id=parent_id,
            changes=dict(changes or {}),
            rationale=rationale,
            score=score,
            metrics={w: m.headline() for w, m in measurements.items()},
            accuracy={w: v.accuracy for w, v in verdicts.items()},
            reason=reason,
            usage=usage or {},
            started_at=started_at,
            duration_s=round(self.clock() - t_start, 3),
            objective=self.objective.name,
            noise=noise,
            floors_hold=floors_hold,
            error=error,
            elapsed_s=round(self.elapsed_s(), 3),
            recipe=_serving(candidate) if candidate is not None else None,
            measurements={w: m.to_dict() for w, m in measurements.items()},
        )

    def _append(self, outcome: ExperimentOutcome) -> None:
        record = outcome.to_record()
        assert record["status"] in STORED_STATUSES, record["status"]
        self.store.append_experiment(record)
        self._records.append(record)

    def _write_best(self, recipe: Recipe) -> None:
        self.store.write_best_recipe(recipe)


# -- module helpers ----------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _serving(recipe: Recipe) -> dict[str, Any]:
    data = recipe.model_dump(mode="json")
    keys = ("model", "config", "compilation", "quant", "env", "kernels", "lineage")
    return {k: data.get(k) for k in keys}


def _usage_dict(agent: Any) -> dict[str, float]:
    usage = getattr(agent, "usage", None)
    out: dict[str, float] = {}
    for name in ("calls", "input_tokens", "output_tokens", "cost_usd"):
        value = getattr(usage, name, None)
        if isinstance(value, int | float):
            out[name] = float(value)
    return out


def _usage_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 6) for k, v in after.items()}


def _floor_failures(evaluation: Evaluation) -> list[str]:
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


def _snippet(text: str | None, limit: int = ERROR_SNIPPET_CHARS) -> str:
    """The head line and the tail of an error (vLLM puts the cause at the end of its log)."""
    text = (text or "").strip()
    if len(text) <= limit:
        return text
    head = text.splitlines()[0][:200]
    return f"{head}\n[...]\n{text[-(limit - len(head) - 7) :]}"


def _crash_summary(text: str) -> str:
    """First line plus the last meaningful log line: short enough for the agent's history."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    first, last = lines[0][:200], lines[-1][:200]
    return first if first == last else f"{first} [last log line: {last}]"


def _metrics_line(metrics: Mapping[str, Mapping[str, Any]], accuracy: Mapping[str, Any]) -> str:
    parts = []
    for workload, head in metrics.items():
        tok = head.get("output_throughput")
        p99 = head.get("e2el_p99_ms")
        acc = accuracy.get(workload)
        bits = [f"{tok:.1f} tok/s" if isinstance(tok, int | float) else "- tok/s"]
        if isinstance(p99, int | float):
            bits.append(f"e2el p99 {p99:.0f} ms")
        if isinstance(acc, int | float):
            bits.append(f"accuracy {acc:.3f}")
        parts.append(f"{workload}: {', '.join(bits)}")
    return "; ".join(parts)


def _history_entry(record: Mapping[str, Any]) -> HistoryEntry:
    from pytest_forge.tune.agent import HistoryEntry

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


__all__ = [
    "Evaluation",
    "ExperimentOutcome",
    "TuneOptions",
    "TuneResult",
    "Tuner",
    "baseline_from",
    "measurement_from_dict",
]
