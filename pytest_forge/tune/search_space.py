"""A hardware class's search space: the recipe keys the tuner may change and their values.

Values compare strictly (``True`` is never ``1``), except that a number written as a string
(env values are strings) matches the listed number.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


def same_value(a: Any, b: Any) -> bool:
    """Equality that never confuses True with 1 (Python's ``True == 1`` would)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _lenient_match(listed: Any, value: Any) -> bool:
    """``2`` for ``"2"`` (env values are strings) or ``"64"`` for ``64``; never bools."""
    if isinstance(listed, bool) or isinstance(value, bool):
        return False
    if not isinstance(value, (str, int, float)) or not isinstance(listed, (str, int, float)):
        return False
    if isinstance(listed, str) or isinstance(value, str):
        return str(listed).strip() == str(value).strip()
    return False


class ParamSpec(BaseModel):
    """The values a parameter may take, and how early the offline agent tries it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: list[Scalar] = Field(min_length=1)
    # Lower is tried first by the offline strategy.
    priority: StrictInt = Field(ge=0)
    # vLLM's own default: where the offline agent starts when a recipe leaves the key unset.
    default: Scalar | None = None
    # The heuristic behind the parameter, cited in the offline agent's rationales.
    why: StrictStr = ""


class SearchSpace(BaseModel):
    """A hardware class's legal mutations: dotted recipe keys and their allowed values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: dict[str, ParamSpec]

    def canonical(self, key: str, value: Any) -> Any:
        """The listed value ``value`` stands for; ValueError (with the legal values) if none."""
        spec = self.params.get(key)
        if spec is None:
            raise ValueError(
                f"'{key}' is not in the search space (legal keys: {', '.join(self.params)})"
            )
        for listed in spec.values:
            if same_value(listed, value):
                return listed
        for listed in spec.values:
            if _lenient_match(listed, value):
                return listed
        raise ValueError(f"{key}={value!r} is not allowed (allowed: {show_values(spec.values)})")

    def contains(self, key: str, value: Any) -> bool:
        """Whether ``key`` may take ``value`` (see :meth:`canonical`)."""
        try:
            self.canonical(key, value)
        except ValueError:
            return False
        return True

    def ordered_keys(self) -> list[str]:
        """Keys by priority; ties keep the playbook's order (dicts are ordered)."""
        order = {k: i for i, k in enumerate(self.params)}
        return sorted(self.params, key=lambda k: (self.params[k].priority, order[k]))

    def grid_size(self) -> int:
        """How many recipes the space holds: the product of every key's value count."""
        return math.prod(len(spec.values) for spec in self.params.values())

    def iter_grid(self) -> Iterator[dict[str, Any]]:
        """Every combination of values, as change sets (keys in priority order)."""
        keys = self.ordered_keys()
        for combo in itertools.product(*(self.params[k].values for k in keys)):
            yield dict(zip(keys, combo, strict=True))

    def to_prompt_dict(self) -> dict[str, Any]:
        """The space as plain data for a prompt (values, priority, the heuristic)."""
        out: dict[str, Any] = {}
        for key in self.ordered_keys():
            spec = self.params[key]
            entry: dict[str, Any] = {"values": list(spec.values), "priority": spec.priority}
            if spec.why:
                entry["why"] = spec.why
            out[key] = entry
        return out


def show_values(values: list[Any]) -> str:
    """Values as a YAML flow list, for messages: ``[16, true, "fp8"]``."""
    return "[" + ", ".join(_yaml_scalar(v) for v in values) + "]"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


__all__ = ["ParamSpec", "Scalar", "SearchSpace", "same_value", "show_values"]
