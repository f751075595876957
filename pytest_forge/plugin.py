"""pytest hooks and options. Everything else lives in the pipeline modules."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.endpoint import (
    ENDPOINT_KEY_ENV,
    Credentials,
    parse_endpoint,
    redact_text,
    redact_url,
)
from pytest_forge.errors import ForgeError
from pytest_forge.items import ErrorItem, GateItem, RecipeFile
from pytest_forge.session import SESSION_KEY, ForgeConfig, ForgeSession, Unmeasured, forge_session
from pytest_forge.xdist_groups import keep_recipes_together

# (option, ini key, type, default, help). Every option is also an ini key.
_OPTIONS: list[tuple[str, str, Any, Any, str]] = [
    ("--forge-recipes", "forge_recipes", str, "recipes", "recipes directory"),
    ("--forge-workloads", "forge_workloads", str, "workloads", "workloads directory"),
    ("--forge-run-dir", "forge_run_dir", str, ".forge", "where runs, logs and tune stores go"),
    (
        "--forge-endpoint",
        "forge_endpoint",
        str,
        None,
        "benchmark this running OpenAI-compatible server instead of booting vLLM "
        "(API key from FORGE_ENDPOINT_API_KEY, or user:password@ in the URL; sent only "
        "over https or to a loopback address)",
    ),
    (
        "--forge-repeats",
        "forge_repeats",
        int,
        None,
        "timed repeats per test, median reported (default: the workload's repeats, else 3)",
    ),
    (
        "--forge-max-repeats",
        "forge_max_repeats",
        int,
        None,
        "an inconclusive verdict adds repeats (A/B: rounds) on the running server up to this "
        "many (default 10)",
    ),
    (
        "--forge-ab-ref",
        "forge_ab_ref",
        str,
        None,
        "A/B: measure each recipe as it is at this git ref (side A, e.g. origin/main) against "
        "the working tree (B), interleaved on this runner; judge the paired ratio B/A",
    ),
    (
        "--forge-ab-python",
        "forge_ab_python",
        str,
        None,
        "A/B: side A runs vLLM from this Python interpreter (e.g. a venv with the old vLLM "
        "pin), side B from this environment",
    ),
    (
        "--forge-ab-level",
        "forge_ab_level",
        str,
        None,
        "A/B interleaving: 'repeat' (both servers up, alternate repeats; default without a "
        "GPU) or 'boot' (one server at a time, alternate boots; default on GPUs)",
    ),
    (
        "--forge-accuracy-floor",
        "forge_accuracy_floor",
        float,
        None,
        "accuracy floor for every test (overrides recipes and workloads)",
    ),
    (
        "--forge-tolerance",
        "forge_tolerance",
        float,
        None,
        "the smallest throughput drop that matters, e.g. 0.05 (default: the recipe's "
        "gates.throughput_tolerance, else 0.05)",
    ),
    ("--forge-boot-timeout", "forge_boot_timeout", float, 900.0, "seconds for vLLM to boot"),
    (
        "--forge-kv-sample-interval",
        "forge_kv_sample_interval",
        float,
        0.0,
        "sample vLLM's KV-cache usage every S seconds during timed repeats (default 0: off; "
        "each /metrics request stalls vLLM's API server and so the measurement)",
    ),
    (
        "--forge-bench-json",
        "forge_bench_json",
        str,
        None,
        "write github-action-benchmark custom JSON here",
    ),
    ("--forge-report", "forge_report", str, None, "write an HTML report with plots here"),
    # tune
    (
        "--forge-agent",
        "forge_agent",
        str,
        None,
        "tuning agent: anthropic/<model>, openai/<model>, openrouter/<model>, ollama/<model>, "
        "http(s)://host/v1#<model>, or playbook (default: Claude if ANTHROPIC_API_KEY is set)",
    ),
    ("--forge-budget", "forge_budget", int, 8, "tuning experiments per recipe"),
    ("--forge-max-hours", "forge_max_hours", float, None, "wall-clock limit for a tune"),
    ("--forge-max-dollars", "forge_max_dollars", float, None, "LLM spend limit for a tune"),
    (
        "--forge-min-improvement",
        "forge_min_improvement",
        float,
        0.02,
        "a candidate must beat the best by this fraction (and by the noise)",
    ),
    (
        "--forge-objective",
        "forge_objective",
        str,
        "throughput",
        "tuning objective: throughput, goodput or latency",
    ),
    ("--forge-playbook", "forge_playbook", str, None, "custom playbook.md"),
    (
        "--forge-patience",
        "forge_patience",
        int,
        3,
        "converged after this many experiments in a row without a keep",
    ),
]
_FLAGS = [
    (
        "--forge-update-baselines",
        "forge_update_baselines",
        "record measured baselines (and greedy outputs) into the recipe files",
    ),
    ("--forge-tune", "forge_tune", "tune recipes with an agent instead of gating them"),
    (
        "--forge-resume",
        "forge_resume",
        "tune, resuming each recipe's latest unfinished tune run with the options it "
        "started with (implies --forge-tune)",
    ),
    (
        "--forge-strict",
        "forge_strict",
        "fail every selected test that was not judged (no baseline, other hardware, skipped, "
        "inconclusive, boot failure); the default when the CI environment variable is set",
    ),
    ("--forge-no-strict", "forge_no_strict", "report tests that were not judged, do not fail"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("forge", "pytest-forge: vLLM recipe benchmarks")
    for opt, ini, typ, default, help_ in _OPTIONS:
        group.addoption(opt, dest=ini, type=typ, default=None, help=help_)
        # No ini default (_build_config applies `default`): an unset key reads as None,
        # so a resumed tune can tell a value given from one left at its default.
        shown = help_ if default is None else f"{help_} (default: {default})"
        parser.addini(ini, help=shown, default=None)
    for opt, ini, help_ in _FLAGS:
        group.addoption(opt, dest=ini, action="store_true", default=False, help=help_)
        parser.addini(ini, help=help_, type="bool", default=False)


def _value(config: pytest.Config, ini: str, typ: Any) -> Any:
    value = config.getoption(ini)
    if value is None:
        raw = config.getini(ini)
        try:
            value = None if raw in (None, "") else typ(raw)
        except ValueError:
            # A typo in pytest.ini/pyproject.toml is a usage error, not an INTERNALERROR.
            raise pytest.UsageError(
                f"ini option {ini} = {raw!r}: expected "
                + ("a number" if typ is float else "an integer")
            ) from None
    return value


def _build_config(config: pytest.Config) -> ForgeConfig:
    root = Path(config.rootpath)
    values = {ini: _value(config, ini, typ) for _, ini, typ, _, _ in _OPTIONS}
    flags = {ini: bool(config.getoption(ini) or config.getini(ini)) for _, ini, _ in _FLAGS}
    # --forge-resume alone resumes the tune (it used to run the gate instead).
    tune = flags["forge_tune"] or flags["forge_resume"]

    def path(key: str) -> Path | None:
        value = values[key]
        return None if value is None else (root / value).resolve()

    if flags["forge_strict"] and flags["forge_no_strict"]:
        raise pytest.UsageError("--forge-strict and --forge-no-strict contradict each other")
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    strict = flags["forge_strict"] or (ci and not flags["forge_no_strict"])
    ab_level = values["forge_ab_level"]
    if ab_level not in (None, "repeat", "boot"):
        raise pytest.UsageError(f"--forge-ab-level must be 'repeat' or 'boot', got {ab_level!r}")
    ab = values["forge_ab_ref"] or values["forge_ab_python"]
    if ab and values["forge_endpoint"]:
        raise pytest.UsageError("A/B mode boots both sides itself: drop --forge-endpoint")
    if ab and tune:
        raise pytest.UsageError(
            "--forge-ab-ref/--forge-ab-python gate recipes; not with --forge-tune"
        )
    python = values["forge_ab_python"]
    if python and not (shutil.which(python) or Path(python).is_file()):
        raise pytest.UsageError(f"--forge-ab-python {python}: no such interpreter")
    if python and Path(python).is_file() and Path(python).absolute().parent == root:
        # pytest took the separate value for its rootdir (and so lost the project's ini).
        raise pytest.UsageError(
            f"write --forge-ab-python={python} (with '='): as a separate argument pytest "
            f"also took it as a path and chose {root} as its rootdir"
        )
    from pytest_forge.tune.objective import OBJECTIVES

    objective = values["forge_objective"] or "throughput"
    if objective not in OBJECTIVES:
        raise pytest.UsageError(
            f"--forge-objective {objective!r}: choose one of {', '.join(OBJECTIVES)}"
        )
    for key in ("forge_recipes", "forge_workloads"):
        given = config.getoption(key)  # only when asked for: the default may well be absent
        if given is not None and not (root / given).is_dir():
            flag = "--" + key.replace("_", "-")
            raise pytest.UsageError(f"{flag} {given}: no such directory under {root}")
    endpoint, endpoint_credentials = _endpoint_option(values["forge_endpoint"])
    if tune:
        from pytest_forge.tune.agent_spec import check_agent_transport, default_agent_spec

        # A key over plain http off this machine is refused before anything runs (other
        # problems with a spec fail the tune's tests, which name them).
        option = "--forge-agent" if values["forge_agent"] else "the default agent"
        try:
            check_agent_transport(
                values["forge_agent"] or default_agent_spec(os.environ), os.environ, option
            )
        except ForgeError as e:
            raise pytest.UsageError(str(e)) from None
    max_repeats = values["forge_max_repeats"]
    if max_repeats is not None and max_repeats < 1:
        raise pytest.UsageError(f"--forge-max-repeats must be >= 1, got {max_repeats}")
    return ForgeConfig(
        recipes_dir=path("forge_recipes") or root / "recipes",
        workloads_dir=path("forge_workloads") or root / "workloads",
        run_root=path("forge_run_dir") or root / ".forge",
        endpoint_url=endpoint,
        endpoint_credentials=endpoint_credentials,
        repeats=values["forge_repeats"],
        max_repeats=max_repeats,
        strict=strict,
        ab_ref=values["forge_ab_ref"],
        ab_python=python,
        ab_level=ab_level or _default_ab_level(),
        accuracy_floor=values["forge_accuracy_floor"],
        tolerance=values["forge_tolerance"],
        boot_timeout_s=values["forge_boot_timeout"] or 900.0,
        kv_sample_interval_s=values["forge_kv_sample_interval"] or 0.0,
        update_baselines=flags["forge_update_baselines"],
        bench_json=path("forge_bench_json"),
        report_dir=path("forge_report"),
        tune=tune,
        agent=values["forge_agent"],
        budget=values["forge_budget"] if values["forge_budget"] is not None else 8,
        max_hours=values["forge_max_hours"],
        max_dollars=values["forge_max_dollars"],
        min_improvement=values["forge_min_improvement"]
        if values["forge_min_improvement"] is not None
        else 0.02,
        objective=objective,
        playbook=path("forge_playbook"),
        resume=flags["forge_resume"],
        explicit=frozenset(ini for ini, value in values.items() if value is not None),
        patience=values["forge_patience"] or 3,
    )


def _endpoint_option(url: str | None) -> tuple[str | None, Credentials | None]:
    """--forge-endpoint without its user:password, and those; a usage error for a URL that
    is not http(s), or that would send a credential over plain http off this machine."""
    if not url:
        return None, None
    try:
        endpoint = parse_endpoint(url, os.environ.get(ENDPOINT_KEY_ENV) or None)
    except ForgeError as e:
        raise pytest.UsageError(str(e)) from None
    return endpoint.url, endpoint.credentials


def _default_ab_level() -> str:
    # Two servers fit at once on the CPU path; on GPUs each recipe expects the whole device.
    has_gpu = shutil.which("nvidia-smi") or shutil.which("rocm-smi")
    return "boot" if has_gpu else "repeat"


def pytest_configure(config: pytest.Config) -> None:
    forge = _build_config(config)
    if forge.report_dir is not None and importlib.util.find_spec("matplotlib") is None:
        # Say so now, not in the summary at the end of a long run.
        raise pytest.UsageError(
            "--forge-report needs matplotlib: pip install 'pytest-forge[report]'"
        )
    config.stash[SESSION_KEY] = ForgeSession(forge)
    # pytest-xdist: keep a recipe's tests on one worker (one boot, one writer of its file),
    # and let the controller gather the workers' results for the summary.
    dist = getattr(config.option, "dist", "no")
    if not hasattr(config, "workerinput"):
        keep_recipes_together(config, forge)
        config.pluginmanager.register(
            _GateReports(config.stash[SESSION_KEY], from_workers=dist != "no"),
            "forge-gate-reports",
        )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> RecipeFile | None:
    forge = forge_session(parent.config).config
    if file_path.suffix in (".yaml", ".yml") and file_path.parent == forge.recipes_dir:
        return RecipeFile.from_parent(parent, path=file_path)
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = forge_session(config)
    forge = session.config
    if not forge.recipes_dir.is_dir():
        return []
    lines = [f"forge: recipes {forge.recipes_dir}, workloads {forge.workloads_dir}"]
    if forge.endpoint_url:
        lines.append(f"forge: benchmarking the running server at {redact_url(forge.endpoint_url)}")
    else:
        # What every baseline is compared against: the versions "now".
        lines.append(
            f"forge: vLLM {session.vllm_version or 'not installed'} on "
            f"{session.hardware.describe()}"
        )
    if forge.tune:
        from pytest_forge.tune_items import tune_header

        lines.append(redact_text(tune_header(session)))  # the agent spec may hold a URL
    return lines


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    status = getattr(report, "forge_status", None)
    if status == "rejected" and report.when == "call":
        return "rejected", "r", ("REJECTED", {"yellow": True})
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    _redact_report(report)
    if isinstance(item, GateItem | ErrorItem):
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

    def __init__(self, session: ForgeSession, from_workers: bool) -> None:
        self.session = session
        self.from_workers = from_workers

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_forge.pipeline import case_from_dict

        tune = getattr(report, "forge_tune", None)
        if tune is not None and self.from_workers:
            self.session.remote_tune_blocks.append(tune["block"])
            self.session.remote_tune_runs.append(Path(tune["run_dir"]))
            self.session.results.extend(case_from_dict(c) for c in tune["cases"])
        if not getattr(report, "forge_gate", False):
            return
        case = getattr(report, "forge_case", None)
        if case is not None:
            if self.from_workers:
                self.session.results.append(case_from_dict(case))
                self.session.boots += bool(case.get("booted"))
            return
        if report.when == "teardown" or not (report.failed or report.skipped):
            return
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        else:
            reason = report.longreprtext.strip()
        self.session.unmeasured.append(Unmeasured(report.nodeid, report.outcome, reason))


def pytest_sessionfinish(session: pytest.Session) -> None:
    forge = session.config.stash.get(SESSION_KEY, None)
    if forge is not None:
        forge.stop_all()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    from pytest_forge import report
    from pytest_forge.outputs import write_outputs

    if hasattr(config, "workerinput"):
        return  # a pytest-xdist worker: the controller reports the merged results
    session = forge_session(config)
    if session.config.tune:
        from pytest_forge.tune_items import tune_summary

        text = tune_summary(config)
        if text:
            terminalreporter.write_sep("=", "pytest-forge tune")
            terminalreporter.write_line(text)
    results = session.results
    if results:
        terminalreporter.write_sep("=", "pytest-forge summary")
        terminalreporter.write_line(report.versions_line(results))
        for label in sorted(
            {r.verdict.reference_label for r in results if r.verdict.reference_label}
        ):
            terminalreporter.write_line(f"A/B: {label}")
        table = report.format_table(report.SUMMARY_HEADER, report.summary_rows(results))
        for line in table.splitlines():
            terminalreporter.write_line(line)
        for r in results:
            for note in r.notes:
                terminalreporter.write_line(f"forge: {note}")
        if any(r.verdict.status == "no-baseline" for r in results) and not (
            session.config.update_baselines
        ):
            terminalreporter.write_line(
                "forge: tests without a committed baseline measured and reported only; "
                "record baselines with --forge-update-baselines, or compare A/B with "
                "--forge-ab-ref REF"
            )
    if (results or session.unmeasured) and not session.config.tune:
        # (A tune's rows are its winner's confirmation run, not gate tests: nothing to count.)
        counts = report.judged_counts(results, session.unmeasured)
        line = report.judged_line(counts, session.config.strict)
        loud = counts["not_judged"] and not session.config.strict
        terminalreporter.write_line(line, yellow=bool(loud), bold=bool(loud))
    for line in write_outputs(config, results):
        terminalreporter.write_line(line)
    if session.boots:
        terminalreporter.write_line(f"forge: {session.boots} vLLM server boot(s)")


def pytest_unconfigure(config: pytest.Config) -> None:
    forge = config.stash.get(SESSION_KEY, None)
    if forge is not None:
        forge.stop_all()
