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
from pytest_forge.hardware import (
    comparable_hardware,
    match_recipe_hardware,
    recipe_quant_problem,
)
from pytest_forge.recipe import Recipe
from pytest_forge.workload import Workload, discover_workloads, load_workload

if TYPE_CHECKING:
    from pytest_forge.session import ForgeSession

SESSION_KEY = pytest.StashKey["ForgeSession"]()


def forge_session(config: pytest.Config) -> ForgeSession:
    return config.stash[SESSION_KEY]


class ForgeFailure(Exception):
    """A test outcome to show as a plain message, without a Python traceback."""


class RecipeFile(pytest.File):
    """``recipes/<id>.yaml``: its items share one vLLM server, torn down when pytest leaves."""

    recipe: Recipe | None = None

    def collect(self) -> Iterator[pytest.Item]:
        session = forge_session(self.config)
        try:
            self.recipe = Recipe.load(self.path)
        except RecipeError as exc:
            yield ErrorItem.from_parent(self, name="recipe", error=str(exc))
            return
        recipe = self.recipe
        skip_reason = self._skip_reason(session)
        try:
            from pytest_forge.session import check_recipe

            check_recipe(recipe, session)
        except ForgeError as exc:
            check_error: str | None = str(exc)
        else:
            check_error = None

        if session.config.tune:
            from pytest_forge.tune_items import tune_items

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
            item = GateItem.from_parent(
                self, name=name, workload_path=available.get(name), check_error=check_error
            )
            if skip_reason:
                item.add_marker(pytest.mark.skip(reason=skip_reason))
            yield item

    def _skip_reason(self, session: ForgeSession) -> str | None:
        if session.config.endpoint_url or self.recipe is None:
            return None
        reason = match_recipe_hardware(self.recipe.hardware, session.hardware)
        if reason:
            return f"recipe {self.recipe.id} needs other hardware: {reason}"
        quant = self.recipe.quant
        problem = recipe_quant_problem(quant.method, quant.kv_cache_quant, session.hardware)
        if problem:
            return f"recipe {self.recipe.id}: {problem[0]} on this runner: {problem[1]}"
        return None

    def teardown(self) -> None:
        forge_session(self.config).stop_server(str(self.path))


class ErrorItem(pytest.Item):
    """Stands for a recipe or workload that could not be loaded."""

    def __init__(self, *, error: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise ForgeFailure(self.error)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, self.name


class GateItem(pytest.Item):
    """One recipe x workload benchmark test."""

    def __init__(
        self, *, workload_path: Path | None, check_error: str | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.workload_path = workload_path
        self.check_error = check_error
        self.result = None
        self.booted = False
        self.forge_case: dict[str, Any] | None = None

    @property
    def recipe(self) -> Recipe:
        parent = self.parent
        assert isinstance(parent, RecipeFile) and parent.recipe is not None
        return parent.recipe

    def load_workload(self) -> Workload:
        if self.workload_path is None:
            session = forge_session(self.config)
            raise ForgeFailure(
                f"{self.path}: workloads: recipe {self.recipe.id} names workload "
                f"'{self.name}', which is not in {session.config.workloads_dir}"
            )
        return load_workload(self.workload_path)

    def runtest(self) -> None:
        from pytest_forge import report
        from pytest_forge.pipeline import case_to_dict, record_baseline, run_case

        if self.check_error:
            raise ForgeFailure(self.check_error)
        session = forge_session(self.config)
        workload = self.load_workload()
        recipe = self.recipe
        self._skip_if_baseline_from_other_hardware(session, recipe)
        progress = report.progress_printer(self.config, self.nodeid)
        boots = session.boots
        try:
            if session.config.endpoint_url is None:
                booted = str(self.path) in session.live_servers
                progress.phase("ready" if booted else "booting")
            endpoint, server = session.endpoint_for(recipe)
            self.booted = session.boots > boots
            result = run_case(
                recipe,
                workload,
                endpoint,
                session.config.gate_options(),
                vllm_version=session.vllm_version,
                health_check=server.check_alive if server is not None else None,
                on_progress=progress.update,
            )
        finally:
            progress.done()  # also when the boot or the run fails: no stale status line
        self.result = result
        session.results.append(result)
        report.record_item(self, result)
        if session.config.update_baselines and result.verdict.passed:
            result.notes += record_baseline(self.path, result, session.measured_with())
            result.baseline_written = True
        self.forge_case = {**case_to_dict(result), "booted": self.booted}
        if not result.verdict.passed:
            raise ForgeFailure(result.verdict.failure_message())

    def _skip_if_baseline_from_other_hardware(self, session: ForgeSession, recipe: Recipe) -> None:
        """A baseline measured on other hardware is never compared: the numbers mean nothing."""
        baseline = recipe.baselines.get(self.name)
        if baseline is None or session.config.update_baselines or session.config.endpoint_url:
            return
        here = session.hardware.describe()
        then = baseline.measured_with.hardware
        if comparable_hardware(then) != comparable_hardware(here):
            pytest.skip(
                f"the {self.name} baseline of {recipe.id} was measured on '{then}' with "
                f"vLLM {baseline.measured_with.vllm}, this runner is '{here}' with vLLM "
                f"{session.vllm_version or 'unknown'}; record one here with "
                "--forge-update-baselines"
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, ForgeFailure | ForgeError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"{self.parent.name}::{self.name}"
