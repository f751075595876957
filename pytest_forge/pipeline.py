"""The one way through: Recipe + Workload -> Server -> Bench -> Measurement -> Verdict.

The gate's pytest items, the tuner and the CLI all call :func:`run_case` (one workload
against a running endpoint) and :func:`evaluate_recipe` (boot once, every workload).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_forge import __version__
from pytest_forge.accuracy import (
    AccuracyResult,
    choose_scorer,
    load_recorded_outputs,
    save_recorded_outputs,
    score_outputs,
)
from pytest_forge.bench import BenchOptions, Progress, run_bench
from pytest_forge.endpoint import Endpoint
from pytest_forge.errors import ForgeError, ServerError
from pytest_forge.fileio import locked
from pytest_forge.metrics import Measurement
from pytest_forge.recipe import MeasuredWith, Recipe
from pytest_forge.results import CaseResult, Evaluation, baseline_from
from pytest_forge.server import VllmServer
from pytest_forge.slo import SLO
from pytest_forge.verdict import Verdict, judge, tolerances
from pytest_forge.workload import Workload

DEFAULT_REPEATS = 3
DEFAULT_MAX_REPEATS = 20
NO_REFERENCE_OUTPUTS_NOTE = "no reference outputs given for this workload"


@dataclass(frozen=True)
class GateOptions:
    """What the user set on the command line / ini; None means "not overridden"."""

    repeats: int | None = None  # overrides the workload sidecar's repeats
    # An inconclusive verdict adds repeats on the running server up to this many in all
    # (None: DEFAULT_MAX_REPEATS, and never fewer than the first pass's repeats).
    max_repeats: int | None = None
    accuracy_floor: float | None = None
    tolerance: float | None = None
    update_baselines: bool = False
    kv_sample_interval_s: float = 0.0  # see BenchOptions.metrics_interval_s
    # What agreement compares with, instead of the outputs recorded beside the recipe:
    # workload -> request id -> text. A tune passes its experiment 0's outputs, measured
    # on this host in this run, so a recording from other hardware judges no candidate.
    reference_outputs: Mapping[str, Mapping[str, str]] | None = None

    def repeats_for(self, workload: Workload) -> int:
        """Timed repeats of the first pass: command line > workload sidecar > default."""
        return self.repeats or workload.replay.repeats or DEFAULT_REPEATS

    def max_repeats_for(self, workload: Workload) -> int:
        """The most repeats an inconclusive verdict may grow to (never below the first pass)."""
        return max(self.max_repeats or DEFAULT_MAX_REPEATS, self.repeats_for(workload))


def measured_with(vllm_version: str | None, hardware: str, backend: str) -> MeasuredWith:
    """What a baseline measured now was measured with (vLLM, pytest-forge, hardware, date)."""
    return MeasuredWith(
        vllm=vllm_version or "unknown",
        pytest_forge=__version__,
        hardware=hardware,
        backend=backend,
        date=_dt.date.today().isoformat(),
    )


def run_case(
    recipe: Recipe,
    workload: Workload,
    endpoint: Endpoint,
    options: GateOptions,
    *,
    vllm_version: str | None,
    health_check: Callable[[], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> CaseResult:
    """Replay one workload on a running endpoint and judge it against its baseline.

    An inconclusive verdict (the interval straddles the tolerance) adds repeats on the
    same server, without a second warmup, until it is decided or ``max_repeats`` is hit.
    """
    bench_options = BenchOptions(
        repeats=options.repeats_for(workload), metrics_interval_s=options.kv_sample_interval_s
    )
    measurement = run_bench(
        endpoint, workload, bench_options, on_progress=on_progress, health_check=health_check
    )
    measurement.vllm_version = vllm_version
    accuracy, notes = _score(recipe, workload, measurement, options)
    floor, slo = floors_for(recipe, workload, options)
    # When updating baselines the measurement is the new baseline: compare to nothing, as
    # a snapshot plugin's update flag does. Floors and SLOs still apply.
    baseline = None if options.update_baselines else recipe.baselines.get(workload.name)

    def verdict_for(m: Measurement) -> Verdict:
        return judge(
            recipe.id,
            workload.name,
            m,
            accuracy,
            baseline=baseline,
            accuracy_floor=floor,
            tolerance=tolerances(recipe.gates, options.tolerance),
            slo=slo,
            vllm_now=vllm_version,
        )

    verdict = verdict_for(measurement)
    limit = options.max_repeats_for(workload)
    while verdict.status == "inconclusive" and len(measurement.repeats) < limit:
        more = min(max(2, len(measurement.repeats) // 2), limit - len(measurement.repeats))
        extra = run_bench(
            endpoint,
            workload,
            BenchOptions(repeats=more, warmup=0, metrics_interval_s=options.kv_sample_interval_s),
            on_progress=on_progress,
            health_check=health_check,
        )
        measurement = measurement.extended(extra)
        verdict = verdict_for(measurement)
    return CaseResult(recipe.id, workload.name, measurement, accuracy, verdict, notes=notes)


def _score(
    recipe: Recipe, workload: Workload, measurement: Measurement, options: GateOptions
) -> tuple[AccuracyResult | None, list[str]]:
    """The workload's accuracy scorer on the first repeat's outputs, against the recording
    (or the options' ``reference_outputs`` when set)."""
    scorer = choose_scorer(workload, recipe.gates.accuracy_scorer)
    if scorer is None:
        return None, []
    notes: list[str] = []
    if options.reference_outputs is not None:
        reference = options.reference_outputs.get(workload.name)
        accuracy = score_outputs(workload, measurement.outputs(), scorer, reference)
        if accuracy.scorer == "agreement" and not reference:
            accuracy = accuracy.model_copy(update={"note": NO_REFERENCE_OUTPUTS_NOTE})
        return accuracy, notes
    recorded = load_recorded_outputs(recipe.path, workload.name) if recipe.path else None
    accuracy = score_outputs(workload, measurement.outputs(), scorer, recorded)
    if options.update_baselines and accuracy.scorer == "agreement":
        # Updating re-records the greedy outputs, as a snapshot plugin's update flag
        # rewrites its snapshots: the new outputs are the reference, so agreement is
        # not gated now; how far they moved from the old recording is reported.
        if accuracy.value is not None and accuracy.value < 1.0:
            notes.append(
                f"agreement with the previous recording was {accuracy.value:.3f}; "
                "the outputs are re-recorded"
            )
        accuracy = score_outputs(workload, measurement.outputs(), accuracy.scorer, None)
    return accuracy, notes


def floors_for(
    recipe: Recipe, workload: Workload, options: GateOptions
) -> tuple[float | None, SLO]:
    """The accuracy floor (command line > recipe > workload) and the merged SLOs."""
    floor = options.accuracy_floor
    if floor is None:
        floor = recipe.gates.accuracy_floor
    if floor is None:
        floor = workload.replay.accuracy.floor
    return floor, workload.replay.slo.merged(recipe.gates.slo)


def record_baseline(recipe_path: Path, result: CaseResult, with_: MeasuredWith) -> list[str]:
    """Write the measured baseline (and greedy outputs for agreement) into the recipe file.

    Re-reads the file under its lock so each test's update lands on the latest content,
    also with other processes writing it; atomic writes mean a crash never leaves a
    half-written recipe.
    """
    notes: list[str] = []
    m = result.measurement
    if m.failed_requests:
        raise ForgeError(
            f"not recording a baseline for {result.recipe_id} x {result.workload}: "
            f"{m.failed_requests} requests failed"
        )
    outputs = {k: v for k, v in m.outputs().items() if v is not None}
    recorded = load_recorded_outputs(recipe_path, result.workload)
    if recorded != outputs:
        path = save_recorded_outputs(recipe_path, result.workload, outputs)
        notes.append(f"greedy outputs recorded in {path}")
    accuracy = result.accuracy.value if result.accuracy is not None else None
    if accuracy is None and result.accuracy is not None and result.accuracy.scorer == "agreement":
        # The outputs just recorded are the reference: agreement with them is exact.
        accuracy = 1.0
    baseline = baseline_from(m, accuracy, with_)
    # Under the recipe's lock, re-read and change only this workload's baseline: another
    # writer's update (a parallel test, a tune's write-back) is not saved over.
    with locked(recipe_path, what="the recipe's lock"):
        Recipe.load(recipe_path).with_baselines({result.workload: baseline}).save(recipe_path)
    notes.append(f"baseline for {result.workload} written to {recipe_path}")
    return notes


def evaluate_recipe(
    recipe: Recipe,
    workloads: list[Workload],
    log_dir: Path,
    options: GateOptions,
    *,
    vllm_version: str | None,
    boot_timeout_s: float,
    progress: Callable[[str], Callable[[Progress], None] | None] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Evaluation:
    """Boot ``recipe`` once, run every workload through :func:`run_case`, stop the server.

    The tuner's candidates and the benchmarks take this path; a boot failure or a server
    death is returned as the evaluation's error (with the vLLM log tail), not raised.
    """
    server = VllmServer(recipe, log_dir, boot_timeout_s=boot_timeout_s, extra_env=extra_env)
    measurements: dict[str, Measurement] = {}
    verdicts: dict[str, Verdict] = {}
    cases: list[CaseResult] = []
    try:
        endpoint = server.start()
        for workload in workloads:
            result = run_case(
                recipe,
                workload,
                endpoint,
                options,
                vllm_version=vllm_version,
                health_check=server.check_alive,
                on_progress=progress(workload.name) if progress else None,
            )
            measurements[workload.name] = result.measurement
            verdicts[workload.name] = result.verdict
            cases.append(result)
    except ServerError as exc:
        return Evaluation(measurements, verdicts, error=str(exc), cases=cases)
    finally:
        server.stop()
    return Evaluation(measurements, verdicts, error=None, cases=cases)
