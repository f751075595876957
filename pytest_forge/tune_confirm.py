"""The tune winner's confirmation, session side: the committed recipe (A) and the winner (B)
measured in interleaved ABBA rounds through the gate's own A/B path.

The servers come from the session exactly as the gate's A/B mode gets them
(``ForgeSession.ab_endpoint``): at level "repeat" (the CPU default) both stay up and rounds
alternate between them; at level "boot" (GPUs, where each recipe expects the whole device)
one side is up at a time. Each workload of the tune runs ``ab.run_ab_case`` with a stop
rule on the objective's metric (``confirmation.settled_on``): at least ``ab.MIN_ROUNDS``
rounds, then two more at a time while the paired interval straddles 1.0, up to the
--forge-max-repeats limit. Both servers are stopped before the tune writes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pytest_forge.ab import Side, SideEndpoint, run_ab_case
from pytest_forge.errors import ForgeError
from pytest_forge.pipeline import GateOptions
from pytest_forge.recipe import Recipe
from pytest_forge.tune import objective as obj
from pytest_forge.tune.confirmation import ABConfirmation, WorkloadAB, settled_on
from pytest_forge.workload import Workload, discover_workloads, load_workload

if TYPE_CHECKING:
    import pytest

    from pytest_forge.metrics import Measurement
    from pytest_forge.results import CaseResult
    from pytest_forge.session import ForgeSession
    from pytest_forge.tune.settings import TuneSettings

Confirm = Callable[[Recipe, Recipe], ABConfirmation]


def tune_workloads(settings: TuneSettings, recipe: Recipe) -> list[Workload]:
    """The workloads the tune measures: the run's stored list, else the recipe's, else all."""
    available = discover_workloads(settings.workloads_dir)
    if settings.workloads is not None:
        names: Sequence[str] = list(settings.workloads)
    else:
        names = recipe.workloads if recipe.workloads is not None else list(available)
    missing = [n for n in names if n not in available]
    if missing:
        raise ForgeError(
            f"the tune measures workloads {', '.join(missing)}, which are not in "
            f"{settings.workloads_dir}"
        )
    if not names:
        raise ForgeError(f"recipe {recipe.id}: no workload to confirm the winner on")
    return [load_workload(available[n]) for n in names]


def make_confirm(
    session: ForgeSession, settings: TuneSettings, config: pytest.Config | None = None
) -> Confirm:
    """``confirm(committed, winner)``: both recipes A/B'd on the tune's workloads, with the
    tune's repeats and accuracy floor, and --forge-max-repeats as the round limit."""
    objective = obj.objective(settings.options.objective)
    options = GateOptions(
        repeats=settings.repeats,
        max_repeats=session.config.max_repeats,
        accuracy_floor=settings.accuracy_floor,
    )
    settled = settled_on(objective.metric, objective.higher_is_better)

    def confirm(committed: Recipe, winner: Recipe) -> ABConfirmation:
        level = session.config.ab_level
        done: list[WorkloadAB] = []

        def result(error: str | None = None) -> ABConfirmation:
            return ABConfirmation(
                objective.metric, objective.higher_is_better, tuple(done), level, error
            )

        label = (
            f"A = the committed recipe {committed.id} ({committed.content_hash}); "
            f"B = the tune's winner {winner.content_hash}; same vLLM, same runner"
        )
        try:
            for workload in tune_workloads(settings, committed):
                case = _one_workload(
                    session, config, committed, winner, workload, options, label, settled
                )
                done.append(
                    WorkloadAB.from_case(case, objective.metric, objective.higher_is_better)
                )
        except ForgeError as exc:
            # A boot failure or a server death: the confirmation failed, the tune did not.
            return result(str(exc) or type(exc).__name__)
        finally:
            session.stop_server(_server_key(winner))
        return result()

    return confirm


def _server_key(winner: Recipe) -> str:
    # The session keys both A/B sides by side B's recipe (see ForgeSession.ab_endpoint).
    return str(winner.path or winner.id)


def _one_workload(
    session: ForgeSession,
    config: pytest.Config | None,
    committed: Recipe,
    winner: Recipe,
    workload: Workload,
    options: GateOptions,
    label: str,
    settled: Callable[[Measurement, Measurement], bool],
) -> CaseResult:
    """One workload's interleaved rounds, with the live status line when there is a terminal."""
    printer = None
    if config is not None:
        from pytest_forge.progress import progress_printer

        printer = progress_printer(config, f"{winner.id}:confirm:{workload.name}")

    def endpoints(side: Side) -> SideEndpoint:
        if printer is not None and not session.ab_side_live(winner, side):
            printer.phase(f"booting side {side}")
        return session.ab_endpoint(winner, committed, side)

    try:
        return run_ab_case(
            committed,
            winner,
            workload,
            endpoints,
            options,
            reference_label=label,
            on_progress=printer.update if printer is not None else None,
            settled=settled,
        )
    finally:
        if printer is not None:
            printer.done()


__all__ = ["Confirm", "make_confirm", "tune_workloads"]
