"""Objective pareto inside a tune: the keep decision, the best recipe, and the front's files.

The tuner (``tuner.py``) hands a measured candidate to :func:`judge` under
``--forge-objective pareto``: it is kept when its floors hold and it joins the Pareto front
of the run (``pareto.py``: no front point dominates or ties it beyond the noise). The best
recipe, the parent of the next mutation and the winner finalize confirms, is then the
front's highest-throughput point that holds every floor (``pareto.select_winner``), which
need not be the last one kept. Every front point but the committed recipe is written as a
ready-to-commit recipe file under the run's ``front/`` (``RunStore.write_front``), and
:func:`restore` rebuilds all of it from the stored records when a run resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_forge.errors import ForgeError
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import Baseline, Lineage, Recipe
from pytest_forge.results import Evaluation, baseline_from
from pytest_forge.tune import objective as obj
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.pareto import (
    FRONT_METRICS,
    Noise,
    Point,
    blocker,
    dominates,
    front_of_records,
    pareto_front,
    point_of,
    select_winner,
)
from pytest_forge.tune.records import ExperimentOutcome, floor_failures
from pytest_forge.tune.replay import derive
from pytest_forge.tune.state import TuneState
from pytest_forge.tune.store import FRONT, front_file_name
from pytest_forge.tune.table import num, record_summary


def noise_of(options: TuneOptions) -> Noise:
    """The bands a tune's differences must clear: its noise sigmas and minimum improvement."""
    return Noise(options.noise_sigmas, options.min_improvement)


def judge(
    state: TuneState,
    candidate: Recipe,
    evaluation: Evaluation,
    score: float,
    finish: Callable[..., ExperimentOutcome],
    *,
    changes: dict[str, Any],
    rationale: str,
) -> ExperimentOutcome:
    """Keep ``candidate`` (measured, scored on throughput) when its floors hold and it joins
    the front; then the best recipe becomes the front's winner. Returns the stored outcome."""
    records = state.standing.records
    reference, best = state.standing.reference, state.standing.best_measurements
    assert reference is not None and best is not None and records
    broken = floor_failures(evaluation)
    noise = noise_of(state.options)
    point = point_of(
        len(records),  # the experiment number finish() stores it under
        candidate.content_hash,
        evaluation.measurements,
        reference,
        accuracy={w: v.accuracy for w, v in evaluation.verdicts.items()},
        reference_accuracy=records[0].get("accuracy") or {},
        floors_hold=not broken,
    )
    front = front_of_records(records, noise)
    keep, reason = _decide(point, front, noise)
    if keep:
        winner = select_winner(pareto_front([*front, point], noise))
        reason += "; best now " + (
            f"exp {winner.exp} (highest throughput on the front within every floor)"
            if winner is not None and winner.exp != 0
            else "the committed recipe"
        )
        reason += f"; front recipes in {state.store.path / FRONT}"
    if broken:
        reason += ": " + "; ".join(broken)
    band = obj.noise_band(
        state.objective.name, evaluation.measurements, best, state.options.noise_sigmas
    )
    outcome = finish(
        "kept" if keep else "rejected",
        candidate=candidate,
        changes=changes,
        rationale=rationale,
        reason=reason,
        evaluation=evaluation,
        score=score,
        noise=band,
        floors_hold=not broken,
    )
    if keep:
        update(state)
    return outcome


def _decide(point: Point, front: Sequence[Point], noise: Noise) -> tuple[bool, str]:
    """Whether ``point`` joins ``front``, and why (the numbers are vs experiment 0)."""
    numbers = point.describe() + " vs exp 0"
    if not point.floors_hold:
        return False, f"floors do not hold ({numbers})"
    held_off = blocker(point, front, noise)
    if held_off is not None:
        how = "dominated by" if dominates(held_off, point, noise) else "ties within the noise"
        return False, (
            f"{numbers}: {how} front point exp {held_off.exp} ({held_off.describe()}); "
            "not on the Pareto front"
        )
    pushed = [p.exp for p in front if dominates(point, p, noise)]
    reason = f"{numbers}: joins the Pareto front"
    if pushed:
        reason += " and pushes exp " + ", ".join(map(str, pushed)) + " off it"
    return True, reason


def restore(state: TuneState) -> None:
    """A resumed pareto run's best recipe and front files, from its stored records."""
    standing = state.standing
    if standing.reference is None or standing.already_written or not standing.records:
        return
    update(state)


def update(state: TuneState) -> Point | None:
    """Make the front's winner the tune's best (score, measurements, rationales) and write
    ``best_recipe.yaml`` and the front's files; returns the winner (None: no point holds
    every floor, so the committed recipe stays)."""
    standing = state.standing
    records = standing.records
    noise = noise_of(state.options)
    front = front_of_records(records, noise)
    # Floors include the recipe's SLOs (verdict.floor_checks), so floors_hold is the test.
    winner = select_winner(front)
    recipes = recipes_by_hash(records, state.recipe)
    if winner is None or winner.exp == 0:
        standing.best = state.recipe
        standing.best_score = 1.0
        standing.best_measurements = standing.reference
        standing.kept_rationales = []
    else:
        record = records[winner.exp]  # experiments are stored in order, numbered from 0
        standing.best = recipes[winner.recipe_id]
        standing.best_score = float(record.get("score") or winner.throughput)
        standing.best_measurements = {
            w: Measurement.from_dict(d) for w, d in (record.get("measurements") or {}).items()
        }
        standing.kept_rationales = rationales(records, winner.recipe_id)
    state.write_best(standing.best)
    _write_front(state, front, winner, recipes)
    return winner


def recipes_by_hash(records: Sequence[Mapping[str, Any]], committed: Recipe) -> dict[str, Recipe]:
    """The committed recipe and every kept experiment's recipe, by content hash: each kept
    one derived from its stored parent (any earlier point of the front) and changes."""
    recipes = {committed.content_hash: committed}
    for record in records:
        if record.get("status") != "kept":
            continue
        parent = recipes.get(str(record.get("parent_id")))
        if parent is None:
            raise ForgeError(
                f"kept exp {record.get('exp')}: its parent {record.get('parent_id')} is "
                "neither the committed recipe nor a kept experiment of this run"
            )
        child = derive(parent, record.get("changes") or {}, record.get("rationale"))
        if child.content_hash != record.get("recipe_id"):
            raise ForgeError(
                f"kept exp {record.get('exp')}: its changes give recipe {child.content_hash}, "
                f"not the stored {record.get('recipe_id')}"
            )
        recipes[child.content_hash] = child
    return recipes


def rationales(records: Sequence[Mapping[str, Any]], recipe_id: str) -> list[str]:
    """The rationales of the kept experiments that led to ``recipe_id``, oldest first."""
    kept = {r.get("recipe_id"): r for r in records if r.get("status") == "kept"}
    chain: list[str] = []
    seen: set[str] = set()
    record = kept.get(recipe_id)
    while record is not None and str(record.get("recipe_id")) not in seen:
        seen.add(str(record.get("recipe_id")))
        chain.append(str(record.get("rationale") or ""))
        record = kept.get(record.get("parent_id"))
    return chain[::-1]


# -- the front's files -------------------------------------------------------------------
def _write_front(
    state: TuneState, front: Sequence[Point], winner: Point | None, recipes: Mapping[str, Recipe]
) -> None:
    """Every front point but the committed recipe as a ready-to-commit recipe, plus
    ``front.json``; the committed recipe is already in ``recipes/``."""
    committed = state.recipe
    records = state.standing.records
    files: list[tuple[Recipe, str]] = []
    entries: list[dict[str, Any]] = []
    for p in front:
        record = records[p.exp]
        is_winner = winner is not None and p.exp == winner.exp
        file = None
        if p.exp != 0:
            recipe = _ready_to_commit(state, recipes[p.recipe_id], record)
            files.append((recipe, _header(state, p, record, is_winner)))
            file = f"{FRONT}/{front_file_name(committed.id, p.recipe_id)}"
        summary = record_summary(record)
        entries.append(
            {
                "exp": p.exp,
                "recipe_id": p.recipe_id,
                "committed": p.exp == 0,
                "winner": is_winner,
                "file": file,
                "floors_hold": p.floors_hold,
                "ratios": dict(p.ratios),
                "change": {m: p.change(m) for m in FRONT_METRICS if m in p.ratios},
                "tok_s": summary["tok_s"],
                "ttft_p99_ms": _worst(record, "ttft_p99_ms"),
                "tpot_p99_ms": _worst(record, "tpot_p99_ms"),
                "accuracy": summary["accuracy"],
            }
        )
    noise = noise_of(state.options)
    state.store.write_front(
        files,
        {
            "recipe_id": committed.id,
            "committed": committed.content_hash,
            "winner": winner.exp if winner is not None else None,
            "noise": {"sigmas": noise.sigmas, "min_change": noise.min_change},
            "metrics": list(FRONT_METRICS),
            "points": entries,
        },
    )


def _worst(record: Mapping[str, Any], metric: str) -> float | None:
    values = [num((head or {}).get(metric)) for head in (record.get("metrics") or {}).values()]
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _ready_to_commit(state: TuneState, recipe: Recipe, record: Mapping[str, Any]) -> Recipe:
    """``recipe`` as the committed recipe's next generation, with this tune's measurements
    as its baselines (as finalize writes a winner)."""
    committed = state.recipe
    chain = rationales(state.standing.records, recipe.content_hash)
    lineage = Lineage(
        generation=committed.lineage.generation + 1,
        parent_id=committed.content_hash,
        rationale="; ".join(r for r in chain if r) or None,
    )
    accuracy = record.get("accuracy") or {}
    with_ = state.measured_with()
    baselines: dict[str, Baseline] = {}
    for workload, data in sorted((record.get("measurements") or {}).items()):
        try:
            baselines[workload] = baseline_from(
                Measurement.from_dict(data), num(accuracy.get(workload)), with_
            )
        except ForgeError:
            continue  # nothing measured there: no baseline rather than a made-up one
    return recipe.model_copy(update={"lineage": lineage}).with_baselines(baselines)


def _header(state: TuneState, p: Point, record: Mapping[str, Any], is_winner: bool) -> str:
    role = "the run's winner" if is_winner else "a trade-off on the front"
    lines = [
        f"pytest-forge tune run {state.store.path.name}: Pareto front point exp {p.exp} "
        f"(recipe {p.recipe_id}), {role}",
        f"vs the committed recipe {state.recipe.content_hash} (exp 0), geometric mean over "
        f"the workloads: {p.describe()}",
    ]
    accuracy = record.get("accuracy") or {}
    for workload, head in sorted((record.get("metrics") or {}).items()):
        head = head or {}
        bits = [
            _fmt(num(head.get("output_throughput")), ".1f", " tok/s"),
            "TTFT p99 " + _fmt(num(head.get("ttft_p99_ms")), ".1f", " ms"),
            "TPOT p99 " + _fmt(num(head.get("tpot_p99_ms")), ".2f", " ms"),
        ]
        if num(accuracy.get(workload)) is not None:
            bits.append("accuracy " + _fmt(num(accuracy.get(workload)), ".3f"))
        lines.append(f"{workload}: " + ", ".join(bits))
    target = state.recipe.path or f"recipes/{state.recipe.id}.yaml"
    stem = Path(front_file_name(state.recipe.id, p.recipe_id)).stem
    lines += [
        "Ready to commit, with this tune's measurements as its baselines: as a recipe of its",
        f"own (recipes/{stem}.yaml), or over {target} with id: {state.recipe.id}.",
    ]
    return "".join(f"# {line}\n" for line in lines)


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{unit}"


__all__ = ["judge", "noise_of", "rationales", "recipes_by_hash", "restore", "update"]
