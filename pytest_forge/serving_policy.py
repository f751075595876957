"""What a recipe may hand to vLLM: reserved args, code-loading options, argv-safe values.

A recipe's ``config:`` becomes vLLM's argv and its ``env:`` the server's environment.
Recipes are committed files anyone can edit in a pull request, so:

- args pytest-forge sets itself (where vLLM listens, the model and its name, secrets)
  are refused in every spelling, including prefixes argparse would expand to them;
- options and variables that make vLLM import or run code from outside vLLM need the
  recipe's explicit ``allow_code_loading:`` opt-in, and a tuning playbook may never put
  them in the agent's search space;
- no value may start a flag: each argv item after ``--flag`` must stay a value.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

__all__ = [
    "CODE_LOADING",
    "OPT_IN_KEY",
    "RESERVED_CONFIG_KEYS",
    "RESERVED_ENV",
    "argv_value_problem",
    "code_loading",
    "code_loading_settings",
    "config_key_problem",
    "env_name_problem",
    "normalise_arg",
    "opt_in_name",
    "search_key_problem",
    "value_problem",
]

OPT_IN_KEY = "allow_code_loading"

_BIND = "pytest-forge serves on 127.0.0.1 at a port it picks"
_TLS = "the benchmark speaks plain HTTP to the server pytest-forge started"
_SECRET = "recipes are committed: secrets come from the runner's environment"
RESERVED_CONFIG_KEYS: Mapping[str, str] = {
    "model": "use the top-level 'model:' key",
    "served_model_name": "the server is named after the recipe's model",
    "host": _BIND,
    "port": _BIND,
    "uds": _BIND,
    "grpc_port": _BIND,
    "api_key": _SECRET,
    "hf_token": _SECRET,
    "ssl_keyfile": _TLS,
    "ssl_certfile": _TLS,
    "ssl_ca_certs": _TLS,
    "ssl_cert_reqs": _TLS,
    "ssl_ciphers": _TLS,
    "enable_ssl_refresh": _TLS,
    "config": "a vLLM --config file would set args out of the recipe's sight",
}

_INTERNAL_BIND = "the address vLLM's internal sockets bind to: it stays on this machine"
RESERVED_ENV: Mapping[str, str] = {
    "VLLM_API_KEY": "vLLM would demand it of every request; " + _SECRET,
    "VLLM_HOST_IP": _INTERNAL_BIND,
    "VLLM_LOOPBACK_IP": _INTERNAL_BIND,
    "VLLM_DP_MASTER_IP": _INTERNAL_BIND,
    "VLLM_NIXL_SIDE_CHANNEL_HOST": _INTERNAL_BIND,
    "VLLM_EC_SIDE_CHANNEL_HOST": _INTERNAL_BIND,
}

_IMPORTS = "imports Python code named by the recipe"
_LIBRARY = "loads a native library or executable named by the recipe"
CODE_LOADING: Mapping[str, str] = {
    "config.trust_remote_code": "runs the Python files of the model's repository",
    "config.middleware": _IMPORTS,
    "config.worker_cls": _IMPORTS,
    "config.worker_extension_cls": _IMPORTS,
    "config.scheduler_cls": _IMPORTS,
    "config.distributed_executor_backend": _IMPORTS + " (any value but ray, mp, uni, "
    "external_launcher)",
    "config.logits_processors": _IMPORTS,
    "config.model_class_overrides": _IMPORTS,
    "config.io_processor_plugin": _IMPORTS,
    "config.reasoning_parser_plugin": "runs a Python file named by the recipe",
    "config.tool_parser_plugin": "runs a Python file named by the recipe",
    "config.kv_transfer_config": _IMPORTS + " (kv_connector_module_path)",
    "config.ec_transfer_config": _IMPORTS + " (ec_connector_module_path)",
    "config.log_config_file": "a logging config can construct any Python class",
    "config.logging_config": "a logging config can construct any Python class",
    "compilation.backend": _IMPORTS + " (a dotted name)",
    "compilation.inductor_passes": _IMPORTS,
    "env.LD_PRELOAD": _LIBRARY,
    "env.LD_LIBRARY_PATH": _LIBRARY,
    "env.LD_AUDIT": _LIBRARY,
    "env.PATH": _LIBRARY,
    "env.PYTHONPATH": "puts the recipe's directories first on Python's import path",
    "env.PYTHONHOME": "replaces Python's standard library",
    "env.PYTHONUSERBASE": "adds a user site-packages to the import path",
    "env.PYTHONSTARTUP": "runs a Python file named by the recipe",
    "env.PYTHONBREAKPOINT": _IMPORTS,
    "env.PYTHONWARNINGS": _IMPORTS + " (a warning category module.Class)",
    "env.BASH_ENV": "runs a shell file in every bash vLLM starts",
    "env.ENV": "runs a shell file in every sh vLLM starts",
    "env.VLLM_PLUGINS": "chooses which installed vLLM plugins run",
    "env.VLLM_LOGGING_CONFIG_PATH": "a logging config can construct any Python class",
    "env.VLLM_NCCL_SO_PATH": _LIBRARY,
    "env.VLLM_CUDART_SO_PATH": _LIBRARY,
    "env.VLLM_CUDA_COMPATIBILITY_PATH": _LIBRARY,
    "env.VLLM_RUST_FRONTEND_PATH": _LIBRARY,
    "env.VLLM_ALLOW_INSECURE_SERIALIZATION": "lets vLLM's processes unpickle (run) what "
    "they are sent",
}
# Values of a code-loading option that load nothing (vLLM's own backends).
_BUILTIN_VALUES: Mapping[str, frozenset[Any]] = {
    "config.distributed_executor_backend": frozenset({"ray", "mp", "uni", "external_launcher"}),
}

_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_NUMBER_RE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def normalise_arg(key: str) -> str:
    """``--Served-Model-Name=x`` -> ``served_model_name``: how argparse would read the key."""
    name = str(key).strip().lstrip("-")
    name = re.split(r"[=.\s]", name, maxsplit=1)[0]
    return name.lower().replace("-", "_")


@functools.cache
def _known_args() -> frozenset[str]:
    """vLLM's serving args (the bundled list): exact names are never abbreviations."""
    data = resources.files("pytest_forge").joinpath("data/vllm-0.32-args.json").read_text()
    return frozenset(json.loads(data).get("args", {}))


def _protected() -> list[tuple[str, str]]:
    """(arg name, dotted name) of every reserved or code-loading vLLM arg."""
    out = [(name, f"config.{name}") for name in RESERVED_CONFIG_KEYS]
    out += [(d.split(".", 1)[1], d) for d in CODE_LOADING if d.startswith("config.")]
    return out


def config_key_problem(key: Any) -> str | None:
    """Why ``config.<key>`` cannot be a recipe key, or None."""
    name = normalise_arg(key)
    if name in RESERVED_CONFIG_KEYS:
        flag = name.replace("_", "-")
        return (
            f"'{key}' cannot be set by a recipe: pytest-forge reserves --{flag} "
            f"({RESERVED_CONFIG_KEYS[name]})"
        )
    if not isinstance(key, str) or not _KEY_RE.match(key):
        return (
            f"'{key}' is not an argument name: write vLLM's name without leading dashes "
            "(e.g. max_num_seqs); '-', '.', '=' or spaces would hand vLLM other arguments"
        )
    if name not in _known_args():
        for full, dotted in _protected():
            if full.startswith(name) and full != name:
                return (
                    f"'{key}' would reach vLLM as --{key.replace('_', '-')}, which argparse "
                    f"expands to --{full.replace('_', '-')} ({dotted}): write the full name"
                )
    return None


def env_name_problem(name: str) -> str | None:
    """Why ``env.<name>`` cannot be set by a recipe, or None."""
    reason = RESERVED_ENV.get(name.upper())
    if reason is None:
        return None
    return f"'{name}' cannot be set by a recipe: pytest-forge reserves it ({reason})"


def value_problem(value: Any) -> str | None:
    """Why a config value (or one item of a list value) cannot be an argv item, or None."""
    if not isinstance(value, str):
        return None
    if "\x00" in value:
        return "contains a NUL character, which no command line can carry"
    if value.startswith("-") and not _NUMBER_RE.match(value.strip()):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return (
            f"{shown!r} would reach vLLM as a flag, not as a value: a value may not start "
            "with '-' (negative numbers may)"
        )
    return None


def _dotted(section: str, key: str) -> str:
    # Environment names are matched case-blind, arg names as argparse reads them.
    return f"env.{key.upper()}" if section == "env" else f"{section}.{normalise_arg(key)}"


def code_loading(section: str, key: str, value: Any) -> str | None:
    """The CODE_LOADING name ``<section>.<key>: value`` falls under, or None if it loads none."""
    dotted = _dotted(section, key)
    if section == "env":
        return dotted if dotted in CODE_LOADING else None
    if dotted not in CODE_LOADING or value is None or value is False or value in ("", [], {}):
        return None
    if dotted == "compilation.backend" and "." not in str(value):
        return None  # eager, inductor...: registered with PyTorch, not imported by name
    if isinstance(value, str | int | float) and value in _BUILTIN_VALUES.get(dotted, ()):
        return None
    return dotted


def argv_value_problem(value: Any) -> str | None:
    """Why a config value (a scalar or a list of them) cannot go on vLLM's command line."""
    if not isinstance(value, list):
        return value_problem(value)
    if not value:
        return (
            "an empty list cannot be passed to vLLM on the command line; "
            "remove the key to keep vLLM's default"
        )
    for i, item in enumerate(value):
        problem = value_problem(item)
        if problem:
            return f"item [{i}]: {problem}"
    return None


def code_loading_settings(
    config: Mapping[str, Any], compilation: Mapping[str, Any] | None, env: Mapping[str, Any]
) -> list[str]:
    """Every CODE_LOADING name a recipe's sections use, in the order they appear."""
    found: list[str] = []
    sections: list[tuple[str, Mapping[str, Any]]] = [("config", config)]
    sections += [("compilation", compilation or {}), ("env", env)]
    nested = config.get("compilation_config")
    if isinstance(nested, Mapping):
        sections.append(("compilation", nested))
    for section, values in sections:
        for key, value in values.items():
            dotted = code_loading(section, str(key), value)
            if dotted and dotted not in found:
                found.append(dotted)
    return found


def opt_in_name(entry: Any) -> str | None:
    """An ``allow_code_loading`` entry as its CODE_LOADING name, or None if it names none."""
    section, _, key = str(entry).strip().partition(".")
    dotted = _dotted(section, key)
    return dotted if dotted in CODE_LOADING else None


def search_key_problem(key: str, values: list[Any]) -> str | None:
    """Why a tuning search space may not contain ``key`` with these values, or None."""
    section, _, name = key.partition(".")
    if section == "config":
        problem = config_key_problem(name)
        if problem:
            return problem
    if section == "env":
        problem = env_name_problem(name)
        if problem:
            return problem
    for value in values:
        dotted = code_loading(section, name, value)
        if dotted:
            return (
                f"{dotted} {CODE_LOADING[dotted]}: it can only be set in a recipe, with "
                f"`{OPT_IN_KEY}: [{dotted}]`, never searched by the tuner"
            )
        if section == "config":
            problem = value_problem(value)
            if problem:
                return problem
    return None
