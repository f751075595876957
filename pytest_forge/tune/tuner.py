"""The tuning loop: baseline, one agent-proposed mutation per slot, keep or revert, confirm.

Each pytest tune item calls one method of :class:`Tuner`: ``run_baseline()`` (exp 0, the
committed recipe measured now: the reference every score is relative to), ``run_slot(n)``
(one experiment) and ``finalize()`` (re-measure the winner and write it into ``recipes/``,
see ``finalize.py``).

Every experiment is appended to the run store the moment it ends, with the full
``Measurement.to_dict()`` of each workload, so a Tuner built over an existing store replays it
(reference, best recipe, best score, spend, time used; see ``replay.py`` and ``state.py``)
and never re-runs a stored experiment: a SIGKILL costs at most the experiment in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from pytest_forge.errors import AgentError, ForgeError, RecipeError
from pytest_forge.recipe import MeasuredWith, Recipe
from pytest_forge.results import Evaluation
from pytest_forge.tune import objective as obj
from pytest_forge.tune import pareto_tune
from pytest_forge.tune.agent_types import Agent, ProposalContext
from pytest_forge.tune.confirmation import ABConfirmation
from pytest_forge.tune.finalize import finalize
from pytest_forge.tune.layer_spaces import TuneLayers
from pytest_forge.tune.layers import LAYER_BASELINE, LayerSpaces
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.records import (
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
from pytest_forge.tune.reference_outputs import (
    Evaluate,
    baseline_floor_failures,
    foreign_recordings,
    save_exp0_outputs,
)
from pytest_forge.tune.replay import derive
from pytest_forge.tune.state import TuneState
from pytest_forge.tune.store import RunStore


class Tuner(TuneState):
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
        evaluate: Evaluate,
        measured_with: Callable[[], MeasuredWith],
        clock: Callable[[], float] = time.monotonic,
        confirm: Callable[[Recipe, Recipe], ABConfirmation] | None = None,
        layer_spaces: LayerSpaces | None = None,
    ) -> None:
        super().__init__(
            recipe,
            agent,
            store,
            options,
            evaluate=evaluate,
            measured_with=measured_with,
            clock=clock,
            confirm=confirm,
        )
        self.hardware = hardware
        self.hardware_class = hardware_class
        self.search_space = search_space  # the class's whole space; each layer gets its part
        # The layers climbed (layers.py); layer_spaces: each layer's space (tune_items builds
        # it with the quantization layer's gates), else cut from search_space.
        self.layers = TuneLayers.for_run(options, search_space, layer_spaces, store.path)
        if self.objective.name == obj.PARETO:
            pareto_tune.restore(self)  # the best is the front's winner, not the last keep

    # -- the steps ---------------------------------------------------------------------
    def run_baseline(self) -> ExperimentOutcome:
        """Exp 0: the committed recipe measured now; its measurements anchor every score."""
        stored = self.stored(slot=None, baseline=True)
        if stored is not None:
            return ExperimentOutcome.from_record(stored)
        t_start, started_at = self.clock(), now_iso()
        error = None
        if self.baseline_error is None:
            evaluation = self.evaluate_safely(self.recipe)
            problem = obj.check_reference(self.objective.name, evaluation.measurements)
            if evaluation.error:
                error = snippet(evaluation.error)
                problem = f"the committed recipe failed to serve: {crash_summary(error)}"
            if problem is None:
                return self._store_baseline(evaluation, t_start, started_at)
            # Kept short: every skipped slot repeats it; the outcome carries the log tail.
            self.baseline_error = f"baseline of {self.recipe.id} unusable: {problem}"
        # Not stored: a resumed run measures the baseline again rather than being stuck.
        return self._outcome(
            exp=None,
            slot=None,
            status="error",
            candidate=self.recipe,
            parent_id=self.recipe.lineage.parent_id,
            reason=self.baseline_error + (f"\n{error}" if error else ""),
            error=error,
            t_start=t_start,
            started_at=started_at,
        )

    def _store_baseline(
        self, evaluation: Evaluation, t_start: float, started_at: str
    ) -> ExperimentOutcome:
        # A recording from other hardware judges nothing here (reference_outputs.py).
        foreign = foreign_recordings(self.recipe, self.hardware, evaluation)
        floors = baseline_floor_failures(evaluation, foreign)
        reason = "reference for every score in this run"
        if foreign:
            reason += "; " + "; ".join(foreign[w] for w in sorted(foreign))
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
        outcome.layer = LAYER_BASELINE
        # Before the record: a resume that finds the baseline finds its outputs too.
        self.reference_outputs = save_exp0_outputs(self.store.path, evaluation.measurements)
        self.append(outcome)
        self.standing.reference = dict(evaluation.measurements)
        self.standing.best_measurements = self.standing.reference
        self.write_best(self.recipe)
        return outcome

    def run_slot(self, slot: int) -> ExperimentOutcome:
        """One experiment: one proposal from the agent, measured, then kept or reverted."""
        stored = self.stored(slot=slot)
        if stored is not None:
            return ExperimentOutcome.from_record(stored)
        if self.stored(slot=None, baseline=True) is None and self.baseline_error is None:
            self.run_baseline()  # a slot without its reference cannot be scored
        t_start, started_at = self.clock(), now_iso()
        stop = self.stop_reason(slot)
        decision = None
        if stop is None:
            decision = self.layers.decide(self.standing.records, self.best_score)
        if decision is not None and decision.layer is None:
            stop = decision.reason  # every layer of the plan converged, used its cap, or is empty
        if stop is not None:
            return self._outcome(
                exp=None,
                slot=slot,
                status="skipped",
                candidate=None,
                parent_id=self.best.content_hash,
                reason=stop,
                t_start=t_start,
                started_at=started_at,
            )

        exp = len(self.standing.records)
        parent = self.best
        usage_before = usage_dict(self.agent)
        notes: list[str] = []  # what the validation read into the agent's answer
        assert decision is not None and decision.layer is not None
        layer = decision.layer
        entering = self.layers.entering(decision, self.standing.records)

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
            outcome.best_score = self.best_score if status != "kept" else outcome.score
            outcome.notes = list(notes)
            outcome.layer = layer
            if entering:
                outcome.reason = f"{outcome.reason} [{entering}]"
            self.append(outcome)
            return outcome

        try:
            proposal = self.agent.propose(self._context(layer))
        except AgentError as exc:
            return finish("invalid", candidate=None, reason=f"agent: {exc}")
        changes = dict(proposal.changes)
        rationale = str(proposal.rationale)
        notes.extend(proposal.notes)
        off_layer = self.layers.problem(changes, layer)
        if off_layer:
            return finish(
                "invalid", candidate=None, changes=changes, rationale=rationale, reason=off_layer
            )
        try:
            candidate = derive(parent, changes, rationale)
        except RecipeError as exc:
            return finish(
                "invalid", candidate=None, changes=changes, rationale=rationale, reason=str(exc)
            )
        twin = self.tried(candidate.content_hash)
        if twin is not None:
            return finish(
                "invalid",
                candidate=candidate,
                changes=changes,
                rationale=rationale,
                reason=f"recipe {candidate.content_hash} was already measured as exp "
                f"{twin['exp']} ({twin['status']}); not measured again",
            )
        return self._measure(candidate, finish, changes=changes, rationale=rationale)

    def _measure(
        self,
        candidate: Recipe,
        finish: Callable[..., ExperimentOutcome],
        *,
        changes: dict[str, Any],
        rationale: str,
    ) -> ExperimentOutcome:
        """Measure a candidate, score it against the baseline, then keep it or not."""
        evaluation = self.evaluate_safely(candidate)
        if evaluation.error:
            return finish(
                "crashed",
                candidate=candidate,
                changes=changes,
                rationale=rationale,
                reason=f"crashed: {crash_summary(evaluation.error)}",
                error=snippet(evaluation.error),
            )
        reference, best = self.standing.reference, self.standing.best_measurements
        assert best is not None and reference is not None
        try:
            score = obj.score(self.objective.name, evaluation.measurements, reference)
        except ForgeError as exc:
            return finish(
                "crashed",
                candidate=candidate,
                changes=changes,
                rationale=rationale,
                reason=f"could not be scored: {exc}",
                evaluation=evaluation,
            )
        if self.objective.name == obj.PARETO:  # kept when it joins the front
            return pareto_tune.judge(
                self, candidate, evaluation, score, finish, changes=changes, rationale=rationale
            )
        broken = floor_failures(evaluation)
        noise = obj.noise_band(
            self.objective.name, evaluation.measurements, best, self.options.noise_sigmas
        )
        decision = obj.decide(
            score, self.best_score, not broken, self.options.min_improvement, noise
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
            self.standing.best = candidate
            self.standing.best_score = score
            self.standing.best_measurements = dict(evaluation.measurements)
            self.standing.kept_rationales.append(rationale)
            self.write_best(candidate)
        return outcome

    def finalize(self, remeasure: bool = True) -> TuneResult:
        """Confirm the best candidate by re-measuring it, then write it to the recipe file.

        ``remeasure=False`` trusts the tune's own measurement of the winner (stored with it,
        so this works after a resume too). Idempotent: a second call returns the first result.
        """
        return finalize(self, remeasure)

    # -- helpers -----------------------------------------------------------------------
    def _objective_text(self) -> str:
        o = self.objective
        ratio = "candidate / baseline" if o.higher_is_better else "baseline / candidate"
        return (
            f"{o.describe()}; score = geometric mean over the workloads of {ratio}, "
            "so the baseline scores 1.0"
        )

    def _context(self, layer: int) -> ProposalContext:
        records = self.standing.records
        return ProposalContext(
            recipe=self.best,
            hardware=self.hardware,
            hardware_class=self.hardware_class,
            search_space=self.layers.space(layer),  # type: ignore[arg-type]  # None: unrestricted
            history=[history_entry(r) for r in records],
            objective=self._objective_text(),
            tried_hashes={str(r["recipe_id"]) for r in records if r.get("recipe_id")},
            layer=layer,
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
