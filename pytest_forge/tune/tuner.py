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

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import AgentError, ForgeError, RecipeError
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import Baseline, Lineage, MeasuredWith, Recipe
from pytest_forge.tune import objective as obj
from pytest_forge.tune.records import (
    STORED_STATUSES,
    Evaluation,
    ExperimentOutcome,
    Status,
    TuneResult,
    crash_summary,
    floor_failures,
    history_entry,
    now_iso,
    serving_setup,
    snippet,
    usage_delta,
    usage_dict,
)
from pytest_forge.tune.replay import derive, measurement_from_dict, replay
from pytest_forge.tune.store import RunStore
from pytest_forge.tune.writeback import WriteBackConflict, write_back

if TYPE_CHECKING:
    from pytest_forge.tune.agent import Agent
    from pytest_forge.verdict import Verdict


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


def baseline_from(
    measurement: Measurement, verdict: Verdict | None, measured_with: MeasuredWith
) -> Baseline:
    """A recipe baseline from a measurement: the gate's own conversion (medians over repeats)."""
    from pytest_forge.pipeline import baseline_from as pipeline_baseline_from

    accuracy = verdict.accuracy if verdict is not None else None
    return pipeline_baseline_from(measurement, accuracy, measured_with)


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
        self._usage0 = usage_dict(agent)
        state = replay(store.experiments(), recipe, options.objective, store.path)
        self._records = state.records
        self._prior_elapsed = state.prior_elapsed
        self._prior_cost = state.prior_cost
        self._reference = state.reference
        self._best = state.best
        self._best_score = state.best_score
        self._best_measurements = state.best_measurements
        self._kept_rationales = state.kept_rationales
        self._already_written = state.already_written
        self._baseline_error: str | None = None
        self._result: TuneResult | None = None
        if self._records and not self._already_written:
            # Cheap and idempotent; repairs a best_recipe.yaml a kill left one step behind.
            self._write_best(self._best)

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
        now = usage_dict(self.agent).get("cost_usd", 0.0)
        return self._prior_cost + max(0.0, now - self._usage0.get("cost_usd", 0.0))

    # -- resume ------------------------------------------------------------------------
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
        t_start, started_at = self.clock(), now_iso()
        error = None
        if self._baseline_error is None:
            evaluation = self._evaluate(self.recipe)
            problem = obj.check_reference(self.objective.name, evaluation.measurements)
            if evaluation.error:
                error = snippet(evaluation.error)
                problem = f"the committed recipe failed to serve: {crash_summary(error)}"
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
        floors = floor_failures(evaluation)
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
        t_start, started_at = self.clock(), now_iso()
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
        usage_before = usage_dict(self.agent)

        def finish(status: Status, **kw: Any) -> ExperimentOutcome:
            outcome = self._outcome(
                exp=exp,
                slot=slot,
                status=status,
                parent_id=parent.content_hash,
                usage=usage_delta(usage_before, usage_dict(self.agent)),
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
            candidate = derive(parent, changes, rationale)
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
            tail = snippet(evaluation.error)
            return finish(
                "crashed",
                candidate=candidate,
                changes=changes,
                rationale=rationale,
                reason=f"crashed: {crash_summary(evaluation.error)}",
                error=tail,
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
        broken = floor_failures(evaluation)
        noise = obj.noise_band(
            self.objective.name,
            evaluation.measurements,
            self._best_measurements,
            self.options.noise_sigmas,
        )
        decision = obj.decide(
            score, self._best_score, not broken, self.options.min_improvement, noise
        )
        reason = decision.reason
        if broken:
            reason += ": " + "; ".join(broken)
        outcome = finish(
            "kept" if decision.keep else "rejected",
            candidate=candidate,
            changes=changes,
            rationale=rationale,
            reason=reason,
            evaluation=evaluation,
            score=score,
            noise=noise,
            floors_hold=not broken,
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
                    f"{crash_summary(evaluation.error)}",
                    confirmation_error=snippet(evaluation.error),
                )
            try:
                confirmed = obj.score(self.objective.name, evaluation.measurements, self._reference)
            except ForgeError as exc:
                return self._untouched(f"the confirmation run of {best_id} cannot be scored: {exc}")
            floors = floor_failures(evaluation)
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

        try:
            winner, path = self._write_winner(measurements, accuracy)
        except WriteBackConflict as exc:
            return self._untouched(
                f"winner {best_id} not written: {exc}. The winner is in "
                f"{self.store.best_recipe_path}: apply it by hand, or tune the edited recipe "
                "in a new run",
                confirmed=confirmed,
                confirmation=evaluation,
                failed=True,
            )
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
        """The best recipe, as the committed recipe's next generation: only what the tune
        changed, applied to the recipe file as it is now (see writeback.py)."""
        committed = self.recipe
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
        )
        return write_back(committed, winner, baselines)

    def _untouched(
        self,
        why: str,
        *,
        confirmed: float | None = None,
        confirmation: Evaluation | None = None,
        confirmation_error: str | None = None,
        failed: bool = False,
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
                failed=failed,
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
            history=[history_entry(r) for r in self._records],
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
            recipe=serving_setup(candidate) if candidate is not None else None,
            measurements={w: m.to_dict() for w, m in measurements.items()},
        )

    def _append(self, outcome: ExperimentOutcome) -> None:
        record = outcome.to_record()
        assert record["status"] in STORED_STATUSES, record["status"]
        self.store.append_experiment(record)
        self._records.append(record)

    def _write_best(self, recipe: Recipe) -> None:
        self.store.write_best_recipe(recipe)


__all__ = [
    "Evaluation",
    "ExperimentOutcome",
    "TuneOptions",
    "TuneResult",
    "Tuner",
    "baseline_from",
    "measurement_from_dict",
]
