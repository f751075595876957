"""pytest-benchmark's view of a forge run: each gate test a benchmark, each repeat a round.

Everything pytest-forge knows about pytest-benchmark is in this module. pyproject.toml pins
``>=5.0.1,<6``: tests/unit/test_benchmark_bridge.py passes with 5.0.1, 5.2.0 and 5.3.1, and
5.0.0 fails every test that is not a Python function (its makereport hook raises). It reads:

- the session: the plugin object pytest-benchmark registers as ``"pytest-benchmark"``
  (public pluggy lookup; the same object as its private ``config._benchmarksession``), of
  which we read ``benchmarks``, ``options``, ``skip`` and ``only``;
- a benchmark: ``pytest_benchmark.stats.Metadata`` built from a stand-in for its fixture
  (no private ``BenchmarkFixture._make_stats``), with the options its fixture would record.

Behaviours fixed here, each tested (tests/unit/test_benchmark_bridge.py):

- under pytest-xdist (``-n 2``) pytest-benchmark disables itself in every process, so
  ``--benchmark-json`` used to write nothing and say nothing: the rounds are now fed on the
  controller from the reports the workers send back, and the file is written;
- ``--benchmark-only`` skipped every forge test (it keeps tests using the ``benchmark``
  fixture, which forge tests do not): forge tests are benchmarks, so they run;
- ``--benchmark-disable`` and ``--benchmark-skip`` still record nothing for forge tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_forge.forge_item import ForgeItem
from pytest_forge.report import result_properties

if TYPE_CHECKING:
    from pytest_forge.results import CaseResult

PLUGIN_NAME = "pytest-benchmark"  # what pytest-benchmark registers its session as
# The reason pytest-benchmark's --benchmark-only gives the tests it skips.
_ONLY_REASON = "Skipping non-benchmark"


@dataclass
class _Source:
    """What ``Metadata`` reads from the pytest-benchmark fixture that measured it."""

    name: str
    fullname: str
    group: str
    extra_info: dict[str, Any]
    param: str | None = None
    params: dict[str, Any] | None = None
    cprofile_stats: Any = None
    has_error: bool = False


def benchmark_session(config: pytest.Config) -> Any | None:
    """pytest-benchmark's session object, or None when the plugin is not active."""
    return config.pluginmanager.get_plugin(PLUGIN_NAME)


def records_rounds(config: pytest.Config, bs: Any) -> bool:
    """Whether forge results become benchmarks in this process.

    Not with ``--benchmark-skip`` or ``--benchmark-disable`` (read from the options, as
    pytest-benchmark does). Under pytest-xdist pytest-benchmark disables itself although
    nothing was asked, and the controller still writes ``--benchmark-json``: the rounds
    are recorded there.
    """
    if bs is None or bs.skip:
        return False
    asked_off = config.getoption("benchmark_disable", False) and not config.getoption(
        "benchmark_enable", False
    )
    return not asked_off


def _round_options(options: Mapping[str, Any]) -> dict[str, Any]:
    # The options pytest-benchmark's own fixture records with each benchmark (its JSON's
    # "options"), from the session's, so the file reads as it always has. 5.3 added
    # precision and confidence to both.
    timer = options.get("timer")
    out = {
        "disable_gc": options.get("disable_gc"),
        "timer": getattr(timer, "target", timer),
        "min_rounds": options.get("min_rounds"),
        "max_time": float(options.get("max_time") or 0),
        "min_time": float(options.get("min_time") or 0),
    }
    if "precision" in options:
        precise = bool(options.get("precision") and options.get("confidence"))
        out["precision"] = float(options["precision"]) if precise else None
        out["confidence"] = float(options["confidence"]) if precise else None
    out["warmup"] = options.get("warmup") and options.get("warmup_iterations")
    return out


def add_benchmark(bs: Any, nodeid: str, result: CaseResult) -> None:
    """Append ``result`` to pytest-benchmark's session: one round per timed repeat."""
    from pytest_benchmark.stats import Metadata

    extra = {k: v for k, v in result_properties(result).items() if v is not None}
    extra["workload"] = result.workload
    extra["recipe"] = result.recipe_id
    source = _Source(
        name=nodeid.rpartition("::")[2],
        fullname=nodeid,
        group=f"forge:{result.recipe_id}",
        extra_info=extra,
    )
    bench = Metadata(source, iterations=1, options=_round_options(bs.options))
    for repeat in result.measurement.repeats:
        bench.update(repeat.duration_s)
    bs.benchmarks.append(bench)


class BenchmarkBridge:
    """The pytest plugin that feeds forge results to pytest-benchmark (registered by
    plugin.py when pytest-benchmark is active, in the process that writes its files)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)  # after pytest-benchmark marked the tests it skips
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """--benchmark-only: forge tests are benchmarks, so they are not skipped."""
        bs = benchmark_session(self.config)
        if bs is None or not bs.only:
            return
        for item in items:
            if isinstance(item, ForgeItem):
                item.own_markers[:] = [m for m in item.own_markers if not _only_skip(m)]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """A gate test's result (in-process, or sent by a pytest-xdist worker)."""
        case = getattr(report, "forge_case", None)
        if case is None or report.when != "call":
            return
        bs = benchmark_session(self.config)
        if records_rounds(self.config, bs):
            # Here, not at module level: plugin.py imports this module in every pytest run,
            # and results.py brings numpy.
            from pytest_forge.results import case_from_dict

            add_benchmark(bs, report.nodeid, case_from_dict(case))


def _only_skip(mark: pytest.Mark) -> bool:
    reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")
    return mark.name == "skip" and str(reason).startswith(_ONLY_REASON)


def register(config: pytest.Config) -> None:
    """Register the bridge unless pytest-benchmark is absent or this is an xdist worker."""
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("benchmark"):
        return
    config.pluginmanager.register(BenchmarkBridge(config), "forge-benchmark-bridge")
