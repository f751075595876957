"""Pydantic validation errors as one RecipeError naming the file, dotted field and line."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from pytest_forge.errors import RecipeError
from pytest_forge.suggest import nearest
from pytest_forge.yaml_io import line_of, line_suffix

__all__ = ["field_error", "translate"]


def field_error(field: str, message: str) -> PydanticCustomError:
    """An error a validator raises about ``field`` (dotted from the model it validates)."""
    # The dotted field rides in the error context so translate() can name it: errors
    # raised by a model validator otherwise carry an empty location.
    return PydanticCustomError("forge_recipe", "{message}", {"message": message, "field": field})


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model a location points into, following nested models and dicts."""
    cls: type[BaseModel] | None = root
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


def _describe(root: type[BaseModel], err: Mapping[str, Any]) -> tuple[str, str]:
    """(dotted field, message) for one pydantic error."""
    loc = tuple(err.get("loc", ()))
    ctx = err.get("ctx") or {}
    if err["type"] == "forge_recipe":
        return str(ctx.get("field") or _dotted(loc) or "<recipe>"), str(ctx["message"])
    field = _dotted(loc) or "<recipe>"
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(root, loc[:-1])
        valid = list(model.model_fields) if model is not None else []
        near = nearest(key, valid)
        hint = f"nearest valid key: '{near}'" if near else f"valid keys: {', '.join(valid)}"
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


def translate(
    exc: ValidationError, path: Path | None, tree: Any, root: type[BaseModel]
) -> RecipeError:
    """One RecipeError for every problem in ``exc``, the first named as its field."""
    described = []
    # A typo'd key also makes the key it was meant to be "missing": report the typo first.
    errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
    for err in errors:
        field, msg = _describe(root, err)
        loc = tuple(err.get("loc", ()))
        if err["type"] == "forge_recipe":
            # The context's field is more precise than the validator's location, which
            # is empty for the recipe's own validators and the parent for nested models.
            prefix = ".".join(str(part) for part in loc)
            if prefix and not (field == prefix or field.startswith(prefix + ".")):
                field = f"{prefix}.{field}"
            loc = tuple(field.split(".", 1)) if not prefix else tuple(field.split("."))
        line = line_of(tree, loc) if tree is not None and loc else None
        described.append((field, msg + line_suffix(line)))
    first_field, first_msg = described[0]
    rest = "".join(f"; also {f}: {m}" for f, m in described[1:])
    return RecipeError(path, first_field, first_msg + rest)
