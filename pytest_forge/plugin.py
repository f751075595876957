"""pytest hooks and options. Everything else lives in the pipeline modules.

pytest loads this module in every run of every repository where pytest-forge is
installed, so it imports nothing heavy: the session, the recipe model and the bench are
imported when a recipe is collected (or a forge test's report arrives), not before.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_forge.benchmark_bridge import register as register_benchmark_bridge
from pytest_forge.endpoint import redact_text
from pytest_forge.forge_item import MARKER_HELP
from pytest_forge.hardware_select import WorkerHandOver, deselect_other_hardware
from pytest_forge.options import CONFIG_KEY, add_options, build_config, forge_config
from pytest_forge.recipe_files import covers_recipes, in_recipes_dir, is_recipe_file
from pytest_forge.shard import select_shard
from pytest_forge.xdist_groups import keep_recipes_together

if TYPE_CHECKING:
    from pytest_forge.session import ForgeSession

# The lines the session's output files returned (written at session finish), printed
# in the terminal summary.
_OUTPUT_LINES = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the forge options (each also an ini key)."""
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Resolve the options; on the controller, keep each recipe on one xdist worker and
    listen for the forge tests' reports."""
    config.addinivalue_line("markers", MARKER_HELP)
    forge = build_config(config)
    if forge.report_dir is not None and importlib.util.find_spec("matplotlib") is None:
        # Say so now, not in the summary at the end of a long run.
        raise pytest.UsageError(
            "--forge-report needs matplotlib: pip install 'pytest-forge[report]'"
        )
    config.stash[CONFIG_KEY] = forge
    if forge.hardware_only:  # pytest-xdist: the workers' deselections reach the controller
        config.pluginmanager.register(WorkerHandOver(config), "forge-hardware-select")
    # pytest-xdist: keep a recipe's tests on one worker (one boot, one writer of its file),
    # and let the controller gather the workers' results for the summary.
    dist = getattr(config.option, "dist", "no")
    if not hasattr(config, "workerinput"):
        keep_recipes_together(config, forge)
        config.pluginmanager.register(
            _GateReports(config, from_workers=dist != "no"), "forge-gate-reports"
        )
        register_benchmark_bridge(config)  # pytest-benchmark rounds: benchmark_bridge.py


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A recipe file (see recipe_files.py) becomes a collector of its tests; other YAML
    in the recipes directory is left alone."""
    forge = forge_config(parent.config)
    if in_recipes_dir(file_path, forge.recipes_dir) and is_recipe_file(file_path):
        from pytest_forge.items import RecipeFile

        return RecipeFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(trylast=True)  # after -k/-m: the shards split what is selected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--forge-hardware-only: drop the recipes this runner cannot run; then --forge-shard
    I/N: keep this shard's share of the rest (so runners of one class share its recipes)."""
    deselect_other_hardware(config, items)
    select_shard(config, items)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Recipes, workloads, and the vLLM and hardware measured on, when this run collects
    recipes (nothing, and nothing looked up, otherwise)."""
    forge = forge_config(config)
    if not covers_recipes(config, forge.recipes_dir):
        return []
    from pytest_forge.session import forge_session
    from pytest_forge.terminal import header_lines

    return header_lines(forge_session(config))


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """A tune candidate that lost is shown as REJECTED (r), not as an xfail."""
    status = getattr(report, "forge_status", None)
    if status == "rejected" and report.when == "call":
        return "rejected", "r", ("REJECTED", {"yellow": True})
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Redact every report; a forge test's report carries its result (to the xdist
    controller too)."""
    outcome = yield
    report = outcome.get_result()
    _redact_report(report)
    if getattr(item, "forge_gate", False):
        report.forge_gate = True
    if call.when == "call":
        status = getattr(item, "forge_status", None)
        if status is not None:
            report.forge_status = status
        case = getattr(item, "forge_case", None)
        if case is not None:
            # Travels with the report from a pytest-xdist worker to the controller.
            report.forge_case = case
        tune = getattr(item, "forge_tune", None)
        if tune is not None:
            report.forge_tune = tune


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Redact every collection report."""
    outcome = yield
    _redact_report(outcome.get_result())


def _redact_report(report: pytest.TestReport | pytest.CollectReport) -> None:
    """No credential reaches the terminal, JUnit XML, results.json or the HTML report
    through a traceback (``--tb=long``, ``-l``) or captured output: a last line of defence
    behind URLs that never carry them."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        report.longrepr = (longrepr[0], longrepr[1], redact_text(str(longrepr[2])))
    elif longrepr is not None:
        text = report.longreprtext
        clean = redact_text(text)
        if clean != text:
            report.longrepr = clean
    report.sections = [(title, redact_text(content)) for title, content in report.sections]


class _GateReports:
    """Where the reports arrive (in-process, or on the pytest-xdist controller): notes the
    gate tests that measured nothing, and under xdist gathers the workers' results."""

    def __init__(self, config: pytest.Config, from_workers: bool) -> None:
        self.config = config
        self.from_workers = from_workers

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        tune = getattr(report, "forge_tune", None)
        if tune is None and not getattr(report, "forge_gate", False):
            return  # not a forge test: nothing to import or record
        from pytest_forge.results import case_from_dict
        from pytest_forge.session import Unmeasured, forge_session

        session = forge_session(self.config)
        if tune is not None and self.from_workers:
            session.remote_tune_blocks.append(tune["block"])
            if tune["run_dir"]:  # a dry run's plan has none
                session.remote_tune_runs.append(Path(tune["run_dir"]))
            session.results.extend(case_from_dict(c) for c in tune["cases"])
        if not getattr(report, "forge_gate", False):
            return
        case = getattr(report, "forge_case", None)
        if case is not None:
            if self.from_workers:
                session.results.append(case_from_dict(case))
                session.boots += bool(case.get("booted"))
            return
        if report.when == "teardown" or not (report.failed or report.skipped):
            return
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        else:
            reason = report.longreprtext.strip()
        session.unmeasured.append(Unmeasured(report.nodeid, report.outcome, reason))


def _session(config: pytest.Config) -> ForgeSession | None:
    """The ForgeSession when this run has one (it collected a recipe or received a forge
    test's report), else None: without one there is nothing to stop, write or print."""
    # Created only by session.py's forge_session(): not imported yet, no session (and a
    # run without recipes never imports it).
    module = sys.modules.get("pytest_forge.session")
    return None if module is None else module.existing_session(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the servers; on the controller (not on an xdist worker), write the output
    files (results.json, benchmark JSON, step summary, HTML report), also when pytest's
    terminal is off (``-p no:terminal``)."""
    config = session.config
    forge = _session(config)
    if forge is None:
        return
    forge.stop_all()
    if hasattr(config, "workerinput"):
        return  # a pytest-xdist worker: the controller writes the merged results
    from pytest_forge.outputs import write_outputs

    config.stash[_OUTPUT_LINES] = write_outputs(config, forge.results)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """The forge summary: the tune's experiments, the results table, what was not
    judged, and the files written at session finish."""
    forge = _session(config)
    if forge is None or hasattr(config, "workerinput"):
        return  # nothing forge ran; or a worker: the controller reports the merged results
    from pytest_forge.terminal import write_summary

    lines: list[str] = config.stash.get(_OUTPUT_LINES, [])
    write_summary(terminalreporter, config, forge, lines)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop any server still up (an interrupted session)."""
    forge = _session(config)
    if forge is not None:
        forge.stop_all()
