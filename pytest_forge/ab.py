"""A/B mode: the reference (side A) measured on this runner, now, interleaved with the change.

Side A is the recipe as it is at a git ref (``--forge-ab-ref``, e.g. a pull request's
base) and/or served by another Python environment's vLLM (``--forge-ab-python``, e.g. a
virtualenv holding the old pin); side B is the working tree with this environment's vLLM.
Each round runs one timed repeat of each side, in ABBA order, so a drift of the machine
(another job, thermal state, a noisy neighbour) hits both sides alike and cancels in the
per-round ratio B/A. The verdict decides on those paired ratios (verdict.judge_ab); an
inconclusive one adds rounds up to the repeat limit.

Where the two servers are up at once (``level="repeat"``: the CPU path, or GPUs with room
for both) rounds alternate between live servers; at ``level="boot"`` the caller's
endpoint provider boots one side at a time, and a side's first repeat after a boot is
preceded by its warmup.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pytest_forge.accuracy import choose_scorer, score_outputs
from pytest_forge.bench import BenchOptions, Progress, run_bench
from pytest_forge.endpoint import Endpoint
from pytest_forge.errors import ForgeError
from pytest_forge.metrics import Measurement
from pytest_forge.pipeline import GateOptions, floors_for
from pytest_forge.recipe import Recipe
from pytest_forge.results import CaseResult
from pytest_forge.verdict import judge_ab, tolerances
from pytest_forge.workload import Workload

Side = Literal["A", "B"]
Level = Literal["repeat", "boot"]
MIN_ROUNDS = 4  # a paired interval from fewer rounds is too wide to decide a 10 % change


@dataclass(frozen=True)
class SideEndpoint:
    """Where one side is served now; ``fresh`` when it booted since its last repeat."""

    endpoint: Endpoint
    health_check: Callable[[], None] | None
    fresh: bool
    # Returns once the side's server has settled after a repeat, so the other side's next
    # repeat does not share the CPU with its wind-down (vLLM's CPU worker spins ~1 s).
    settle: Callable[[], object] | None = None


EndpointProvider = Callable[[Side], SideEndpoint]


def recipe_at_ref(recipe: Recipe, ref: str, repo_root: Path) -> Recipe | None:
    """The recipe file as it is at git ``ref``; None when the file does not exist there."""
    if recipe.path is None:
        raise ForgeError(f"recipe {recipe.id} has no file, so it has no version at {ref}")
    try:
        rel = recipe.path.resolve().relative_to(repo_root.resolve())
    except ValueError:
        raise ForgeError(f"{recipe.path} is outside the git repository {repo_root}") from None
    spec = f"{ref}:{rel.as_posix()}"
    exists = subprocess.run(
        ["git", "-C", str(repo_root), "cat-file", "-e", spec],
        capture_output=True,
        check=False,
    )
    if exists.returncode != 0:
        known = subprocess.run(
            ["git", "-C", str(repo_root), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True,
            check=False,
        )
        if known.returncode != 0:
            raise ForgeError(
                f"--forge-ab-ref {ref}: not a commit in {repo_root} (fetch it first, e.g. "
                f"git fetch origin {ref.removeprefix('origin/')})"
            )
        return None
    shown = subprocess.run(
        ["git", "-C", str(repo_root), "show", spec],
        capture_output=True,
        check=False,
    )
    if shown.returncode != 0:
        raise ForgeError(f"git show {spec} failed: {shown.stderr.decode(errors='replace')}")
    text = shown.stdout.decode("utf-8", errors="replace")
    return Recipe.from_yaml_text(text, path=f"{rel.as_posix()}@{ref}")


def git_toplevel(start: Path) -> Path:
    """The root of the git checkout holding ``start``; ForgeError outside one."""
    proc = subprocess.run(
        ["git", "-C", str(start), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ForgeError(f"--forge-ab-ref needs a git checkout: {start} is not in one")
    return Path(proc.stdout.strip())


def side_a_label(recipe: Recipe, ref: str | None, python: str | None) -> str:
    """What side A is, for messages: the recipe at which ref, with which vLLM."""
    what = f"recipe {recipe.id} at {ref}" if ref else f"recipe {recipe.id} as in the working tree"
    env = f"vLLM from {python}" if python else "this environment's vLLM"
    return f"A = {what} with {env}; B = the working tree with this environment's vLLM"


def round_order(index: int) -> tuple[Side, Side]:
    """ABBA...: even rounds A then B, odd rounds B then A, so order effects cancel too."""
    return ("A", "B") if index % 2 == 0 else ("B", "A")


def run_ab_case(
    recipe_a: Recipe,
    recipe_b: Recipe,
    workload: Workload,
    endpoints: EndpointProvider,
    options: GateOptions,
    *,
    reference_label: str,
    on_progress: Callable[[Progress], None] | None = None,
    settled: Callable[[Measurement, Measurement], bool] | None = None,
) -> CaseResult:
    """Interleave A and B on ``workload`` until the paired verdict is decided (or the limit).

    ``settled(a, b)``, when given, decides instead when the rounds may stop: the tune's
    confirmation asks whether its objective improved, not the gate's tolerances."""
    measured: dict[Side, Measurement | None] = {"A": None, "B": None}
    warmed: set[Side] = set()

    def one_repeat(side: Side) -> None:
        where = endpoints(side)
        if where.fresh:
            warmed.discard(side)
        bench = BenchOptions(
            repeats=1,
            warmup=None if side not in warmed else 0,
            metrics_interval_s=options.kv_sample_interval_s,
        )
        m = run_bench(
            where.endpoint,
            workload,
            bench,
            on_progress=on_progress,
            health_check=where.health_check,
        )
        warmed.add(side)
        if where.settle is not None:
            where.settle()
        before = measured[side]
        measured[side] = m if before is None else before.extended(m)

    tol = tolerances(recipe_b.gates, options.tolerance)
    floor, slo = floors_for(recipe_b, workload, options)
    scorer = choose_scorer(workload, recipe_b.gates.accuracy_scorer)
    rounds = 0
    first = max(MIN_ROUNDS, options.repeats_for(workload))
    limit = max(first, options.max_repeats_for(workload))
    while True:
        target = first if rounds == 0 else min(limit, rounds + 2)
        while rounds < target:
            for side in round_order(rounds):
                one_repeat(side)
            rounds += 1
        a, b = measured["A"], measured["B"]
        assert a is not None and b is not None
        # Accuracy by agreement compares B's outputs with A's from this very run, so no
        # recording from another machine is needed; reference scorers score B alone.
        recorded = {k: v for k, v in a.outputs().items() if v is not None}
        accuracy = (
            score_outputs(
                workload, b.outputs(), scorer, recorded if scorer == "agreement" else None
            )
            if scorer
            else None
        )
        verdict = judge_ab(
            recipe_b.id,
            workload.name,
            a,
            b,
            accuracy,
            reference_label=reference_label,
            accuracy_floor=floor,
            tolerance=tol,
            slo=slo,
            vllm_a=a.vllm_version,
            vllm_b=b.vllm_version,
        )
        done = verdict.status != "inconclusive" if settled is None else settled(a, b)
        if done or rounds >= limit:
            break
    return CaseResult(recipe_b.id, workload.name, b, accuracy, verdict, reference=a)
