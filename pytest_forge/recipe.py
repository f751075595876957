"""The Recipe model: one vLLM deployment (serving args, compilation, quantization, env).

Loading validates the YAML into pydantic models and translates every problem into a
RecipeError that names the file, the dotted field and, when known, the line. Saving is
atomic and, when the file already exists, edits it in place through ruamel.yaml's
round-trip mode so the user's comments and key order survive a tuner or baseline write.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import difflib
import hashlib
import itertools
import json
import os
import re
import statistics
import tempfile
import types
import typing
from collections.abc import Mapping
from io import StringIO
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from pytest_forge.errors import RecipeError
from pytest_forge.metric_registry import JUDGED_BY_NAME, LATENCY_NAMES
from pytest_forge.slo import SLO

# pytest-forge owns these vLLM args: the server picks the port and binds 127.0.0.1, names
# the model itself, and keeps the API key out of recipe files (they are committed).
RESERVED_CONFIG_KEYS = ("model", "host", "port", "served_model_name", "api_key")

# quant.method values that pass no --quantization: dtypes, "let vLLM decide", and the
# precision of a pre-quantized checkpoint (AIM's int8/int4: vLLM reads the scheme, e.g.
# compressed-tensors W8A8 or GPTQ, from the checkpoint's config; `--quantization int8` is
# not a vLLM method and would fail the boot).
NO_QUANTIZATION_FLAG = frozenset({"none", "auto", "bf16", "fp16", "int8", "int4"})
NO_KV_CACHE_QUANT = frozenset({"none", "auto"})

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Sections with_changes() may touch; everything else is identity, history or measurement.
_CHANGEABLE = ("config", "compilation", "env")
_CHANGEABLE_QUANT = ("quant.method", "quant.kv_cache_quant")


def _scalar_to_str(value: Any) -> Any:
    """YAML turns `parent_id: 12345678`, `vllm: 0.32` and dates into non-strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    return value


Str = Annotated[str, BeforeValidator(_scalar_to_str)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hardware(_Strict):
    vendor: Literal["nvidia", "amd", "cpu"]
    gpu_type: Str | None = None
    count: int = Field(default=1, ge=1)
    memory_gb_per_gpu: float | None = Field(default=None, gt=0)


class Quant(_Strict):
    method: Str = "none"
    kv_cache_quant: Str = "none"

    @field_validator("method", "kv_cache_quant", mode="before")
    @classmethod
    def _null_is_none(cls, value: Any) -> Any:
        # `method: null` and `method: none` mean the same thing to a reader.
        return "none" if value is None else value


class Gates(_Strict):
    # Above 1 is allowed on purpose: such a floor can never pass, which is a valid way
    # to force a failing gate while debugging.
    accuracy_floor: float | None = Field(default=None, ge=0)
    accuracy_scorer: Literal["exact", "contains", "regex", "agreement"] | None = None
    throughput_tolerance: float | None = Field(default=None, ge=0, lt=1)
    # The largest latency slow-down that does not matter, as a fraction: one number for
    # every judged latency metric, or per metric (ttft_p99_ms: 0.5, ...); metrics left out
    # use metric_registry's defaults.
    latency_tolerance: (
        Annotated[float, Field(ge=0, le=10)] | dict[str, Annotated[float, Field(ge=0, le=10)]]
    ) = Field(default_factory=dict)
    slo: SLO = Field(default_factory=SLO)

    @field_validator("latency_tolerance")
    @classmethod
    def _known_latency_metrics(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        for name in value if isinstance(value, dict) else ():
            if name not in LATENCY_NAMES:
                near = difflib.get_close_matches(name, LATENCY_NAMES, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ValueError(
                    f"unknown latency metric {name!r}{hint}; known: {', '.join(LATENCY_NAMES)}"
                )
        return value

    def latency_tolerances(self) -> dict[str, float]:
        """The tolerance set for each latency metric (those the recipe sets)."""
        value = self.latency_tolerance
        if isinstance(value, dict):
            return dict(value)
        return dict.fromkeys(LATENCY_NAMES, float(value))


class Lineage(_Strict):
    generation: int = Field(default=0, ge=0)
    parent_id: Str | None = None
    rationale: Str | None = None


class MeasuredWith(_Strict):
    vllm: Str
    pytest_forge: Str
    hardware: Str
    backend: Str
    date: Str


class Baseline(_Strict):
    output_throughput: float = Field(ge=0)
    request_throughput: float | None = Field(default=None, ge=0)
    ttft_p99_ms: float | None = Field(default=None, ge=0)
    tpot_p99_ms: float | None = Field(default=None, ge=0)
    itl_p99_ms: float | None = Field(default=None, ge=0)
    e2el_p99_ms: float | None = Field(default=None, ge=0)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    goodput: float | None = Field(default=None, ge=0)
    repeats: int = Field(ge=1)
    cv: float = Field(ge=0)
    measured_with: MeasuredWith
    # Every judged metric's value in each repeat (metric_registry.JUDGED), so the verdict
    # can test the change against the baseline's own spread. Older files have medians only.
    samples: dict[str, list[Annotated[float, Field(ge=0)]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _medians_match_samples(self) -> Baseline:
        # The verdict reads the samples: a median edited by hand beside them would be
        # silently ignored, so the two must agree (up to the 4-decimal rounding of both).
        for metric, values in self.samples.items():
            if metric not in JUDGED_BY_NAME:
                raise _field_error(f"samples.{metric}", f"unknown metric {metric!r}")
            median = getattr(self, metric, None)
            if not values or median is None:
                continue
            expected = statistics.median(values)
            if abs(median - expected) > 0.01 + 1e-3 * abs(expected):
                raise _field_error(
                    metric,
                    f"{median} is not the median of its samples ({expected:g}): baselines are "
                    "recorded by --forge-update-baselines, not edited by hand",
                )
        return self

    def values(self, metric: str) -> list[float]:
        """The baseline's per-repeat values of ``metric``, else its median alone, else []."""
        if self.samples.get(metric):
            return list(self.samples[metric])
        median = getattr(self, metric, None)
        return [float(median)] if isinstance(median, (int, float)) else []


def _field_error(field: str, message: str) -> PydanticCustomError:
    # The dotted field rides in the error context so _translate() can name it: errors
    # raised by a model validator otherwise carry an empty location.
    return PydanticCustomError("forge_recipe", "{message}", {"message": message, "field": field})


class Recipe(_Strict):
    id: Str
    model: Str = Field(min_length=1)
    hardware: Hardware
    config: dict[str, Any] = Field(default_factory=dict)
    compilation: dict[str, Any] | None = None
    quant: Quant = Field(default_factory=Quant)
    kernels: list[Any] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workloads: list[Str] | None = None
    gates: Gates = Field(default_factory=Gates)
    lineage: Lineage = Field(default_factory=Lineage)
    baselines: dict[str, Baseline] = Field(default_factory=dict)

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid recipe id: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
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
        for key in RESERVED_CONFIG_KEYS:
            if key in self.config:
                raise _field_error(
                    f"config.{key}",
                    f"'{key}' is set by pytest-forge, not by the recipe"
                    + (" (use the top-level 'model:' key)" if key == "model" else ""),
                )
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
        for key, value in self.config.items():
            if isinstance(value, list) and not value:
                raise _field_error(
                    f"config.{key}",
                    "an empty list cannot be passed to vLLM on the command line; "
                    "remove the key to keep vLLM's default",
                )
        return self

    # ---------------------------------------------------------------- loading

    @property
    def path(self) -> Path | None:
        """The file this recipe was loaded from or last saved to."""
        return self._path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise RecipeError(p, None, f"cannot read recipe: {e.strerror or e}") from e
        recipe = cls.from_yaml_text(text, path=p)
        if recipe.id != p.stem:
            raise RecipeError(
                p,
                "id",
                f"id '{recipe.id}' does not match the file name '{p.name}': a recipe lives "
                f"in <id>.yaml, so rename the file or set id: {p.stem}"
                + _line_suffix(_line_of(_parse(text, p), ("id",))),
            )
        return recipe

    @classmethod
    def from_yaml_text(cls, text: str, path: str | os.PathLike[str] | None = None) -> Recipe:
        p = Path(path) if path is not None else None
        tree = _parse(text, p)
        if not isinstance(tree, Mapping):
            kind = "an empty file" if tree is None else type(_plain(tree)).__name__
            raise RecipeError(p, None, f"a recipe must be a YAML mapping, got {kind}")
        try:
            recipe = cls.model_validate(_plain(tree))
        except ValidationError as e:
            raise _translate(e, p, tree) from None
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
        _atomic_write(target, buf.getvalue())
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
                    "quant.method, quant.kv_cache_quant or env.<NAME>",
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
            raise _translate(e, self._path, None) from None
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


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    # Long rationales stay on one line rather than being folded at 80 columns.
    yaml.width = 4096
    return yaml


_KEY_LINE = re.compile(r"^( *)[^\s#-][^#]*:\s*(#.*)?$")


def _guess_layout(yaml: YAML, text: str) -> None:
    """Re-emit with the indentation the user wrote, so unchanged lines stay unchanged.

    ruamel's load_yaml_guess_indent assumes mappings and sequences share one indent, which
    mangles the common "2-space maps, `  - item` lists" style; so look at the first block
    mapping and the first block sequence separately.
    """
    mapping: int | None = None
    seq_offset: int | None = None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for line, nxt in itertools.pairwise(lines):
        match = _KEY_LINE.match(line)
        if not match:
            continue
        depth = len(nxt) - len(nxt.lstrip(" ")) - len(match.group(1))
        if depth < 0 or (depth == 0 and not nxt.lstrip().startswith("- ")):
            continue
        if nxt.lstrip().startswith("- "):
            seq_offset = depth if seq_offset is None else seq_offset
        elif depth > 0 and mapping is None:
            mapping = depth
        if mapping is not None and seq_offset is not None:
            break
    mapping = mapping or 2
    offset = seq_offset if seq_offset is not None else 2
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    if text.lstrip().startswith("---"):
        yaml.explicit_start = True


def _parse(text: str, path: Path | None) -> Any:
    try:
        return _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        raise RecipeError(path, None, f"YAML syntax error at {where}{problem}") from None
    except YAMLError as e:
        raise RecipeError(path, None, f"YAML error: {e}") from None


def _plain(obj: Any) -> Any:
    """ruamel/numpy scalars and containers as plain Python, for pydantic and comparisons."""
    if isinstance(obj, Mapping):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool):
        return bool(obj)
    # ruamel's ScalarBoolean subclasses int, so bool-like scalars are checked by type name.
    if type(obj).__name__ == "ScalarBoolean":
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _plain(obj.item())
    return obj


def _flow_samples(doc: Any) -> None:
    """Per-repeat samples on one line each (``[812.1, 798.4, ...]``), not one per value."""
    from ruamel.yaml.comments import CommentedSeq

    baselines = doc.get("baselines") if isinstance(doc, Mapping) else None
    for baseline in (baselines or {}).values():
        samples = baseline.get("samples") if isinstance(baseline, Mapping) else None
        for metric, values in (samples or {}).items():
            seq = CommentedSeq(values)
            seq.fa.set_flow_style()
            samples[metric] = seq


def _merge(old: Any, compact: Mapping[str, Any], full: Mapping[str, Any]) -> None:
    """Update a round-trip mapping in place to the recipe's values.

    `compact` holds the non-default values (what a fresh file would contain) and `full`
    every value including defaults. A key the user wrote whose value still holds is kept
    as written, even if it equals the default; changed keys are updated in place (keeping
    their comments), keys the recipe no longer has are deleted, new keys are appended.
    """
    for key in list(old.keys()):
        if key not in full:
            del old[key]
            continue
        new_full = full[key]
        if isinstance(old[key], Mapping) and isinstance(new_full, Mapping):
            sub_compact = compact.get(key)
            _merge(old[key], sub_compact if isinstance(sub_compact, Mapping) else {}, new_full)
            if not old[key] and key not in compact:
                del old[key]
        elif _equivalent(_plain(old[key]), new_full):
            continue
        elif key in compact:
            old[key] = compact[key]
        else:
            del old[key]
    for key, value in compact.items():
        if key not in old:
            old[key] = value


def _equivalent(written: Any, value: Any) -> bool:
    """Whether what the file says already loads as `value` (so it is left as written)."""
    if isinstance(written, bool) != isinstance(value, bool):
        # True == 1 in Python, but `--x` and `--x 1` are different vLLM args.
        return isinstance(written, bool) and value == ("1" if written else "0")
    if isinstance(value, str) and not isinstance(written, str):
        # `FLAG: 1`, `parent_id: 1234`, `date: 2026-11-22` load as the string value.
        return _scalar_to_str(written) == value
    return bool(written == value)


def _atomic_write(target: Path, text: str) -> None:
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    # Make the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# -------------------------------------------------------------------- error translation


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model a location points into, following nested models and dicts."""
    cls: type[BaseModel] | None = Recipe
    parts = list(loc)
    while parts and cls is not None:
        field = cls.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        ann: Any = field.annotation
        cls = None
        while True:
            origin = typing.get_origin(ann)
            if origin in (typing.Union, types.UnionType):
                ann = next((a for a in typing.get_args(ann) if a is not type(None)), None)
            elif origin is dict:
                if not parts:
                    return None
                parts.pop(0)  # the user's dict key, e.g. a workload name under baselines
                ann = typing.get_args(ann)[1]
            else:
                break
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
    return cls if not parts else None


def _line_of(tree: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of a location in a round-trip tree, when it can be found."""
    node = tree
    line: int | None = None
    try:
        for part in loc:
            if isinstance(node, Mapping) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
    except (AttributeError, KeyError, TypeError, IndexError):
        return line
    return line


def _line_suffix(line: int | None) -> str:
    return f" (line {line})" if line is not None else ""


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    """(dotted field, message) for one pydantic error."""
    loc = tuple(err.get("loc", ()))
    ctx = err.get("ctx") or {}
    if err["type"] == "forge_recipe":
        return str(ctx.get("field") or _dotted(loc) or "<recipe>"), str(ctx["message"])
    field = _dotted(loc) or "<recipe>"
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        valid = list(model.model_fields) if model is not None else []
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f"nearest valid key: '{near[0]}'" if near else f"valid keys: {', '.join(valid)}"
        return field, f"unknown key '{key}'; {hint}"
    if err["type"] == "missing":
        return field, "required key is missing"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err["type"] == "value_error":
        return field, msg  # our own validators already quote the value
    value = err.get("input")
    # Scalars are echoed to show what was read; env values are not (they may be secrets).
    if not (loc and loc[0] == "env") and isinstance(value, (str, int, float, bool)):
        msg += f" (got {value!r})"
    return field, msg


def _translate(exc: ValidationError, path: Path | None, tree: Any) -> RecipeError:
    described = []
    # A typo'd key also makes the key it was meant to be "missing": report the typo first.
    errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
    for err in errors:
        field, msg = _describe(err)
        loc = tuple(err.get("loc", ()))
        if err["type"] == "forge_recipe":
            # The context's field is more precise than the validator's location, which
            # is empty for the recipe's own validators and the parent for nested models.
            prefix = ".".join(str(part) for part in loc)
            if prefix and not (field == prefix or field.startswith(prefix + ".")):
                field = f"{prefix}.{field}"
            loc = tuple(field.split(".", 1)) if not prefix else tuple(field.split("."))
        line = _line_of(tree, loc) if tree is not None and loc else None
        described.append((field, msg + _line_suffix(line)))
    first_field, first_msg = described[0]
    rest = "".join(f"; also {f}: {m}" for f, m in described[1:])
    return RecipeError(path, first_field, first_msg + rest)


__all__ = [
    "RESERVED_CONFIG_KEYS",
    "Baseline",
    "Gates",
    "Hardware",
    "Lineage",
    "MeasuredWith",
    "Quant",
    "Recipe",
]
