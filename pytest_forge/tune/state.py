"""A tune's bookkeeping: its standing replayed from the run store, the experiment log, the
limits, and the completion record.

:class:`TuneState` is what the tuning loop (``tuner.py``) and the winner's confirmation
(``finalize.py``) share: the committed recipe, the run store, the options, where the tune
stands (:class:`~pytest_forge.tune.replay.Standing`) and the time and money it has used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pytest_forge.errors import ForgeError
from pytest_forge.recipe import MeasuredWith, Recipe
from pytest_forge.results import Evaluation
from pytest_forge.tune import objective as obj
from pytest_forge.tune.agent_types import Agent
from pytest_forge.tune.confirmation import ABConfirmation
from pytest_forge.tune.options import TuneOptions, stop_reason
from pytest_forge.tune.records import STORED_STATUSES, ExperimentOutcome, TuneResult, usage_dict
from pytest_forge.tune.reference_outputs import (
    Evaluate,
    ReferenceOutputs,
    baseline_workloads,
    load_exp0_outputs,
)
from pytest_forge.tune.replay import replay
from pytest_forge.tune.store import RunStore


class TuneState:
    """The tune of one committed recipe: what it has stored, where it stands, what it used."""

    def __init__(
        self,
        recipe: Recipe,
        agent: Agent,
        store: RunStore,
        options: TuneOptions,
        *,
        evaluate: Evaluate,
        measured_with: Callable[[], MeasuredWith],
        clock: Callable[[], float] = time.monotonic,
        confirm: Callable[[Recipe, Recipe], ABConfirmation] | None = None,
    ) -> None:
        self.recipe = recipe
        self.agent = agent
        self.store = store
        self.options = options
        self.evaluate = evaluate
        self.measured_with = measured_with
        self.clock = clock
        # (committed, winner) -> their interleaved A/B; None: finalize re-measures instead.
        self.confirm = confirm
        self.objective = obj.objective(options.objective)
        self._t0 = clock()
        self._usage0 = usage_dict(agent)
        self.standing = replay(store.experiments(), recipe, options.objective, store.path)
        # Experiment 0's outputs, what every candidate's agreement is judged against (None
        # until the baseline is stored, or when it kept no text).
        self.reference_outputs: ReferenceOutputs | None = None
        if self.standing.records:
            workloads = baseline_workloads(self.standing.records[0])
            self.reference_outputs = load_exp0_outputs(store.path, workloads)
        # Why the committed recipe cannot be the reference (every slot is then skipped).
        self.baseline_error: str | None = None
        self.result: TuneResult | None = None  # finalize()'s, once it ran
        if self.standing.records and not self.standing.already_written:
            # Cheap and idempotent; repairs a best_recipe.yaml a kill left one step behind.
            self.write_best(self.standing.best)

    # -- where the tune stands ---------------------------------------------------------
    @property
    def best(self) -> Recipe:
        """The best recipe so far (the committed one until a candidate is kept)."""
        return self.standing.best

    @property
    def best_score(self) -> float:
        """The best recipe's score (the baseline scores 1.0)."""
        return self.standing.best_score

    @property
    def experiments(self) -> list[dict[str, Any]]:
        """Every stored experiment record, oldest first."""
        return list(self.standing.records)

    def elapsed_s(self) -> float:
        """Active tuning time: this process's plus what the stored experiments had used."""
        return self.standing.prior_elapsed + (self.clock() - self._t0)

    def spent_usd(self) -> float:
        """Agent spend in dollars: this process's plus what the stored experiments had used."""
        now = usage_dict(self.agent).get("cost_usd", 0.0)
        return self.standing.prior_cost + max(0.0, now - self._usage0.get("cost_usd", 0.0))

    def stored(self, *, slot: int | None, baseline: bool = False) -> dict[str, Any] | None:
        """The stored record of the baseline, or of candidate ``slot`` (None: not run yet)."""
        for record in self.standing.records:
            if baseline and record.get("status") == "baseline":
                return record
            if not baseline and record.get("slot") == slot and record.get("status") != "baseline":
                return record
        return None

    def tried(self, content_hash: str) -> dict[str, Any] | None:
        """The stored experiment that already measured this recipe, if any."""
        for record in self.standing.records:
            if record.get("recipe_id") == content_hash and record.get("status") != "invalid":
                return record
        return None

    def stop_reason(self, slot: int) -> str | None:
        """Why experiment ``slot`` must not run, or None when it may."""
        if self.baseline_error is not None:
            return f"the tune cannot proceed: {self.baseline_error}"
        return stop_reason(
            self.options,
            slot,
            [r for r in self.standing.records if r.get("status") != "baseline"],
            elapsed_s=self.elapsed_s(),
            spent_usd=self.spent_usd(),
        )

    # -- doing and recording -----------------------------------------------------------
    def evaluate_safely(
        self, recipe: Recipe, reference_outputs: ReferenceOutputs | None = None
    ) -> Evaluation:
        """Measure ``recipe``; a boot failure comes back as the evaluation's error.

        Agreement is judged against ``reference_outputs``, by default this run's experiment
        0 outputs once stored (before that, as for exp 0 itself: the recipe's recording).
        """
        reference = reference_outputs if reference_outputs is not None else self.reference_outputs
        try:
            if reference is None:
                return self.evaluate(recipe)
            return self.evaluate(recipe, reference_outputs=reference)
        except ForgeError as exc:
            # A boot failure may arrive raised rather than returned; either way it is a
            # crash of this recipe, not of the tune.
            return Evaluation({}, {}, error=str(exc) or type(exc).__name__)

    def append(self, outcome: ExperimentOutcome) -> None:
        """Store an experiment durably, then count it in the standing."""
        record = outcome.to_record()
        assert record["status"] in STORED_STATUSES, record["status"]
        self.store.append_experiment(record)
        self.standing.records.append(record)

    def write_best(self, recipe: Recipe) -> None:
        """Keep ``recipe`` as the run's ``best_recipe.yaml``."""
        self.store.write_best_recipe(recipe)

    def complete(
        self,
        result: TuneResult,
        *,
        confirmation: Evaluation | None = None,
        confirmation_error: str | None = None,
    ) -> TuneResult:
        """Mark the run completed with a summary of ``result``, and remember the result."""
        summary: dict[str, Any] = {
            "recipe_id": self.recipe.id,
            "winner": result.winner.content_hash if result.winner is not None else None,
            "path": str(result.path) if result.path is not None else None,
            "baseline_score": result.baseline_score,
            "best_score": result.best_score,
            "confirmed_score": result.confirmed_score,
            "message": result.message,
            "experiments": len(self.standing.records),
            "elapsed_s": round(self.elapsed_s(), 3),
            "agent_cost_usd": round(self.spent_usd(), 6),
        }
        if confirmation is not None:
            summary["confirmation"] = {
                w: m.headline() for w, m in confirmation.measurements.items()
            }
        if result.ab is not None:
            summary["ab_confirmation"] = result.ab.to_dict()
        if confirmation_error is not None:
            summary["confirmation_error"] = confirmation_error
        self.store.mark_completed(summary)
        self.result = result
        return result


__all__ = ["TuneState"]
