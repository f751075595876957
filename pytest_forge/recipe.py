"""The Recipe model: one vLLM deployment (serving args, compilation, quantization, env).

Loading validates the YAML into pydantic models and translates every problem into a
RecipeError that names the file, the dotted field and, when known, the line. Saving is
atomic and, when the file already exists, edits it in place through ruamel.yaml's
round-trip mode so the user's comments and key order survive a tuner or baseline write.
The sections (hardware, quant, gates, lineage, baselines) are in recipe_sections.py.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from io import StringIO
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pytest_forge.errors import RecipeError
from pytest_forge.fileio import atomic_write, locked
from pytest_forge.recipe_errors import field_error as _field_error
from pytest_forge.recipe_errors import translate
from pytest_forge.recipe_sections import (
    NO_KV_CACHE_QUANT,
    NO_QUANTIZATION_FLAG,
    Baseline,
    Gates,
    Hardware,
    Lineage,
    MeasuredWith,
    Quant,
    Str,
    StrictModel,
    quant_method_problem,
)
from pytest_forge.serving_policy import (
    CODE_LOADING,
    OPT_IN_KEY,
    RESERVED_CONFIG_KEYS,
    argv_value_problem,
    code_loading_settings,
    config_key_problem,
    env_name_problem,
    opt_in_name,
)
from pytest_forge.yaml_io import YamlInputError, line_of, line_suffix, read_text
from pytest_forge.yaml_io import flow_samples as _flow_samples
from pytest_forge.yaml_io import guess_layout as _guess_layout
from pytest_forge.yaml_io import load as _load_yaml
from pytest_forge.yaml_io import merge as _merge
from pytest_forge.yaml_io import plain as _plain
from pytest_forge.yaml_io import rt_yaml as _yaml

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Sections with_changes() may touch; everything else is identity, history or measurement.
_CHANGEABLE = ("config", "compilation", "env")
_CHANGEABLE_QUANT = ("quant.method", "quant.kv_cache_quant")
# Where aevyra Forge recipes keep their lineage (seeds/000): the top level.
_FLAT_LINEAGE = ("generation", "parent_id")


class Recipe(StrictModel):
    """One vLLM deployment: model, hardware, serving config, quantization, env, gates."""

    id: Str
    model: Str = Field(min_length=1)
    hardware: Hardware
    config: dict[str, Any] = Field(default_factory=dict)
    compilation: dict[str, Any] | None = None
    quant: Quant = Field(default_factory=Quant)
    # Layer 3 (custom kernels) is not implemented: entries would be silently dropped.
    kernels: list[Any] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # The code-loading options (serving_policy.CODE_LOADING) this recipe may set, e.g.
    # [config.trust_remote_code]: each is an explicit, reviewable opt-in.
    allow_code_loading: list[Str] = Field(default_factory=list)
    workloads: list[Str] | None = None
    gates: Gates = Field(default_factory=Gates)
    lineage: Lineage = Field(default_factory=Lineage)
    baselines: dict[str, Baseline] = Field(default_factory=dict)

    _path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _aevyra_lineage(cls, data: Any) -> Any:
        """aevyra Forge writes `generation:` and `parent_id:` at the top level: the same
        lineage, read as `lineage:` (a save writes it there)."""
        if not isinstance(data, Mapping):
            return data
        flat = [key for key in _FLAT_LINEAGE if key in data]
        if not flat:
            return data
        if "lineage" in data:
            raise _field_error(
                flat[0],
                "set both at the top level (the aevyra Forge format) and under 'lineage:'; "
                f"keep one: move {' and '.join(flat)} into 'lineage:'",
            )
        out = {key: value for key, value in data.items() if key not in flat}
        out["lineage"] = {key: data[key] for key in flat}
        return out

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid recipe id: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("kernels")
    @classmethod
    def _no_kernels_yet(cls, value: list[Any]) -> list[Any]:
        if value:
            raise ValueError(
                f"{len(value)} entr{'y' if len(value) == 1 else 'ies'} given, but pytest-forge "
                "does not build or load custom kernels yet (Layer 3): vLLM would run without "
                "them and the results would be labelled with them. Remove the entries "
                "(kernels: [] or no 'kernels:' key)"
            )
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _coerce_env(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[Any, Any] = {}
        for name, v in value.items():
            if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
                raise _field_error(f"env.{name}", f"{name!r} is not a valid environment name")
            reserved = env_name_problem(name)
            if reserved:
                raise _field_error(f"env.{name}", reserved)
            if isinstance(v, bool):
                # vLLM parses most boolean env vars with int(), so "1"/"0" work everywhere
                # while "True" would not.
                out[name] = "1" if v else "0"
            elif isinstance(v, (str, int, float)):
                out[name] = str(v)
            else:
                # The value is not echoed: env is where tokens end up.
                raise _field_error(
                    f"env.{name}",
                    f"must be a string, number or boolean, not {type(v).__name__}",
                )
        return out

    @model_validator(mode="after")
    def _check_config(self) -> Recipe:
        for key, value in self.config.items():
            problem = config_key_problem(key) or argv_value_problem(value)
            if problem:
                raise _field_error(f"config.{key}", problem)
        if self.quant.method != "none" and "quantization" in self.config:
            raise _field_error(
                "config.quantization",
                f"conflicts with quant.method '{self.quant.method}': set the quantization "
                "in one place only (quant.method)",
            )
        if self.quant.kv_cache_quant != "none" and "kv_cache_dtype" in self.config:
            raise _field_error(
                "config.kv_cache_dtype",
                f"conflicts with quant.kv_cache_quant '{self.quant.kv_cache_quant}': set the "
                "KV cache dtype in one place only (quant.kv_cache_quant)",
            )
        if self.compilation and "compilation_config" in self.config:
            raise _field_error(
                "config.compilation_config",
                "conflicts with the 'compilation:' section: use one of them",
            )
        return self

    @model_validator(mode="after")
    def _check_code_loading(self) -> Recipe:
        allowed = set()
        for i, entry in enumerate(self.allow_code_loading):
            name = opt_in_name(entry)
            if name is None:
                raise _field_error(
                    f"{OPT_IN_KEY}[{i}]",
                    f"'{entry}' is not an option that loads code; list only the ones this "
                    f"recipe sets, such as {', '.join(list(CODE_LOADING)[:3])} "
                    "(README: 'Code-loading options')",
                )
            allowed.add(name)
        for name in code_loading_settings(self.config, self.compilation, self.env):
            if name not in allowed:
                raise _field_error(
                    name,
                    f"{CODE_LOADING[name]}: a recipe that does this must say so, with the "
                    f"top-level key `{OPT_IN_KEY}: [{name}]`",
                )
        return self

    # ---------------------------------------------------------------- loading

    @property
    def path(self) -> Path | None:
        """The file this recipe was loaded from or last saved to."""
        return self._path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read and validate ``<id>.yaml`` (RecipeError naming file, field and line)."""
        p = Path(path)
        try:
            text = read_text(p)
        except OSError as e:
            raise RecipeError(p, None, f"cannot read recipe: {e.strerror or e}") from e
        except YamlInputError as e:
            raise RecipeError(p, None, str(e)) from None
        recipe = cls.from_yaml_text(text, path=p)
        if recipe.id != p.stem:
            raise RecipeError(
                p,
                "id",
                f"id '{recipe.id}' does not match the file name '{p.name}': a recipe lives "
                f"in <id>.yaml, so rename the file or set id: {p.stem}"
                + line_suffix(line_of(_parse(text, p), ("id",))),
            )
        return recipe

    @classmethod
    def from_yaml_text(cls, text: str, path: str | os.PathLike[str] | None = None) -> Recipe:
        """Validate YAML text; ``path`` names the file in errors and becomes the recipe's."""
        p = Path(path) if path is not None else None
        tree = _parse(text, p)
        if not isinstance(tree, Mapping):
            kind = "an empty file" if tree is None else type(_plain(tree)).__name__
            raise RecipeError(p, None, f"a recipe must be a YAML mapping, got {kind}")
        try:
            recipe = cls.model_validate(_plain(tree))
        except ValidationError as e:
            raise translate(e, p, tree, cls) from None
        recipe._path = p
        return recipe

    # ---------------------------------------------------------------- saving

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write atomically; an existing file is edited in place to keep comments/order."""
        target = Path(path) if path is not None else self._path
        if target is None:
            raise RecipeError(None, None, f"recipe '{self.id}' has no file: pass a path to save")
        compact = self._compact_data()
        yaml = _yaml()
        # Locked (re-entrantly: a caller's read-modify-write may hold it already), so the
        # file read here is the one replaced: no other writer's save lands in between.
        with locked(target, what="the recipe's lock"):
            original: str | None = None
            with contextlib.suppress(FileNotFoundError):
                original = target.read_text(encoding="utf-8")
            doc: Any = None
            if original is not None:
                doc = _parse(original, target)
            if isinstance(doc, dict):
                _guess_layout(yaml, original or "")
                _merge(doc, compact, _plain(self.model_dump(mode="json")))
            else:
                doc = compact
            _flow_samples(doc)
            buf = StringIO()
            yaml.dump(doc, buf)
            # Through a symlink, the file it points at is replaced (not the link).
            atomic_write(target.resolve(), buf.getvalue())
        self._path = target
        return target

    def to_yaml_text(self) -> str:
        """The recipe as a fresh YAML document (what save() writes for a new file)."""
        doc = self._compact_data()
        _flow_samples(doc)
        buf = StringIO()
        _yaml().dump(doc, buf)
        return buf.getvalue()

    def _compact_data(self) -> dict[str, Any]:
        """Every non-default value, in field order; None and empty sections left out."""
        return _plain(self.model_dump(mode="json", exclude_defaults=True))

    # ---------------------------------------------------------------- comparing

    def _serving(self) -> dict[str, Any]:
        # None-valued config keys never reach vLLM and an empty compilation section is no
        # section: normalise both so equal serving setups compare and hash equal.
        return {
            "model": self.model,
            "config": {k: v for k, v in self.config.items() if v is not None},
            "compilation": self.compilation or {},
            "quant": self.quant.model_dump(),
            "env": dict(self.env),
            "kernels": list(self.kernels),
        }

    def diff(self, other: Recipe) -> dict[str, dict[str, Any]]:
        """Serving differences as {"config.max_num_seqs": {"from": 256, "to": 128}}.

        A key present on one side only shows None on the other.
        """
        mine, theirs = self._serving(), other._serving()
        out: dict[str, dict[str, Any]] = {}
        for scalar in ("model", "kernels"):
            if mine[scalar] != theirs[scalar]:
                out[scalar] = {"from": mine[scalar], "to": theirs[scalar]}
        for section in ("config", "compilation", "quant", "env"):
            a, b = mine[section], theirs[section]
            for key in [*a, *(k for k in b if k not in a)]:
                if a.get(key) != b.get(key):
                    out[f"{section}.{key}"] = {"from": a.get(key), "to": b.get(key)}
        return out

    @property
    def content_hash(self) -> str:
        """8 hex chars identifying the serving setup (not its id, gates or history)."""
        canonical = json.dumps(
            self._serving(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]

    # ---------------------------------------------------------------- serving

    def vllm_cli_args(self) -> list[str]:
        """vLLM serving args for this recipe, without the model, host or port."""
        args: list[str] = []
        for key, value in self.config.items():
            flag = key.replace("_", "-")
            if value is None:
                continue
            problem = config_key_problem(key) or argv_value_problem(value)
            if problem:
                raise RecipeError(self._path, f"config.{key}", problem)
            if isinstance(value, bool):
                args.append(f"--{flag}" if value else f"--no-{flag}")
            elif isinstance(value, list):
                args.append(f"--{flag}")
                args.extend(_cli_scalar(v) for v in value)
            else:
                args += [f"--{flag}", _cli_scalar(value)]
        if self.compilation:
            args += ["--compilation-config", _compact_json(self.compilation)]
        if self.quant.method not in NO_QUANTIZATION_FLAG:
            args += ["--quantization", self.quant.method]
        if self.quant.kv_cache_quant not in NO_KV_CACHE_QUANT:
            args += ["--kv-cache-dtype", self.quant.kv_cache_quant]
        return args

    def server_env(self) -> dict[str, str]:
        """Environment variables the vLLM server process gets on top of the inherited ones."""
        return dict(self.env)

    # ---------------------------------------------------------------- deriving

    def with_changes(self, changes: Mapping[str, Any]) -> Recipe:
        """A re-validated copy with dotted changes applied; a None value removes the key."""
        data = self.model_dump(mode="python")
        for dotted, value in changes.items():
            section, _, key = dotted.partition(".")
            if dotted == "model" and value is not None:
                # The tune's layer 2 may switch to a pre-quantized checkpoint of the model.
                data["model"] = value
                continue
            if dotted in _CHANGEABLE_QUANT:
                if value is None:
                    data["quant"].pop(key, None)
                else:
                    data["quant"][key] = value
                continue
            if section not in _CHANGEABLE or not key:
                raise RecipeError(
                    self._path,
                    dotted,
                    "cannot be changed: use config.<arg>, compilation.<field>, "
                    "quant.method, quant.kv_cache_quant, env.<NAME> or model",
                )
            target = data.get(section) or {}
            if value is None:
                target.pop(key, None)
            else:
                target[key] = copy.deepcopy(value)
            data[section] = target if (target or section != "compilation") else None
        try:
            new = type(self).model_validate(data)
        except ValidationError as e:
            raise translate(e, self._path, None, type(self)) from None
        new._path = self._path
        return new

    def with_baselines(self, baselines: Mapping[str, Baseline]) -> Recipe:
        """A copy whose baselines for the given workloads are replaced (others kept)."""
        merged = {**self.baselines, **{k: v.model_copy(deep=True) for k, v in baselines.items()}}
        new = self.model_copy(update={"baselines": merged}, deep=True)
        new._path = self._path
        return new


# -------------------------------------------------------------------- helpers


def _cli_scalar(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _compact_json(value)
    if isinstance(value, bool):
        # Inside a list there is no --no- form; vLLM parses JSON-ish booleans.
        return "true" if value else "false"
    return str(value)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _parse(text: str, path: Path | None) -> Any:
    try:
        return _load_yaml(text)
    except YamlInputError as e:
        raise RecipeError(path, None, str(e)) from None


__all__ = [
    "NO_KV_CACHE_QUANT",
    "NO_QUANTIZATION_FLAG",
    "RESERVED_CONFIG_KEYS",
    "Baseline",
    "Gates",
    "Hardware",
    "Lineage",
    "MeasuredWith",
    "Quant",
    "Recipe",
    "quant_method_problem",
]
