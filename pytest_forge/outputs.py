"""The files a run leaves at session end, from pytest's side: the one place that reads the
pytest session to decide which sinks (sinks.py) to build, then feeds them the results."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pytest_forge.hardware_select import deselection
from pytest_forge.results import CaseResult
from pytest_forge.session import forge_session
from pytest_forge.shard import current_shard
from pytest_forge.sinks import OutputOptions, build_sinks, step_summary_from_env, write_all
from pytest_forge.tune_items import tune_run_dirs


def output_options(config: pytest.Config, ran: bool) -> OutputOptions:
    """What this session asked for; ``ran``: whether any gate test ran.

    Without a gate test there is no results.json, and the run directory, the hardware and
    the vLLM version are not looked up (the first creates a directory, the others probe).
    """
    session = forge_session(config)
    forge = session.config
    deselected = deselection(config)
    return OutputOptions(
        results_json=session.run_dir / "results.json" if ran else None,
        bench_json=forge.bench_json,
        step_summary=step_summary_from_env(),
        report_dir=forge.report_dir,
        tune_runs=tuple(tune_run_dirs(config)) if forge.tune else (),
        hardware=session.hardware.describe() if ran else "unknown",
        vllm_version=session.vllm_version if ran else None,
        shard=current_shard(config),
        hardware_deselected=None if deselected is None else tuple(deselected.tests),
    )


def write_outputs(config: pytest.Config, results: Sequence[CaseResult]) -> list[str]:
    """Files the user asked for, and the run's results.json; returns lines to print."""
    unmeasured = forge_session(config).unmeasured
    options = output_options(config, ran=bool(results or unmeasured))
    return write_all(build_sinks(options), results, unmeasured)
