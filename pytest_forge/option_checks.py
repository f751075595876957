"""The forge options' checks: each value that cannot work is a pytest.UsageError naming
the option, raised while pytest starts (before anything is collected or booted).

Imported with the plugin, so it imports nothing heavy: the endpoint, objective, agent and
layer checks import their modules only when those options are given.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import pytest

if TYPE_CHECKING:
    from pytest_forge.endpoint import Credentials


def strict_mode(flags: dict[str, bool]) -> bool:
    """Whether unjudged tests fail: --forge-strict, else on under CI unless --forge-no-strict."""
    if flags["forge_strict"] and flags["forge_no_strict"]:
        raise pytest.UsageError("--forge-strict and --forge-no-strict contradict each other")
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return flags["forge_strict"] or (ci and not flags["forge_no_strict"])


def check_dirs(config: pytest.Config, root: Path) -> None:
    """--forge-recipes and --forge-workloads, when given, must be directories."""
    for key in ("forge_recipes", "forge_workloads"):
        given = config.getoption(key)  # only when asked for: the default may well be absent
        if given is not None and not (root / given).is_dir():
            flag = "--" + key.replace("_", "-")
            raise pytest.UsageError(f"{flag} {given}: no such directory under {root}")


def check_ab(values: dict[str, Any], tune: bool, root: Path) -> Literal["repeat", "boot"]:
    """The A/B options checked; returns the interleaving level."""
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
    return cast("Literal['repeat', 'boot']", ab_level or _default_ab_level())


def _default_ab_level() -> str:
    # Two servers fit at once on the CPU path; on GPUs each recipe expects the whole device.
    has_gpu = shutil.which("nvidia-smi") or shutil.which("rocm-smi")
    return "boot" if has_gpu else "repeat"


# Flags a resumed tune compares with its stored config (settings.py), like the options.
LAYER_FLAGS = ("forge_skip_config", "forge_skip_quant")


def check_layers(values: dict[str, Any], flags: dict[str, bool], tune: bool) -> None:
    """The layer options and --forge-dry-run checked: a usage error names the option."""
    if flags["forge_dry_run"] and not tune:
        raise pytest.UsageError(
            "--forge-dry-run shows a tune's plan: add --forge-tune (or --forge-resume)"
        )
    keys = ("forge_start_layer", "forge_max_config_experiments", "forge_max_quant_experiments")
    if not any(values[k] is not None for k in keys) and not any(flags[f] for f in LAYER_FLAGS):
        return  # the defaults are valid; nothing imported for a plain gate run
    from pytest_forge.tune.options import layer_options_problem

    problem = layer_options_problem(
        skip_config=flags["forge_skip_config"],
        skip_quant=flags["forge_skip_quant"],
        start_layer=1 if values["forge_start_layer"] is None else values["forge_start_layer"],
        max_config_experiments=values["forge_max_config_experiments"],
        max_quant_experiments=values["forge_max_quant_experiments"],
    )
    if problem:
        raise pytest.UsageError(problem)


def check_objective(objective: str | None) -> str:
    """--forge-objective checked; returns it (default: throughput)."""
    if objective is None:
        return "throughput"
    from pytest_forge.tune.objective import OBJECTIVES

    if objective not in OBJECTIVES:
        raise pytest.UsageError(
            f"--forge-objective {objective!r}: choose one of {', '.join(OBJECTIVES)}"
        )
    return objective


def check_agent(spec: str | None) -> None:
    """A key over plain http off this machine is refused before anything runs (other
    problems with a spec fail the tune's tests, which name them)."""
    from pytest_forge.errors import ForgeError
    from pytest_forge.tune.agent_spec import check_agent_transport, default_agent_spec

    option = "--forge-agent" if spec else "the default agent"
    try:
        check_agent_transport(spec or default_agent_spec(os.environ), os.environ, option)
    except ForgeError as e:
        raise pytest.UsageError(str(e)) from None


def endpoint_option(url: str | None) -> tuple[str | None, Credentials | None]:
    """--forge-endpoint without its user:password, and those; a usage error for a URL that
    is not http(s), or that would send a credential over plain http off this machine."""
    if not url:
        return None, None
    from pytest_forge.endpoint import ENDPOINT_KEY_ENV, parse_endpoint
    from pytest_forge.errors import ForgeError

    try:
        endpoint = parse_endpoint(url, os.environ.get(ENDPOINT_KEY_ENV) or None)
    except ForgeError as e:
        raise pytest.UsageError(str(e)) from None
    return endpoint.url, endpoint.credentials


__all__ = [
    "LAYER_FLAGS",
    "check_ab",
    "check_agent",
    "check_dirs",
    "check_layers",
    "check_objective",
    "endpoint_option",
    "strict_mode",
]
