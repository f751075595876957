"""The forge options (command line and ini file) and the ForgeConfig they resolve to.

Imported when pytest loads the plugin, so it imports nothing heavy: the endpoint and the
tune agent are checked (and their modules imported) only when those options are given; the
checks themselves are in ``option_checks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from pytest_forge.option_checks import (
    LAYER_FLAGS,
    check_ab,
    check_agent,
    check_dirs,
    check_layers,
    check_objective,
    endpoint_option,
    strict_mode,
)
from pytest_forge.shard import shard_value

if TYPE_CHECKING:
    from pytest_forge.endpoint import Credentials
    from pytest_forge.pipeline import GateOptions

# (option, ini key, type, default, help). Every option is also an ini key.
OPTIONS: list[tuple[str, str, Any, Any, str]] = [
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
    (
        "--forge-shard",
        "forge_shard",
        shard_value,  # a bad I/N is a usage error while pytest reads it (xdist: on the controller)
        None,
        "run shard I of N (e.g. 2/4): a stable share of the recipes, each whole; "
        "`forge merge` combines the shards' outputs",
    ),
    # tune
    (
        "--forge-agent",
        "forge_agent",
        str,
        None,
        "tuning agent: anthropic/<model>, <provider>/<model> (openai, openrouter, together, "
        "groq, fireworks, deepinfra, mistral, deepseek, cerebras, xai, ollama, lmstudio), "
        "http(s)://host/v1#<model>, or playbook (default: Claude if ANTHROPIC_API_KEY is set)",
    ),
    ("--forge-budget", "forge_budget", int, 8, "tuning experiments per recipe"),
    (
        "--forge-tune-workloads",
        "forge_tune_workloads",
        str,
        None,
        "tune on these workloads only, comma-separated, e.g. crowd (default: the recipe's "
        "workloads, else every workload)",
    ),
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
        "tuning objective: throughput, goodput, latency or pareto",
    ),
    ("--forge-playbook", "forge_playbook", str, None, "custom playbook.md"),
    (
        "--forge-patience",
        "forge_patience",
        int,
        3,
        "a layer has converged after this many experiments in a row without a keep",
    ),
    (
        "--forge-start-layer",
        "forge_start_layer",
        int,
        1,
        "tuning layer to start at: 1 serving config, 2 quantization, 3 kernels (scaffolded)",
    ),
    (
        "--forge-max-config-experiments",
        "forge_max_config_experiments",
        int,
        None,
        "at most N experiments in layer 1 (serving config), then on to quantization even "
        "if not converged",
    ),
    (
        "--forge-max-quant-experiments",
        "forge_max_quant_experiments",
        int,
        None,
        "at most N experiments in layer 2 (quantization)",
    ),
]
FLAGS: list[tuple[str, str, str]] = [
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
    ("--forge-skip-config", "forge_skip_config", "tune: skip layer 1 (serving config)"),
    ("--forge-skip-quant", "forge_skip_quant", "tune: skip layer 2 (quantization)"),
    (
        "--forge-dry-run",
        "forge_dry_run",
        "tune: print each recipe's plan (layers, search spaces, hardware gates, the agent's "
        "first proposals) without booting anything or writing a run",
    ),
    (
        "--forge-hardware-only",
        "forge_hardware_only",
        "deselect the recipes this machine's hardware cannot run (other GPU type, count, "
        "quantization), so strict mode judges only what this runner can; results.json lists "
        "them for `forge merge`'s completeness check",
    ),
]


@dataclass
class ForgeConfig:
    """Every forge option, resolved against the rootdir."""

    recipes_dir: Path
    workloads_dir: Path
    run_root: Path
    endpoint_url: str | None = None  # never with user:password: see endpoint_credentials
    # user:password taken out of --forge-endpoint, sent as Basic auth (repr hides them)
    endpoint_credentials: Credentials | None = field(default=None, repr=False)
    repeats: int | None = None  # None: the workload's repeats, else DEFAULT_REPEATS
    max_repeats: int | None = None  # an inconclusive verdict adds repeats up to this
    # Strict: a selected test that was not judged (no reference, skipped, inconclusive,
    # boot failure) fails. Default on when the CI environment variable is set.
    strict: bool = False
    hardware_only: bool = False  # deselect recipes for other hardware (hardware_select.py)
    ab_ref: str | None = None  # A/B: side A is the recipe at this git ref
    ab_python: str | None = None  # A/B: side A runs this interpreter's vLLM
    ab_level: Literal["repeat", "boot"] = "repeat"
    accuracy_floor: float | None = None
    tolerance: float | None = None
    boot_timeout_s: float = 900.0
    update_baselines: bool = False
    kv_sample_interval_s: float = 0.0
    bench_json: Path | None = None
    report_dir: Path | None = None
    # tune
    tune: bool = False
    agent: str | None = None
    budget: int = 8
    max_hours: float | None = None
    max_dollars: float | None = None
    min_improvement: float = 0.02
    objective: str = "throughput"
    playbook: Path | None = None
    resume: bool = False
    patience: int = 3
    # --forge-tune-workloads: the workloads a new tune run measures (None: the recipe's).
    # Named as config.json's key, so a resume can refuse a different list.
    workloads: list[str] | None = None
    # tune layers (tune/layers.py)
    skip_config: bool = False
    skip_quant: bool = False
    start_layer: int = 1
    max_config_experiments: int | None = None
    max_quant_experiments: int | None = None
    dry_run: bool = False  # print the tune's plan, boot and write nothing
    # The ini keys of the options given on the command line or in the ini file (not left
    # at their defaults): a resumed tune refuses those that differ from its stored config.
    explicit: frozenset[str] = frozenset()

    def gate_options(self) -> GateOptions:
        """The options of one gate test's measurement and verdict."""
        from pytest_forge.pipeline import GateOptions

        return GateOptions(
            repeats=self.repeats,
            max_repeats=self.max_repeats,
            accuracy_floor=self.accuracy_floor,
            tolerance=self.tolerance,
            update_baselines=self.update_baselines,
            kv_sample_interval_s=self.kv_sample_interval_s,
        )


CONFIG_KEY = pytest.StashKey[ForgeConfig]()


def add_options(parser: pytest.Parser) -> None:
    """Register every forge option, each also an ini key."""
    group = parser.getgroup("forge", "pytest-forge: vLLM recipe benchmarks")
    for opt, ini, typ, default, help_ in OPTIONS:
        group.addoption(opt, dest=ini, type=typ, default=None, help=help_)
        # No ini default (build_config applies `default`): an unset key reads as None,
        # so a resumed tune can tell a value given from one left at its default.
        shown = help_ if default is None else f"{help_} (default: {default})"
        parser.addini(ini, help=shown, default=None)
    for opt, ini, help_ in FLAGS:
        group.addoption(opt, dest=ini, action="store_true", default=False, help=help_)
        parser.addini(ini, help=help_, type="bool", default=False)


def forge_config(config: pytest.Config) -> ForgeConfig:
    """The run's ForgeConfig, stashed on the pytest config at configure."""
    return config.stash[CONFIG_KEY]


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


def _names(text: str | None) -> list[str] | None:
    """A comma-separated list of names (``"crowd, chat"``), or None when not given."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise pytest.UsageError(f"--forge-tune-workloads: no workload named in {text!r}")
    return names


def build_config(config: pytest.Config) -> ForgeConfig:
    """Every option resolved (command line over ini over default), or a UsageError naming
    the option that is wrong."""
    root = Path(config.rootpath)
    values = {ini: _value(config, ini, typ) for _, ini, typ, _, _ in OPTIONS}
    flags = {ini: bool(config.getoption(ini) or config.getini(ini)) for _, ini, _ in FLAGS}
    # --forge-resume alone resumes the tune (it used to run the gate instead).
    tune = flags["forge_tune"] or flags["forge_resume"]

    def path(key: str) -> Path | None:
        value = values[key]
        return None if value is None else (root / value).resolve()

    strict = strict_mode(flags)
    ab_level = check_ab(values, tune, root)
    objective = check_objective(values["forge_objective"])
    check_dirs(config, root)
    endpoint, endpoint_credentials = endpoint_option(values["forge_endpoint"])
    if tune:
        check_agent(values["forge_agent"])
    check_layers(values, flags, tune)
    max_repeats = values["forge_max_repeats"]
    if max_repeats is not None and max_repeats < 1:
        raise pytest.UsageError(f"--forge-max-repeats must be >= 1, got {max_repeats}")

    def given(key: str, default: Any) -> Any:
        return default if values[key] is None else values[key]

    return ForgeConfig(
        recipes_dir=path("forge_recipes") or root / "recipes",
        workloads_dir=path("forge_workloads") or root / "workloads",
        run_root=path("forge_run_dir") or root / ".forge",
        endpoint_url=endpoint,
        endpoint_credentials=endpoint_credentials,
        repeats=values["forge_repeats"],
        max_repeats=max_repeats,
        strict=strict,
        hardware_only=flags["forge_hardware_only"],
        ab_ref=values["forge_ab_ref"],
        ab_python=values["forge_ab_python"],
        ab_level=ab_level,
        accuracy_floor=values["forge_accuracy_floor"],
        tolerance=values["forge_tolerance"],
        boot_timeout_s=values["forge_boot_timeout"] or 900.0,
        kv_sample_interval_s=values["forge_kv_sample_interval"] or 0.0,
        update_baselines=flags["forge_update_baselines"],
        bench_json=path("forge_bench_json"),
        report_dir=path("forge_report"),
        tune=tune,
        agent=values["forge_agent"],
        budget=given("forge_budget", 8),
        max_hours=values["forge_max_hours"],
        max_dollars=values["forge_max_dollars"],
        min_improvement=given("forge_min_improvement", 0.02),
        objective=objective,
        playbook=path("forge_playbook"),
        resume=flags["forge_resume"],
        explicit=frozenset(ini for ini, value in values.items() if value is not None)
        | {ini for ini in LAYER_FLAGS if flags[ini]},
        patience=values["forge_patience"] or 3,
        workloads=_names(values["forge_tune_workloads"]),
        skip_config=flags["forge_skip_config"],
        skip_quant=flags["forge_skip_quant"],
        start_layer=given("forge_start_layer", 1),
        max_config_experiments=values["forge_max_config_experiments"],
        max_quant_experiments=values["forge_max_quant_experiments"],
        dry_run=flags["forge_dry_run"],
    )


__all__ = ["CONFIG_KEY", "FLAGS", "OPTIONS", "ForgeConfig", "add_options", "build_config"]
