"""Would vLLM accept these values? Asked of vLLM's own code, before any boot.

`vllm_args` checks the *names* of a recipe's args; this module checks their *values* by
running what `vllm serve` runs on its command line, in a subprocess of the interpreter
vLLM will run in (see `vllm_values_script`): vLLM's serve argument parser on each arg of
`Recipe.vllm_cli_args()` alone (so every bad value is named, not just the first), the
constraints of the config field each arg lands in (`CacheConfig.gpu_memory_utilization` is
`Field(gt=0, le=1)`), `CompilationConfig(**compilation)` key by key, then the whole
command line into `AsyncEngineArgs`. No engine config is created, no model loaded, nothing
fetched. vLLM's own message is passed on, under the recipe field it is about.

Importing vLLM takes seconds, so many recipes are checked in one subprocess and each answer
is cached on disk per (vLLM version, hash of the args): a second run is instant. Without vLLM
(or when its subprocess fails) values are checked against the bundled vLLM 0.32 parser types
where those are plain (int, float, flags, choices), and the result says it was type-only.

`python -m pytest_forge.vllm_values --dump-types PATH` writes the installed vLLM's plain
parser types; that is how `data/vllm-0.32-values.json` is made.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pydantic

from pytest_forge.errors import ForgeError
from pytest_forge.fileio import atomic_write
from pytest_forge.recipe import Quant, Recipe
from pytest_forge.vllm_args import (
    VllmArgSpec,
    cache_dir_default,
    name_problems,
    raise_problems,
    run_vllm_script,
)
from pytest_forge.vllm_values_script import VALUES_SCRIPT

BUNDLED_TYPES_FILE = "vllm-0.32-values.json"
# Changing the script changes what a cached answer means: its hash is part of every key.
_SCRIPT_TAG = hashlib.sha256(VALUES_SCRIPT.encode("utf-8")).hexdigest()[:12]

Problem = tuple[str, str]  # (recipe field, message)


@dataclass(frozen=True)
class ValueCheck:
    """The value problems of each recipe checked together, and how they were checked."""

    problems: list[list[Problem]]
    method: Literal["vllm", "type-only"]
    how: str  # "values parsed by vLLM 0.32.0", or what the type-only check covered
    warning: str | None = None  # why vLLM's own check was wanted but did not run


# In-process answers per (distribution, version, request hash), and the interpreters whose
# value check failed (not retried in this process: each try costs a vLLM import).
_memo: dict[tuple[str, str, str], list[Problem]] = {}
_failed: dict[tuple[str, str, str], str] = {}


def _request(recipe: Recipe, skip: set[str]) -> dict[str, Any]:
    """What the script checks for one recipe; fields in `skip` (bad names) are left out.

    The model is not part of it: it does not change how args parse, and leaving it out
    lets recipes that differ only in their model share one cached answer.
    """
    bare = recipe.model_copy(update={"config": {}, "compilation": None, "quant": Quant()})
    segments: list[list[Any]] = []
    config = {k: v for k, v in recipe.config.items() if f"config.{k}" not in skip}
    for key, value in config.items():
        argv = bare.model_copy(update={"config": {key: value}}).vllm_cli_args()
        if argv:
            segments.append([f"config.{key}", argv])
    quant: dict[str, str] = {}
    for name in ("method", "kv_cache_quant"):
        if f"quant.{name}" not in skip:
            quant[name] = getattr(recipe.quant, name)
            only = bare.model_copy(update={"quant": Quant(**{name: quant[name]})})
            if only.vllm_cli_args():
                segments.append([f"quant.{name}", only.vllm_cli_args()])
    compilation = {
        k: v for k, v in (recipe.compilation or {}).items() if f"compilation.{k}" not in skip
    }
    whole = recipe.model_copy(
        update={"config": config, "compilation": compilation or None, "quant": Quant(**quant)}
    )
    return {"segments": segments, "argv": whole.vllm_cli_args(), "compilation": compilation}


def _key(request: Mapping[str, Any]) -> str:
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{_SCRIPT_TAG}\n{text}".encode()).hexdigest()[:32]


def check_values(
    recipes: Sequence[Recipe],
    spec: VllmArgSpec,
    skip: Sequence[set[str]] | None = None,
    cache_dir: Path | None = None,
) -> ValueCheck:
    """Every recipe's value problems, with at most one vLLM subprocess for all of them.

    vLLM's own parsing when `spec` was read from an installed vLLM; otherwise, or when that
    subprocess fails (then `.warning` says why), the bundled type-only check.
    """
    skips = list(skip) if skip is not None else [set() for _ in recipes]
    requests = [_request(r, s) for r, s in zip(recipes, skips, strict=True)]
    if spec.source != "installed" or spec.python is None:
        return _type_only(requests, why=None)
    dist, version = spec.distribution or "vllm", spec.version
    if (spec.python, dist, version) in _failed:
        return _type_only(requests, why=_failed[(spec.python, dist, version)])
    directory = (cache_dir if cache_dir is not None else cache_dir_default()) / (
        f"vllm-values-v1-{dist}-{version}"
    )
    keys = [_key(r) for r in requests]
    missing: dict[str, dict[str, Any]] = {}
    for key, request in zip(keys, requests, strict=True):
        if (dist, version, key) not in _memo:
            cached = _read_answer(directory / f"{key}.json")
            if cached is None:
                missing[key] = request
            else:
                _memo[dist, version, key] = cached
    if missing:
        try:
            answers = _run(spec.python, missing)
        except RuntimeError as e:
            why = (
                f"could not run {dist} {version}'s argument parser with {spec.python}: {e}; "
                "recipe values were only type-checked"
            )
            _failed[spec.python, dist, version] = why
            return _type_only(requests, why=why)
        for key, answer in answers.items():
            _memo[dist, version, key] = answer
            with contextlib.suppress(OSError):  # the cache is only a speed-up
                text = json.dumps({"problems": answer}, indent=1) + "\n"
                atomic_write(directory / f"{key}.json", text, mode=0o644)
    found = [
        [(f, f"vLLM {version} refuses it: {m}") for f, m in _memo[dist, version, k]] for k in keys
    ]
    return ValueCheck(found, "vllm", f"values parsed by {dist} {version}")


def _run(python: str, requests: dict[str, dict[str, Any]]) -> dict[str, list[Problem]]:
    with _request_file(requests) as path:
        data = run_vllm_script(python, VALUES_SCRIPT, [str(path)])
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or set(results) != set(requests):
        raise RuntimeError("the value check answered something else than was asked")
    return {k: [(str(f), str(m)) for f, m in v] for k, v in results.items()}


@contextlib.contextmanager
def _request_file(requests: dict[str, dict[str, Any]]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="forge-vllm-values-") as tmp:
        path = Path(tmp) / "requests.json"
        path.write_text(json.dumps(requests), encoding="utf-8")
        yield path


def _read_answer(path: Path) -> list[Problem] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [(str(f), str(m)) for f, m in data["problems"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or corrupt: ask vLLM again


# ---------------------------------------------------------------- type-only (no vLLM)


def load_bundled_types() -> dict[str, Any]:
    """The plain parser types of vLLM 0.32.0 (options -> kind/choices), bundled."""
    data_dir = resources.files("pytest_forge").joinpath("data")
    text = data_dir.joinpath(BUNDLED_TYPES_FILE).read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _type_only(requests: list[dict[str, Any]], why: str | None) -> ValueCheck:
    types = load_bundled_types()
    version = types.get("version", "0.32.0")
    note = (
        f"type-only check against the bundled vLLM {version} parser types; "
        "vLLM's own parser did not run"
    )
    problems = [
        [(f, f"{m} ({note})") for f, m in _request_type_problems(r, types)] for r in requests
    ]
    how = f"values type-checked only (bundled vLLM {version} parser types; vLLM not run)"
    return ValueCheck(problems, "type-only", how, why)


def _request_type_problems(request: Mapping[str, Any], types: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for field, argv in request["segments"]:
        entry = types["args"].get(argv[0])
        problem = _arg_problem(argv[0], argv[1:], entry) if entry else None
        if problem:
            problems.append((field, problem))
    for key, value in (request.get("compilation") or {}).items():
        entry = types["compilation"].get(key)
        problem = _compilation_problem(value, entry) if entry else None
        if problem:
            problems.append((f"compilation.{key}", problem))
    return problems


def _arg_problem(option: str, values: list[str], entry: Mapping[str, Any]) -> str | None:
    """What argparse would say of `option values...`, for plain types only."""
    if entry.get("kind") == "flag":
        return f"argument {option}: a flag takes no value: set true or false" if values else None
    if not values:
        return f"argument {option}: expected one argument"
    if len(values) > 1 and not entry.get("many"):
        return f"argument {option}: expected one argument, got {len(values)}"
    convert: dict[str, type] = {"int": int, "float": float}
    for raw in values:
        value: Any = raw
        kind = entry.get("kind")
        if kind in convert:
            try:
                value = convert[kind](raw)
            except ValueError:
                return f"argument {option}: invalid {kind} value: {raw!r}"
        choices = entry.get("choices")
        if choices is not None and value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            return f"argument {option}: invalid choice: {raw!r} (choose from {listed})"
    return None


def _compilation_problem(value: Any, entry: Mapping[str, Any]) -> str | None:
    """What pydantic would say of a plain CompilationConfig field (its lax mode, as vLLM)."""
    kinds: dict[str, Any] = {"bool": bool, "int": int, "float": float, "str": str}
    if "choices" in entry:
        tp: Any = Literal[tuple(entry["choices"])]
    else:
        tp = kinds.get(entry.get("kind", ""), Any)
    if entry.get("many"):
        tp = list[tp]
    try:
        pydantic.TypeAdapter(tp | None).validate_python(value)
    except pydantic.ValidationError as e:
        msgs = "; ".join(err["msg"] for err in e.errors())
        return f"CompilationConfig: {msgs} (got {value!r})"
    return None


# ---------------------------------------------------------------- names + values


class RecipeChecker:
    """Names and values of recipes against one vLLM: many at once, then one by one.

    `prefetch` checks every recipe file given in one vLLM subprocess; `check` of a
    recipe already prefetched (same args) then costs nothing.
    """

    def __init__(self, spec: VllmArgSpec, cache_dir: Path | None = None) -> None:
        self.spec = spec
        self.cache_dir = cache_dir
        self.how: str | None = None
        self.warning: str | None = None

    def _values(self, recipes: Sequence[Recipe]) -> tuple[list[list[Problem]], ValueCheck]:
        names = [name_problems(r, self.spec) for r in recipes]
        skip = [{f for f, _ in found} for found in names]
        values = check_values(recipes, self.spec, skip, self.cache_dir)
        self.how, self.warning = values.how, values.warning or self.warning
        return [n + v for n, v in zip(names, values.problems, strict=True)], values

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Check, together, every recipe that loads (the others fail when checked)."""
        recipes: list[Recipe] = []
        for path in paths:
            if path.suffix in (".yaml", ".yml"):
                with contextlib.suppress(ForgeError):
                    recipes.append(Recipe.load(path))
        if recipes:
            self._values(recipes)

    def problems(self, recipe: Recipe) -> list[Problem]:
        """(field, message) for every name and value this vLLM would refuse."""
        return self._values([recipe])[0][0]

    def check(self, recipe: Recipe) -> str:
        """Raise one RecipeError naming file, fields and causes; else how values were checked."""
        raise_problems(recipe.path, self.problems(recipe))
        return self.how or ""


def aim_flag_problems(
    recipes: Sequence[Recipe], args: Sequence[Mapping[Any, Any]], spec: VllmArgSpec
) -> list[list[tuple[Any, str]]]:
    """Value problems of recipes imported from AIM blocks, under the block's own arg key.

    `args[i]` is the `--flag: value` mapping recipes[i] came from; a problem no single
    flag owns comes back under None.
    """
    by_snake = [{str(k)[2:].replace("-", "_"): k for k in a} for a in args]
    found = check_values(recipes, spec)
    out: list[list[tuple[Any, str]]] = []
    for flags, problems in zip(by_snake, found.problems, strict=True):
        out.append([(flags.get(_snake_of(field)), message) for field, message in problems])
    return out


def _snake_of(field: str) -> str:
    section, _, key = field.partition(".")
    if section == "quant":
        return "quantization" if key == "method" else "kv_cache_dtype"
    if section == "compilation":
        return "compilation_config"
    return key


def main(argv: list[str] | None = None) -> int:
    """Command line: dump the installed vLLM's plain parser types to a JSON file."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_forge.vllm_values",
        description="Dump the installed vLLM's plain parser types (the bundled type-only check).",
    )
    parser.add_argument("--dump-types", metavar="PATH", type=Path, required=True)
    parser.add_argument("--python", default=sys.executable, help="interpreter whose vLLM")
    ns = parser.parse_args(argv)
    try:
        data = run_vllm_script(ns.python, VALUES_SCRIPT, ["--dump-types"])
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    data["version"] = str(data.get("version") or "").split("+", 1)[0]
    atomic_write(ns.dump_types, json.dumps(data, indent=1) + "\n", mode=0o644)
    print(f"wrote {len(data['args'])} options of vLLM {data['version']} to {ns.dump_types}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
