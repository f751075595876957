"""``pytest --forge-tune``: a recipe's tune as tests — the baseline, one per candidate slot,
and the winner's confirmation — driving the Tuner through the gate's own pipeline."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_forge.errors import ForgeError
from pytest_forge.forge_item import ForgeFailure, ForgeItem
from pytest_forge.pipeline import GateOptions, evaluate_recipe
from pytest_forge.recipe import Recipe
from pytest_forge.results import Evaluation, case_to_dict
from pytest_forge.session import forge_session
from pytest_forge.workload import discover_workloads

if TYPE_CHECKING:
    from collections.abc import Callable

    from pytest_forge.bench import Progress
    from pytest_forge.progress import ProgressPrinter
    from pytest_forge.session import ForgeSession
    from pytest_forge.tune.records import ExperimentOutcome, TuneResult
    from pytest_forge.tune.reference_outputs import Evaluate, ReferenceOutputs
    from pytest_forge.tune.settings import TuneSettings
    from pytest_forge.tune.store import RunStore
    from pytest_forge.tune.tuner import Tuner


@dataclass
class RecipeTune:
    """The tune of one recipe within a pytest run."""

    tuner: Tuner
    result: TuneResult | None = None


# Per recipe file: its tune, or the ForgeError its set-up failed with (raised again by
# every later slot, so a bad option creates no run directory per slot).
_TUNES_KEY = pytest.StashKey[dict[str, "RecipeTune | ForgeError"]]()
# --forge-dry-run: each recipe's plan, printed in the terminal summary.
_PLANS_KEY = pytest.StashKey[list[str]]()


def _tunes(config: pytest.Config) -> list[RecipeTune]:
    return [t for t in config.stash.get(_TUNES_KEY, {}).values() if isinstance(t, RecipeTune)]


def _agent_spec(session: ForgeSession) -> tuple[str, str]:
    from pytest_forge.tune.agent import default_agent_spec

    if session.config.agent:
        return session.config.agent, "set by --forge-agent"
    spec = default_agent_spec(os.environ)
    why = "ANTHROPIC_API_KEY is set" if spec != "playbook" else "ANTHROPIC_API_KEY is not set"
    return spec, f"default: {why}"


def tune_header(session: ForgeSession) -> str:
    """The header line of a tune run: the agent (and why), budget and objective."""
    spec, why = _agent_spec(session)
    c = session.config
    return (
        f"forge tune: agent {spec} ({why}); budget {c.budget} per recipe; objective "
        f"{c.objective}; min improvement {c.min_improvement:.1%}"
        + (
            "; resuming each recipe's latest unfinished run with the options it started with "
            "(its config.json)"
            if c.resume
            else ""
        )
        + ("; dry run: plans only, nothing booted or written" if c.dry_run else "")
    )


def _resumable_store(session: ForgeSession, recipe: Recipe) -> RunStore | None:
    """The latest unfinished tune run of this recipe, when --forge-resume is given."""
    from pytest_forge.tune.store import RunStore

    if not session.config.resume:
        return None
    runs = session.config.run_root / "runs"
    return RunStore.latest_unfinished(runs, where={"recipe_id": recipe.id})


def _budget(session: ForgeSession, recipe: Recipe) -> int:
    run = _resumable_store(session, recipe)
    if run is not None:
        try:
            return int(run.config.get("budget", session.config.budget))
        except (ForgeError, TypeError, ValueError):
            pass  # the tune's set-up reports the broken run
    return session.config.budget


def tune_items(
    parent: pytest.Collector, recipe: Recipe, skip_reason: str | None, check_error: str | None
) -> Iterator[pytest.Item]:
    """The tests of one recipe's tune, collected by its recipe file ``parent``:
    tune[baseline], one per candidate slot of the budget, and tune[winner]."""
    session = forge_session(parent.config)
    budget = _budget(session, recipe)
    names = ["baseline"] + [f"{i:02d}" for i in range(1, budget + 1)] + ["winner"]
    if session.config.dry_run:
        names = ["plan"]  # one test per recipe: prints the plan, boots nothing
    for name in names:
        item = TuneItem.from_parent(
            parent, name=f"tune[{name}]", slot=name, recipe=recipe, check_error=check_error
        )
        if skip_reason:
            item.add_marker(pytest.mark.skip(reason=skip_reason))
        yield item


def _make_evaluate(
    session: ForgeSession, config: pytest.Config, log_dir: Path, settings: TuneSettings
) -> Evaluate:
    """Evaluate a candidate through the gate's path: one boot, every workload, then stop;
    measured as the run's settings say (a resumed run: as it began); agreement judged
    against ``reference_outputs`` (the run's experiment 0) when given."""
    from pytest_forge.tune_confirm import tune_workloads

    # max_repeats=1: the tuner compares candidates itself (objective.py), so a candidate's
    # run never grows repeats to settle a comparison with the committed baselines.
    options = GateOptions(
        repeats=settings.repeats, accuracy_floor=settings.accuracy_floor, max_repeats=1
    )

    def evaluate(
        candidate: Recipe, reference_outputs: ReferenceOutputs | None = None
    ) -> Evaluation:
        workloads = tune_workloads(settings, candidate)  # the same list the A/B confirms on
        session.boots += 1
        # The status line: "booting" until the first workload runs, then one per workload.
        printers = [_progress(config, candidate.id)]
        printers[0].phase("booting")

        def progress(name: str) -> Callable[[Progress], None]:
            printers[-1].done()
            printers.append(_progress(config, f"{candidate.id}:{name}"))
            return printers[-1].update

        try:
            return evaluate_recipe(
                candidate,
                workloads,
                log_dir,
                dataclasses.replace(options, reference_outputs=reference_outputs),
                vllm_version=session.vllm_version,
                boot_timeout_s=settings.boot_timeout_s,
                progress=progress,
                extra_env=session.device_env(candidate),  # this xdist worker's GPUs
            )
        finally:
            printers[-1].done()

    return evaluate


def _progress(config: pytest.Config, label: str) -> ProgressPrinter:
    from pytest_forge.progress import progress_printer

    return progress_printer(config, label)


def _new_run_workloads(
    chosen: list[str] | None, recipe: Recipe, available: Mapping[str, Path]
) -> list[str]:
    """The workloads a new tune run measures: --forge-tune-workloads, else the recipe's,
    else every workload; a name that is not a workload is an error naming the known ones."""
    if chosen is None:
        return list(recipe.workloads) if recipe.workloads is not None else list(available)
    missing = [n for n in chosen if n not in available]
    if missing:
        raise ForgeError(
            f"--forge-tune-workloads: no workload {', '.join(missing)} in the workloads "
            f"directory (known: {', '.join(sorted(available)) or 'none'})"
        )
    return list(chosen)


def _recipe_tune(item: TuneItem) -> RecipeTune:
    session = forge_session(item.config)
    tunes = item.config.stash.setdefault(_TUNES_KEY, {})
    key = str(item.path)  # the recipe file
    cached = tunes.get(key)
    if isinstance(cached, ForgeError):
        raise cached  # set-up failed for the first slot: the same reason, no new run
    if cached is not None:
        return cached
    try:
        tune = _new_recipe_tune(item, session)
    except ForgeError as exc:
        tunes[key] = exc
        raise
    tunes[key] = tune
    return tune


def _new_recipe_tune(item: TuneItem, session: ForgeSession) -> RecipeTune:
    from pytest_forge.tune.agent import make_agent
    from pytest_forge.tune.hardware_classes import hardware_class
    from pytest_forge.tune.playbook import load_playbook
    from pytest_forge.tune.settings import config_record, fresh_settings, resumed_settings
    from pytest_forge.tune.store import RunStore
    from pytest_forge.tune.tuner import Tuner
    from pytest_forge.tune_confirm import make_confirm
    from pytest_forge.tune_plan import layer_spaces

    recipe = item.recipe
    if session.config.endpoint_url:
        raise ForgeError("--forge-tune boots its own candidates; it cannot use --forge-endpoint")
    spec, _ = _agent_spec(session)
    hardware = session.hardware.describe()
    store = _resumable_store(session, recipe)
    if store is not None:
        settings = resumed_settings(
            session.config, store.config, store.path, spec, hardware, session.vllm_version
        )
    else:
        settings = fresh_settings(session.config, spec)
    playbook = load_playbook(settings.playbook)
    hw_class = hardware_class(session.hardware)
    search_space = playbook.search_space(hw_class)
    agent = make_agent(settings.agent, playbook, os.environ)
    if store is not None:
        store.claim()  # one process per run: a second resume fails here, naming this pid
        item.config.add_cleanup(store.release)
    else:
        available = discover_workloads(settings.workloads_dir)
        workloads = _new_run_workloads(session.config.workloads, recipe, available)
        record = config_record(
            session.config, recipe.id, recipe.path, spec, workloads, hardware,
            session.vllm_version,
        )  # fmt: skip
        store = RunStore.create(session.config.run_root / "runs", record, claim=True)
        item.config.add_cleanup(store.release)
        settings = resumed_settings(
            session.config, store.config, store.path, spec, hardware, session.vllm_version
        )  # what a resume will measure with, from the start
    try:
        tuner = Tuner(
            recipe,
            agent,
            store,
            settings.options,
            hardware=session.hardware,
            hardware_class=hw_class,
            search_space=search_space,
            evaluate=_make_evaluate(session, item.config, store.server_log_dir, settings),
            measured_with=session.measured_with,
            confirm=make_confirm(session, settings, item.config),  # interleaved A/B of the winner
            layer_spaces=layer_spaces(session, recipe, hw_class, search_space),
        )
    except BaseException:
        store.release()
        raise
    return RecipeTune(tuner)


class TuneItem(ForgeItem):
    """One slot of a recipe's tune: ``baseline``, a candidate number, or ``winner``."""

    def __init__(
        self, *, slot: str, recipe: Recipe, check_error: str | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.slot = slot
        self.recipe = recipe
        self.check_error = check_error
        self.forge_status: str | None = None
        self.forge_tune: dict[str, Any] | None = None

    def runtest(self) -> None:
        """Run this slot of the tune (the first slot sets the tune up)."""
        if self.check_error:
            raise ForgeFailure(self.check_error)
        if self.slot == "plan":
            self._plan()
            return
        tune = _recipe_tune(self)
        if self.slot == "baseline":
            outcome = tune.tuner.run_baseline()
        elif self.slot == "winner":
            self._finish(tune)
            return
        else:
            outcome = tune.tuner.run_slot(int(self.slot))
        self._report(outcome)

    def _plan(self) -> None:
        """--forge-dry-run: this recipe's tune plan, shown in the terminal summary."""
        from pytest_forge.tune_plan import dry_run_plan

        session = forge_session(self.config)
        spec, why = _agent_spec(session)
        text = dry_run_plan(session, self.recipe, spec, why, _resumable_store(session, self.recipe))
        print(text)
        self.config.stash.setdefault(_PLANS_KEY, []).append(text)
        if hasattr(self.config, "workerinput"):  # to the pytest-xdist controller
            self.forge_tune = {"block": text, "run_dir": None, "cases": []}

    def _report(self, outcome: ExperimentOutcome) -> None:
        self.user_properties.append(("forge_status", outcome.status))
        if outcome.score is not None:
            self.user_properties.append(("score", f"{outcome.score:.4f}"))
        for workload, head in (outcome.metrics or {}).items():
            for metric in ("output_throughput", "ttft_p99_ms", "tpot_p99_ms"):
                if head.get(metric) is not None:
                    self.user_properties.append((f"{workload}.{metric}", f"{head[metric]:.6g}"))
        text = outcome.summary()
        if outcome.status in ("baseline", "kept"):
            print(text)
            return
        if outcome.status == "skipped":
            pytest.skip(text)
        if outcome.status == "error":
            raise ForgeFailure(text)
        # Ran and lost, broke a floor, crashed vLLM, or an invalid proposal: an honest
        # "rejected", which is no failure of the tune (a finished tune exits 0).
        self.forge_status = "rejected"
        pytest.xfail(f"rejected: {text}")

    def _finish(self, tune: RecipeTune) -> None:
        result = tune.tuner.finalize(remeasure=True)
        self._report_result(tune, result)
        if result.failed:
            # A winner that could not be written (the recipe changed meanwhile): said in
            # full, and the tune does not pass.
            raise ForgeFailure(result.message)

    def _report_result(self, tune: RecipeTune, result: TuneResult) -> None:
        tune.result = result
        self.user_properties.append(("forge_status", "winner" if result.winner else "none"))
        print(result.message)
        confirmation = result.confirmation
        if confirmation is not None and confirmation.cases:
            # The winner's re-measurement, per workload and against the baselines committed
            # before the tune, is what the gate summary table shows for this run.
            for case in confirmation.cases:
                head = case.measurement.headline()
                for metric in ("output_throughput", "ttft_p99_ms", "tpot_p99_ms"):
                    if head.get(metric) is not None:
                        self.user_properties.append(
                            (f"{case.workload}.{metric}", f"{head[metric]:.6g}")
                        )
            confirmation.cases[0].notes.append(
                f"{tune.tuner.recipe.id}: the rows above are the tune winner's confirmation "
                + (
                    "run, compared with the baselines committed before the tune"
                    if result.ab is None
                    else "A/B, side A the committed recipe in the same interleaved rounds"
                )
            )
            forge_session(self.config).results.extend(confirmation.cases)
        if hasattr(self.config, "workerinput"):
            # Travels with the report to the pytest-xdist controller, which prints it; a
            # plain run prints tune_summary() itself (no second read of the run store).
            self.forge_tune = {
                "block": _tune_block(tune),
                "run_dir": str(tune.tuner.store.path),
                "cases": [case_to_dict(c) for c in confirmation.cases] if confirmation else [],
            }


def tune_run_dirs(config: pytest.Config) -> list[Path]:
    """The run stores of this session's tunes (and of pytest-xdist workers' tunes)."""
    remote = forge_session(config).remote_tune_runs
    return [tune.tuner.store.path for tune in _tunes(config)] + remote


def _tune_block(tune: RecipeTune) -> str:
    """One tuned recipe's experiment table (as ``forge report RUN_DIR``) and its outcome."""
    from pytest_forge.tune.run_report import render_report

    store = tune.tuner.store
    text = render_report(store.path)
    if tune.result is not None:
        text += f"\n{tune.result.message}"
    cost_note = getattr(tune.tuner.agent, "cost_note", None)
    if cost_note:
        text += f"\nagent: {cost_note}"
    return text + f"\nrun store: {store.path}"


def tune_summary(config: pytest.Config) -> str:
    """Each tuned recipe's block, here or on pytest-xdist workers."""
    blocks = [_tune_block(tune) for tune in _tunes(config)] + config.stash.get(_PLANS_KEY, [])
    return "\n\n".join(blocks + forge_session(config).remote_tune_blocks)
