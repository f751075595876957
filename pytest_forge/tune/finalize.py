"""The end of a tune: confirm the best candidate, and write it into ``recipes/`` only if
it holds up; either way the run is marked completed with what happened.

With a ``confirm`` callable (a pytest tune: ``pytest_forge.tune_confirm``) the winner and
the committed recipe run interleaved A/B rounds on this runner, and the winner is written
only when the combined ratio's interval lies above 1.0 and its floors hold; its baselines
are side B's A/B measurements. Without one (unit tests' fakes) the winner is re-measured
once and scored against experiment 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_forge.errors import ForgeError
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import Lineage, Recipe
from pytest_forge.results import Evaluation, baseline_from
from pytest_forge.tune import objective as obj
from pytest_forge.tune.confirmation import ABConfirmation
from pytest_forge.tune.records import TuneResult, crash_summary, floor_failures, snippet
from pytest_forge.tune.reference_outputs import record_exp0_outputs
from pytest_forge.tune.state import TuneState
from pytest_forge.tune.writeback import WriteBackConflict, write_back


@dataclass(frozen=True)
class _Confirmed:
    """The winner's numbers to write: from its re-measurement, or from the tune itself."""

    score: float
    measurements: Mapping[str, Measurement]
    accuracy: Mapping[str, float | None]
    evaluation: Evaluation | None  # the re-measurement (or the A/B's cases), when it ran
    ab: ABConfirmation | None = None


@dataclass(frozen=True)
class _Refused:
    """Why the re-measurement did not confirm the winner; recipes/ stays untouched."""

    why: str
    confirmed: float | None = None
    confirmation: Evaluation | None = None
    confirmation_error: str | None = None
    ab: ABConfirmation | None = None


def finalize(state: TuneState, remeasure: bool = True) -> TuneResult:
    """Confirm the best candidate (interleaved A/B when the state has ``confirm``, else one
    re-measurement), then write it to the recipe file.

    ``remeasure=False`` trusts the tune's own measurement of the winner (stored with it,
    so this works after a resume too). Idempotent: a second call returns the first result.
    """
    if state.result is not None:
        return state.result
    rid, best_id = state.recipe.id, state.best.content_hash
    if state.standing.already_written:
        return state.complete(
            TuneResult(
                state.recipe,
                state.recipe.path,
                1.0,
                state.best_score,
                f"{rid}: this run's winner {best_id} is already written to "
                f"{state.recipe.path} (the run was interrupted just after writing it)",
            )
        )
    if state.standing.reference is None:
        if state.baseline_error is None:
            # Nothing ran: leave the run resumable rather than marking it completed.
            return TuneResult(
                None, None, None, None, f"{rid}: no baseline was measured; recipes/ untouched"
            )
        return _untouched(state, f"tune stopped: {state.baseline_error}")
    if best_id == state.recipe.content_hash:
        return _untouched(state, "no candidate beat the committed baseline")
    if state.recipe.path is None:
        return _untouched(state, f"winner {best_id} found but the recipe has no file")

    if remeasure and state.confirm is not None:
        confirmed = _ab_confirmed(state)
    else:
        confirmed = _remeasured(state) if remeasure else _as_tuned(state)
    if isinstance(confirmed, _Refused):
        return _untouched(
            state,
            confirmed.why,
            confirmed=confirmed.confirmed,
            confirmation=confirmed.confirmation,
            confirmation_error=confirmed.confirmation_error,
            ab=confirmed.ab,
        )
    try:
        winner, path = _write_winner(state, confirmed.measurements, confirmed.accuracy)
    except WriteBackConflict as exc:
        return _untouched(
            state,
            f"winner {best_id} not written: {exc}. The winner is in "
            f"{state.store.best_recipe_path}: apply it by hand, or tune the edited recipe "
            "in a new run",
            confirmed=confirmed.score,
            confirmation=confirmed.evaluation,
            failed=True,
            ab=confirmed.ab,
        )
    changes = ", ".join(
        f"{k}: {v['from']!r} -> {v['to']!r}" for k, v in state.recipe.diff(winner).items()
    )
    if confirmed.ab is not None:
        how = (
            f"{rid}: candidate {best_id} confirmed by an interleaved A/B: winner "
            f"{confirmed.ab.describe()} (tune score {state.best_score:.3f})"
        )
    else:
        how = (
            f"{rid}: candidate {best_id} confirmed at score {confirmed.score:.3f} vs the "
            f"baseline's 1.000 (tune score {state.best_score:.3f})"
        )
    message = f"{how}; written to {path} as generation {winner.lineage.generation} ({changes})"
    result = TuneResult(
        winner,
        path,
        1.0,
        state.best_score,
        message,
        confirmed.score,
        confirmed.evaluation,
        ab=confirmed.ab,
    )
    return state.complete(result, confirmation=confirmed.evaluation)


def _remeasured(state: TuneState) -> _Confirmed | _Refused:
    """The best candidate measured again: it must still beat the baseline and hold every
    floor, else the refusal says why."""
    best_id = state.best.content_hash
    reference = state.standing.reference
    assert reference is not None
    evaluation = state.evaluate_safely(state.best)
    if evaluation.error:
        return _Refused(
            f"the confirmation run of candidate {best_id} failed: "
            f"{crash_summary(evaluation.error)}",
            confirmation_error=snippet(evaluation.error),
        )
    try:
        confirmed = obj.score(state.objective.name, evaluation.measurements, reference)
    except ForgeError as exc:
        return _Refused(f"the confirmation run of {best_id} cannot be scored: {exc}")
    floors = floor_failures(evaluation)
    needed = 1.0 + state.options.min_improvement
    if floors or confirmed < needed:
        why = (
            f"breaks a floor ({'; '.join(floors)})"
            if floors
            else f"scored {confirmed:.3f} vs the baseline's 1.000, below the {needed:.3f} "
            f"a win needs (min improvement {state.options.min_improvement:.1%})"
        )
        return _Refused(
            f"candidate {best_id} (tune score {state.best_score:.3f}) did not hold up "
            f"on re-measurement: it {why}",
            confirmed=confirmed,
            confirmation=evaluation,
        )
    accuracy = {w: v.accuracy for w, v in evaluation.verdicts.items()}
    return _Confirmed(confirmed, evaluation.measurements, accuracy, evaluation)


def _ab_confirmed(state: TuneState) -> _Confirmed | _Refused:
    """The best candidate A/B'd against the committed recipe: written only when the combined
    ratio's interval lies above 1.0 and every floor holds, else the refusal says why."""
    assert state.confirm is not None
    best_id = state.best.content_hash
    try:
        ab = state.confirm(state.recipe, state.best)
    except ForgeError as exc:
        # The confirm callable reports boot failures itself; this covers one that raises.
        ab = ABConfirmation(
            state.objective.metric, state.objective.higher_is_better, error=str(exc)
        )
    evaluation = _ab_evaluation(ab)
    combined = ab.combined
    if ab.problem is not None or combined is None:
        problem = ab.problem or "no ratio"
        return _Refused(
            f"the A/B confirmation of candidate {best_id} failed: {crash_summary(problem)}",
            confirmation=evaluation,
            confirmation_error=snippet(problem),
            ab=ab,
        )
    if not ab.floors_hold:
        return _Refused(
            f"candidate {best_id} breaks a floor in the A/B confirmation "
            f"({'; '.join(ab.floor_failures)}): {ab.describe()}",
            confirmed=combined.ratio,
            confirmation=evaluation,
            ab=ab,
        )
    if not ab.confirmed:
        return _Refused(
            f"candidate {best_id} (tune score {state.best_score:.3f}) not confirmed: "
            f"{ab.describe()}; a win needs the whole {ab.confidence:.0%} interval above 1.0",
            confirmed=combined.ratio,
            confirmation=evaluation,
            ab=ab,
        )
    measurements = ab.measurements
    missing = sorted({w.workload for w in ab.workloads} - set(measurements))
    if missing:
        return _Refused(
            f"the A/B confirmation of candidate {best_id} kept no measurement of the winner "
            f"on {', '.join(missing)}, so it has no baselines to write",
            confirmed=combined.ratio,
            ab=ab,
        )
    accuracy = {w.workload: w.accuracy for w in ab.workloads}
    return _Confirmed(combined.ratio, measurements, accuracy, evaluation, ab)


def _ab_evaluation(ab: ABConfirmation) -> Evaluation | None:
    """The A/B's per-workload results as an evaluation, for the run's summary table."""
    cases = ab.cases
    if not cases:
        return None
    return Evaluation(
        {c.workload: c.measurement for c in cases},
        {c.workload: c.verdict for c in cases},
        cases=cases,
    )


def _as_tuned(state: TuneState) -> _Confirmed:
    """The best candidate as the tune measured it (its stored record)."""
    measurements = state.standing.best_measurements
    assert measurements is not None
    # The best's own record: under objective pareto the winner need not be the last keep.
    best_id = state.best.content_hash
    kept = [r for r in state.standing.records if r.get("status") == "kept"]
    kept = [r for r in kept if r.get("recipe_id") == best_id] or kept
    accuracy = dict(kept[-1].get("accuracy") or {})
    return _Confirmed(state.best_score, measurements, accuracy, None)


def _write_winner(
    state: TuneState,
    measurements: Mapping[str, Measurement],
    accuracy: Mapping[str, float | None],
) -> tuple[Recipe, Path]:
    """The best recipe, as the committed recipe's next generation: only what the tune
    changed, applied to the recipe file as it is now (see writeback.py)."""
    committed = state.recipe
    with_ = state.measured_with()
    baselines = {
        w: baseline_from(m, None, with_).model_copy(update={"accuracy": accuracy.get(w)})
        for w, m in sorted(measurements.items())
    }
    rationales = state.standing.kept_rationales
    winner = state.best.model_copy(
        update={
            "lineage": Lineage(
                generation=committed.lineage.generation + 1,
                parent_id=committed.content_hash,
                rationale="; ".join(r for r in rationales if r) or None,
            )
        }
    )
    written = write_back(committed, winner, baselines)
    # The recording must match the baselines just written (this host) and be what the
    # winner's agreement was judged against: experiment 0's outputs (reference_outputs.py).
    record_exp0_outputs(written[1], state.reference_outputs, baselines)
    return written


def _untouched(
    state: TuneState,
    why: str,
    *,
    confirmed: float | None = None,
    confirmation: Evaluation | None = None,
    confirmation_error: str | None = None,
    failed: bool = False,
    ab: ABConfirmation | None = None,
) -> TuneResult:
    """Complete the run without writing to recipes/, saying why."""
    measured = state.standing.reference is not None
    return state.complete(
        TuneResult(
            None,
            None,
            1.0 if measured else None,
            state.best_score if measured else None,
            f"{state.recipe.id}: {why}; recipes/ untouched",
            confirmed,
            confirmation,
            failed=failed,
            ab=ab,
        ),
        confirmation=confirmation,
        confirmation_error=confirmation_error,
    )


__all__ = ["finalize"]
