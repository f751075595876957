"""What a tune run measures with: fixed when the run starts (its ``config.json``) and taken
from there when it is resumed.

Every score of a run is a ratio to the run's baseline, so a resumed tune must measure as
the run began: the same repeats, accuracy floor, workloads, boot timeout, objective and
limits, on the same hardware and vLLM. A value given again on the resuming command line
(or in the ini file) that differs from the stored one is refused, naming both; a value not
given is taken from the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import ForgeError
from pytest_forge.hardware import comparable_hardware
from pytest_forge.tune.agent_spec import public_agent_spec
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.store import CONFIG

if TYPE_CHECKING:
    from pytest_forge.session import ForgeConfig


@dataclass(frozen=True)
class TuneSettings:
    """Everything a tune run measures with: its options, agent, playbook and workloads."""

    options: TuneOptions
    agent: str  # the agent spec to build (with credentials when given on this command line)
    playbook: Path | None
    repeats: int | None
    accuracy_floor: float | None
    workloads_dir: Path
    workloads: tuple[str, ...] | None  # None: the recipe's (a run stored before they were)
    boot_timeout_s: float


# (ForgeConfig attribute = config.json key, the ini key its option sets)
_STORED: tuple[tuple[str, str], ...] = (
    ("budget", "forge_budget"),
    ("max_hours", "forge_max_hours"),
    ("max_dollars", "forge_max_dollars"),
    ("min_improvement", "forge_min_improvement"),
    ("objective", "forge_objective"),
    ("patience", "forge_patience"),
    ("playbook", "forge_playbook"),
    ("repeats", "forge_repeats"),
    ("accuracy_floor", "forge_accuracy_floor"),
    ("workloads_dir", "forge_workloads"),
    ("workloads", "forge_tune_workloads"),
    ("boot_timeout_s", "forge_boot_timeout"),
    ("agent", "forge_agent"),
    ("skip_config", "forge_skip_config"),
    ("skip_quant", "forge_skip_quant"),
    ("start_layer", "forge_start_layer"),
    ("max_config_experiments", "forge_max_config_experiments"),
    ("max_quant_experiments", "forge_max_quant_experiments"),
)


def config_record(
    config: ForgeConfig,
    recipe_id: str,
    recipe_path: Path | None,
    agent_spec: str,
    workloads: Sequence[str],
    hardware: str,
    vllm: str | None,
) -> dict[str, Any]:
    """A new run's ``config.json``: every option that shapes its measurements."""
    return {
        "recipe_id": recipe_id,
        "recipe_path": str(recipe_path),
        "agent": public_agent_spec(agent_spec),
        "budget": config.budget,
        "max_hours": config.max_hours,
        "max_dollars": config.max_dollars,
        "min_improvement": config.min_improvement,
        "objective": config.objective,
        "playbook": str(config.playbook) if config.playbook else None,
        "patience": config.patience,
        "repeats": config.repeats,
        "accuracy_floor": config.accuracy_floor,
        "workloads_dir": str(config.workloads_dir),
        "workloads": list(workloads),
        "boot_timeout_s": config.boot_timeout_s,
        "skip_config": config.skip_config,
        "skip_quant": config.skip_quant,
        "start_layer": config.start_layer,
        "max_config_experiments": config.max_config_experiments,
        "max_quant_experiments": config.max_quant_experiments,
        "hardware": hardware,
        "vllm": vllm,
    }


def _tune_options(value: Callable[[str], Any]) -> TuneOptions:
    """TuneOptions from one source of values by ForgeConfig attribute name (this command
    line's, or a stored run's with this command line's as the default)."""
    return TuneOptions(
        budget=int(value("budget")),
        max_hours=value("max_hours"),
        max_dollars=value("max_dollars"),
        min_improvement=float(value("min_improvement")),
        objective=str(value("objective")),
        patience=int(value("patience")),
        skip_config=bool(value("skip_config")),
        skip_quant=bool(value("skip_quant")),
        start_layer=int(value("start_layer")),
        max_config_experiments=value("max_config_experiments"),
        max_quant_experiments=value("max_quant_experiments"),
    )


def fresh_settings(config: ForgeConfig, agent_spec: str) -> TuneSettings:
    """A new run's settings: this command line's."""
    return TuneSettings(
        options=_tune_options(lambda key: getattr(config, key)),
        agent=agent_spec,
        playbook=config.playbook,
        repeats=config.repeats,
        accuracy_floor=config.accuracy_floor,
        workloads_dir=config.workloads_dir,
        workloads=None,
        boot_timeout_s=config.boot_timeout_s,
    )


def resumed_settings(
    config: ForgeConfig,
    stored: Mapping[str, Any],
    run_dir: Path,
    agent_spec: str,
    hardware: str,
    vllm: str | None,
) -> TuneSettings:
    """A resumed run's settings: its ``config.json``'s. Raises ForgeError naming every value
    given now that differs from the stored one, and a change of hardware or vLLM."""
    where = run_dir / CONFIG
    problems = [
        f"{_flag(ini)} {_show(_given(config, key, agent_spec))} on this command line, "
        f"{key} {_show(stored[key])} in {where}"
        for key, ini in _STORED
        if ini in config.explicit
        and key in stored
        and not _same(_given(config, key, agent_spec), stored[key])
    ]
    then = stored.get("hardware")
    if isinstance(then, str) and comparable_hardware(then) != comparable_hardware(hardware):
        problems.append(f"the run measured on '{then}', this runner is '{hardware}'")
    if "vllm" in stored and stored["vllm"] != vllm:
        problems.append(f"the run measured vLLM {stored['vllm']}, this environment has {vllm}")
    if problems:
        raise ForgeError(
            f"cannot resume tune run {run_dir.name}: "
            + "; ".join(problems)
            + ". A resumed tune measures as the run began, so its scores compare like with "
            "like: drop the conflicting options to resume it with the stored ones, or start "
            "a new run (without --forge-resume)"
        )

    value = stored.get
    # The stored spec has no credentials: keep the one given now when it is the same.
    stored_agent = stored.get("agent")
    agent = agent_spec if stored_agent in (None, public_agent_spec(agent_spec)) else stored_agent
    playbook = value("playbook", config.playbook)
    workloads = stored.get("workloads")
    return TuneSettings(
        options=_tune_options(lambda key: value(key, getattr(config, key))),
        agent=str(agent),
        playbook=Path(playbook) if playbook else None,
        repeats=value("repeats", config.repeats),
        accuracy_floor=value("accuracy_floor", config.accuracy_floor),
        workloads_dir=Path(value("workloads_dir", config.workloads_dir)),
        workloads=tuple(str(w) for w in workloads) if isinstance(workloads, list) else None,
        boot_timeout_s=float(value("boot_timeout_s", config.boot_timeout_s)),
    )


def _given(config: ForgeConfig, key: str, agent_spec: str) -> Any:
    if key == "agent":
        return public_agent_spec(agent_spec)
    value = getattr(config, key)
    return str(value) if isinstance(value, Path) else value


def _same(given: Any, stored: Any) -> bool:
    numbers = (int, float)
    if isinstance(given, numbers) and isinstance(stored, numbers):
        return float(given) == float(stored)
    return bool(given == stored)


def _show(value: Any) -> str:
    return "(not set)" if value is None else str(value)


def _flag(ini: str) -> str:
    return "--" + ini.replace("_", "-")


__all__ = ["TuneSettings", "config_record", "fresh_settings", "resumed_settings"]
