"""A tune's agreement reference: experiment 0's greedy outputs, kept in the run store, and
whether the recipe's recorded outputs came from this hardware.

Greedy outputs of a small model differ between hardware classes (other kernels, other
rounding, near-tied logits), so a recording made elsewhere cannot judge a candidate here.
A tune therefore judges every candidate's agreement against the committed recipe's outputs
measured in the same run (experiment 0), stored as ``exp0-outputs/<workload>.jsonl`` beside
the experiment log so a resumed run judges with the same reference. The recording still
judges experiment 0 itself, but only where its baseline was measured on this hardware.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pytest_forge.accuracy import read_outputs_file, recorded_outputs_path, write_outputs_file
from pytest_forge.hardware import comparable_hardware
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import Recipe
from pytest_forge.results import Evaluation
from pytest_forge.tune.records import floor_failures

# workload -> request id -> output text
ReferenceOutputs = Mapping[str, Mapping[str, str]]

EXP0_OUTPUTS = "exp0-outputs"  # the run store's directory of experiment 0's outputs


class Evaluate(Protocol):
    """What the tuner measures a recipe with (tune_items._make_evaluate builds it)."""

    def __call__(
        self, candidate: Recipe, reference_outputs: ReferenceOutputs | None = None
    ) -> Evaluation:
        """One boot, every workload; agreement against ``reference_outputs`` when given,
        else against the recipe's recorded outputs."""
        ...


def outputs_of(measurements: Mapping[str, Measurement]) -> dict[str, dict[str, str]]:
    """Each workload's first-repeat outputs by request id (failed requests left out)."""
    return {
        workload: {k: v for k, v in m.outputs().items() if v is not None}
        for workload, m in measurements.items()
    }


def _usable(outputs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]] | None:
    # No text at all (a bench that keeps none): nothing to judge against.
    return outputs if any(outputs.values()) else None


def save_exp0_outputs(
    run_dir: Path, measurements: Mapping[str, Measurement]
) -> dict[str, dict[str, str]] | None:
    """Store experiment 0's outputs in the run store (one atomic file per workload) and
    return them as the reference for the run's candidates (None: they hold no text).

    Written before the baseline's record is appended: a kill in between leaves no
    baseline, so a resume measures it again and rewrites these files.
    """
    outputs = outputs_of(measurements)
    for workload, texts in outputs.items():
        write_outputs_file(Path(run_dir) / EXP0_OUTPUTS / f"{workload}.jsonl", texts)
    return _usable(outputs)


def load_exp0_outputs(run_dir: Path, workloads: Iterable[str]) -> dict[str, dict[str, str]] | None:
    """Experiment 0's stored outputs of ``workloads``; None when the run stored none (a run
    begun before they were kept: agreement then falls back to the recording)."""
    outputs: dict[str, dict[str, str]] = {}
    for workload in workloads:
        texts = read_outputs_file(Path(run_dir) / EXP0_OUTPUTS / f"{workload}.jsonl")
        if texts is not None:
            outputs[workload] = texts
    return _usable(outputs)


def baseline_workloads(record: Mapping[str, Any]) -> list[str]:
    """The workloads a stored baseline record measured."""
    return sorted((record.get("measurements") or {}).keys())


def foreign_recordings(recipe: Recipe, host: Any, evaluation: Evaluation) -> dict[str, str]:
    """Per workload whose agreement was scored against a recording not made on this
    hardware class: a note saying so (its agreement is then no floor for experiment 0).

    Where the recording came from is its baseline's ``measured_with.hardware``, compared as
    the gate compares a baseline with this runner (``comparable_hardware``). Without a
    known host (``host`` None) every recording is taken as this hardware's.
    """
    describe = getattr(host, "describe", None)
    if not callable(describe):
        return {}
    here = str(describe())
    notes: dict[str, str] = {}
    for case in evaluation.cases:
        accuracy = case.accuracy
        if accuracy is None or accuracy.scorer != "agreement" or accuracy.value is None:
            continue  # no recording compared: nothing to discount
        baseline = recipe.baselines.get(case.workload)
        then = baseline.measured_with.hardware if baseline is not None else None
        if then is not None and comparable_hardware(then) == comparable_hardware(here):
            continue
        origin = then if then is not None else "unknown hardware (no committed baseline)"
        notes[case.workload] = (
            f"{case.workload}: recording from {origin}, this host is {here}: agreement "
            f"judged against this run's experiment 0 (agreement with the recording "
            f"{accuracy.value:.3f}, not a floor)"
        )
    return notes


def baseline_floor_failures(evaluation: Evaluation, foreign: Mapping[str, str]) -> list[str]:
    """Experiment 0's broken floors, leaving out agreement with a recording from other
    hardware (``foreign``, from :func:`foreign_recordings`)."""
    verdicts = {
        w: dataclasses.replace(v, checks=[c for c in v.checks if c.name != "accuracy"])
        if w in foreign
        else v
        for w, v in evaluation.verdicts.items()
    }
    return floor_failures(Evaluation(evaluation.measurements, verdicts))


def record_exp0_outputs(
    recipe_path: Path, outputs: ReferenceOutputs | None, workloads: Iterable[str]
) -> list[str]:
    """After a tune's winner is written: experiment 0's outputs become the recording of
    each written workload, so the next gate judges the winner's agreement against what
    the tune judged it against, and the recording comes from the hardware its new
    baseline names. Returns a note per file changed."""
    if outputs is None:
        return []
    notes = []
    for workload in workloads:
        texts = outputs.get(workload)
        if not texts or read_outputs_file(recorded_outputs_path(recipe_path, workload)) == texts:
            continue
        path = write_outputs_file(recorded_outputs_path(recipe_path, workload), texts)
        notes.append(f"experiment 0's greedy outputs recorded in {path}")
    return notes


__all__ = [
    "EXP0_OUTPUTS",
    "Evaluate",
    "ReferenceOutputs",
    "baseline_floor_failures",
    "baseline_workloads",
    "foreign_recordings",
    "load_exp0_outputs",
    "outputs_of",
    "record_exp0_outputs",
    "save_exp0_outputs",
]
