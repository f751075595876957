"""Resume: rebuild a tune's state from its stored experiments, never re-running one.

The baseline's measurements are the reference every score is relative to; each kept
experiment's changes are re-applied to get the best recipe (checked against its stored
content hash); spend and active time carry over so limits count across resumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_forge.errors import ForgeError, RecipeError
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import Lineage, Quant, Recipe
from pytest_forge.tune.store import EXPERIMENTS


@dataclass
class Standing:
    """Where a tune stands: its experiments, reference, best recipe and score so far.

    :func:`replay` builds it from the stored experiments (a fresh run: the committed
    recipe, nothing measured); the tuner updates it as each experiment ends.
    """

    best: Recipe
    records: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Measurement] | None = None  # the baseline's measurements
    best_score: float = 1.0
    best_measurements: dict[str, Measurement] | None = None
    kept_rationales: list[str] = field(default_factory=list)
    prior_elapsed: float = 0.0  # active tuning time the stored experiments had used
    prior_cost: float = 0.0  # agent spend of the stored experiments
    # finalize() had written the winner to recipes/ when a kill stopped the run.
    already_written: bool = False


def derive(parent: Recipe, changes: Mapping[str, Any], rationale: Any) -> Recipe:
    """``parent`` with ``changes`` applied, as its next generation."""
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


def replay(
    records: list[dict[str, Any]], recipe: Recipe, objective: str, run_dir: Path
) -> Standing:
    """The state ``records`` (a run's experiments, in order) leave a tune of ``recipe`` in."""
    state = Standing(best=recipe)
    if not records:
        return state
    base = records[0]
    _check_sequence(records, objective, run_dir)
    state.already_written = _winner_written(records, recipe, run_dir)
    state.reference = _measurements(base)
    state.best_measurements = state.reference
    best = recipe if not state.already_written else _committed_from(recipe, base)
    # A kept experiment's parent: the last keep, or under objective pareto any front point.
    kept = {best.content_hash: best}
    for record in records:
        state.records.append(record)
        cost = (record.get("usage") or {}).get("cost_usd")
        if isinstance(cost, int | float):
            state.prior_cost += float(cost)
        if isinstance(record.get("elapsed_s"), int | float):
            state.prior_elapsed = max(state.prior_elapsed, float(record["elapsed_s"]))
        if record.get("status") == "kept":
            parent = kept.get(str(record.get("parent_id")), best)
            best = _replay_kept(parent, record, run_dir / EXPERIMENTS)
            kept[best.content_hash] = best
            state.best_score = float(record["score"])
            state.best_measurements = _measurements(record)
            state.kept_rationales.append(str(record.get("rationale") or ""))
    state.best = best
    return state


def _check_sequence(records: list[dict[str, Any]], objective: str, run_dir: Path) -> None:
    """The baseline first, then experiments numbered in order, all for ``objective``."""
    where = run_dir / EXPERIMENTS
    base = records[0]
    if base.get("status") != "baseline" or base.get("exp") != 0:
        raise ForgeError(f"{where}:1: the first experiment of a run must be the baseline")
    for number, record in enumerate(records):
        if record.get("exp") != number:
            raise ForgeError(
                f"{where}:{number + 1}: experiment number {record.get('exp')} out of "
                f"sequence (expected {number})"
            )
    if base.get("objective") != objective:
        raise ForgeError(
            f"{run_dir}: this run tunes for {base.get('objective')!r}, not {objective!r}; "
            "resume with the run's objective or start a new run"
        )


def _winner_written(records: list[dict[str, Any]], recipe: Recipe, run_dir: Path) -> bool:
    """Whether ``recipe`` is this run's winner, written by a finalize() a kill cut short.

    Raises when the recipe is neither what the baseline measured nor that winner: it was
    edited since, and the stored scores no longer describe it.
    """
    base = records[0]
    if base.get("recipe_id") == recipe.content_hash:
        return False
    # finalize() writes the winner and then marks the run completed: a kill in
    # between leaves recipes/ holding this run's winner. Anything else is an edit.
    kept = [r for r in records if r.get("status") == "kept"]
    # Any keep: under objective pareto the winner is the front's, not the last keep.
    if (
        kept
        and recipe.content_hash in {r.get("recipe_id") for r in kept}
        and recipe.lineage.parent_id == base.get("recipe_id")
    ):
        return True
    raise ForgeError(
        f"{recipe.path}: the recipe changed since tune run {run_dir.name} "
        f"measured it (content hash {base.get('recipe_id')} then, "
        f"{recipe.content_hash} now); start a new tune run"
    )


def _replay_kept(best: Recipe, record: Mapping[str, Any], where: Path) -> Recipe:
    """``best`` with a kept experiment's changes re-applied, checked against its hash."""
    try:
        best = derive(best, record.get("changes") or {}, record.get("rationale"))
    except RecipeError as exc:
        raise ForgeError(f"{where}: cannot replay kept exp {record.get('exp')}: {exc}") from None
    if best.content_hash != record.get("recipe_id"):
        raise ForgeError(
            f"{where}: replaying kept exp {record.get('exp')} gives recipe "
            f"{best.content_hash}, not the stored {record.get('recipe_id')}"
        )
    return best


def _measurements(record: Mapping[str, Any]) -> dict[str, Measurement]:
    return {w: Measurement.from_dict(d) for w, d in (record.get("measurements") or {}).items()}


def _committed_from(recipe: Recipe, base: Mapping[str, Any]) -> Recipe:
    """The committed recipe as the baseline measured it (recipes/ now holds the winner)."""
    setup = base.get("recipe") or {}
    return recipe.model_copy(
        update={
            "model": setup.get("model") or recipe.model,  # a tune may switch checkpoints
            "config": setup.get("config", {}),
            "compilation": setup.get("compilation"),
            "quant": Quant.model_validate(setup.get("quant") or {}),
            "env": setup.get("env", {}),
            "kernels": setup.get("kernels", []),
            "lineage": Lineage.model_validate(setup.get("lineage") or {}),
        }
    )


__all__ = ["Standing", "derive", "replay"]
