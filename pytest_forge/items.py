"""pytest collection nodes: one RecipeFile per recipe, one item per workload (or tune slot).

A bad recipe or workload never stops collection: it becomes an item that fails with the
error, naming the file, line and field, and every other test still runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_forge.errors import ForgeError, RecipeError
from pytest_forge.forge_item import ForgeFailure, ForgeItem
from pytest_forge.hardware import (
    comparable_hardware,
    match_recipe_hardware,
    recipe_quant_problem,
)
from pytest_forge.recipe import Recipe
from pytest_forge.session import check_recipe, forge_session
from pytest_forge.tune_items import tune_items
from pytest_forge.workload import Workload, discover_workloads, load_workload
from pytest_forge.xdist_groups import add_group_mark

if TYPE_CHECKING:
    from pytest_forge.ab import SideEndpoint
    from pytest_forge.results import CaseResult
    from pytest_forge.session import ForgeSession


class RecipeFile(pytest.File):
    """``recipes/<id>.yaml``: its items share one vLLM server, torn down when pytest leaves."""

    recipe: Recipe | None = None
    # Why this runner cannot run the recipe (its hardware or quantization), else None:
    # its tests skip (or fail in strict mode), or --forge-hardware-only deselects them.
    other_hardware: str | None = None

    def collect(self) -> Iterator[pytest.Item]:
        """The recipe's tests: one per workload (or tune slot), or one that fails with
        why the recipe could not be loaded."""
        session = forge_session(self.config)
        try:
            self.recipe = Recipe.load(self.path)
        except RecipeError as exc:
            yield ErrorItem.from_parent(self, name="recipe", error=str(exc))
            return
        except Exception as exc:  # a loader bug: still only this file's test fails
            error = f"{self.path}: cannot be loaded: {type(exc).__name__}: {exc}"
            yield ErrorItem.from_parent(self, name="recipe", error=error)
            return
        recipe = self.recipe
        add_group_mark(self, recipe.id)  # pytest-xdist: the recipe's tests on one worker
        skip_reason = self.other_hardware = self._skip_reason(session)
        try:
            check_recipe(recipe, session)
        except ForgeError as exc:
            check_error: str | None = str(exc)
        else:
            check_error = None

        if session.config.tune:
            yield from tune_items(self, recipe, skip_reason, check_error)
            return

        available = discover_workloads(session.config.workloads_dir)
        names = recipe.workloads if recipe.workloads is not None else list(available)
        if not names:
            yield ErrorItem.from_parent(
                self,
                name="workloads",
                error=f"{self.path}: no workloads found in {session.config.workloads_dir}",
            )
        for name in names:
            yield GateItem.from_parent(
                self,
                name=name,
                workload_path=available.get(name),
                check_error=check_error,
                skip_reason=skip_reason,
            )

    def _skip_reason(self, session: ForgeSession) -> str | None:
        if session.config.endpoint_url or self.recipe is None:
            return None
        reason = match_recipe_hardware(self.recipe.hardware, session.hardware)
        if reason:
            return f"recipe {self.recipe.id} needs other hardware: {reason}"
        problem = recipe_quant_problem(self.recipe, session.hardware)
        if problem:
            return f"recipe {self.recipe.id}: {problem[0]} on this runner: {problem[1]}"
        return None

    def teardown(self) -> None:
        """Stop the recipe's server(s) when pytest leaves the recipe file."""
        forge_session(self.config).stop_server(str(self.path))


class ErrorItem(ForgeItem):
    """Stands for a recipe or workload that could not be loaded."""

    forge_gate = True

    def __init__(self, *, error: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        """Fail with the loading error."""
        raise ForgeFailure(self.error)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """The file and what of it failed to load."""
        return self.path, 0, self.name


class GateItem(ForgeItem):
    """One recipe x workload benchmark test."""

    forge_gate = True

    def __init__(
        self,
        *,
        workload_path: Path | None,
        check_error: str | None,
        skip_reason: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.workload_path = workload_path
        self.check_error = check_error
        self.skip_reason = skip_reason  # hardware or quantization this runner lacks
        self.forge_case: dict[str, Any] | None = None

    @property
    def recipe(self) -> Recipe:
        """The recipe its file loaded."""
        parent = self.parent
        assert isinstance(parent, RecipeFile) and parent.recipe is not None
        return parent.recipe

    def load_workload(self) -> Workload:
        """The test's workload, or a failure naming the recipe's missing workload."""
        if self.workload_path is None:
            session = forge_session(self.config)
            raise ForgeFailure(
                f"{self.path}: workloads: recipe {self.recipe.id} names workload "
                f"'{self.name}', which is not in {session.config.workloads_dir}"
            )
        return load_workload(self.workload_path)

    def runtest(self) -> None:
        """Measure the recipe on the workload (or A/B), judge it, report it."""
        from pytest_forge import report
        from pytest_forge.pipeline import record_baseline
        from pytest_forge.progress import progress_printer
        from pytest_forge.results import case_to_dict

        if self.check_error:
            raise ForgeFailure(self.check_error)
        session = forge_session(self.config)
        if self.skip_reason:
            self._not_judged(
                self.skip_reason,
                "run it on a runner with that hardware, or deselect it: "
                f"pytest -k 'not {self.recipe.id}'",
            )
        workload = self.load_workload()
        recipe = self.recipe
        reference = None
        if session.ab and not session.config.update_baselines:
            reference = session.reference_recipe(recipe)
        if reference is None:
            self._check_baseline_hardware(session, recipe)
        progress = progress_printer(self.config, self.nodeid)
        boots = session.boots
        try:
            if reference is not None:
                result = self._run_ab(session, recipe, reference, workload, progress)
            else:
                result = self._run_gate(session, recipe, workload, progress)
            booted = session.boots > boots
        finally:
            progress.done()  # also when the boot or the run fails: no stale status line
        if session.ab and reference is None and not session.config.update_baselines:
            result.notes.append(
                f"{recipe.id} x {workload.name}: the recipe does not exist at "
                f"{session.config.ab_ref}, so it was judged against its committed baseline"
            )
        session.results.append(result)
        report.record_item(self, result)
        if session.config.update_baselines and result.verdict.passed:
            result.notes += record_baseline(self.path, result, session.measured_with())
            result.baseline_written = True
        self.forge_case = {**case_to_dict(result), "booted": booted}
        if not result.verdict.passed:
            raise ForgeFailure(result.verdict.failure_message())
        self._require_judged(result)

    def _require_judged(self, result: CaseResult) -> None:
        """A result that passed without a verdict: say why, and fail it in strict mode."""
        if result.baseline_written or result.verdict.judged:
            return
        if result.verdict.status == "inconclusive":
            self._not_judged(
                result.verdict.undecided_message(),
                "raise --forge-max-repeats, measure A/B on this runner (--forge-ab-ref REF), "
                "or widen the recipe's gates tolerance if the change does not matter",
                skip=False,
            )
        else:
            self._not_judged(
                f"{result.recipe_id} x {result.workload}: no committed baseline in {self.path}",
                f"record one on this runner class: pytest '{self.nodeid}' "
                "--forge-update-baselines; or compare with a reference measured now: "
                f"pytest '{self.nodeid}' --forge-ab-ref origin/main",
                skip=False,
            )

    def _run_gate(
        self, session: ForgeSession, recipe: Recipe, workload: Workload, progress: Any
    ) -> CaseResult:
        from pytest_forge.pipeline import run_case

        if session.config.endpoint_url is None:
            booted = str(self.path) in session.live_servers
            progress.phase("ready" if booted else "booting")
        endpoint, server = session.endpoint_for(recipe)
        return run_case(
            recipe,
            workload,
            endpoint,
            session.config.gate_options(),
            vllm_version=session.vllm_version,
            health_check=server.check_alive if server is not None else None,
            on_progress=progress.update,
        )

    def _run_ab(
        self,
        session: ForgeSession,
        recipe: Recipe,
        reference: Recipe,
        workload: Workload,
        progress: Any,
    ) -> CaseResult:
        from pytest_forge.ab import run_ab_case

        def endpoints(side: str) -> SideEndpoint:
            if not session.ab_side_live(recipe, side):
                progress.phase(f"booting side {side}")
            return session.ab_endpoint(recipe, reference, side)

        return run_ab_case(
            reference,
            recipe,
            workload,
            endpoints,
            session.config.gate_options(),
            reference_label=session.reference_label(recipe),
            on_progress=progress.update,
        )

    def _not_judged(self, reason: str, fix: str, *, skip: bool = True) -> None:
        """Strict mode fails what was not judged; otherwise skip (or pass) and say so."""
        session = forge_session(self.config)
        if session.config.strict:
            raise ForgeFailure(
                f"not judged (strict mode): {reason}\n  fix: {fix}\n"
                "  (--forge-no-strict reports it without failing)"
            )
        if skip:
            pytest.skip(reason)

    def _check_baseline_hardware(self, session: ForgeSession, recipe: Recipe) -> None:
        """A baseline measured on other hardware is never compared: the numbers mean nothing."""
        baseline = recipe.baselines.get(self.name)
        if baseline is None or session.config.update_baselines or session.config.endpoint_url:
            return
        here = session.hardware.describe()
        then = baseline.measured_with.hardware
        if comparable_hardware(then) != comparable_hardware(here):
            self._not_judged(
                f"the {self.name} baseline of {recipe.id} was measured on '{then}' with "
                f"vLLM {baseline.measured_with.vllm}, this runner is '{here}' with vLLM "
                f"{session.vllm_version or 'unknown'}",
                f"record one here: pytest '{self.nodeid}' --forge-update-baselines; or "
                f"compare with a reference measured now: pytest '{self.nodeid}' "
                "--forge-ab-ref origin/main",
            )
