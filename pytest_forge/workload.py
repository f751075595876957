"""Workloads: a JSONL file of requests plus an optional ``<name>.yaml`` sidecar saying how to
replay them. Loading validates everything up front, so a bad file fails with its path, line
and field before any server boots.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pytest_forge.errors import WorkloadError
from pytest_forge.slo import SLO
from pytest_forge.suggest import nearest
from pytest_forge.yaml_io import YamlInputError, read_text
from pytest_forge.yaml_io import line_of as _line_of
from pytest_forge.yaml_io import load as load_yaml
from pytest_forge.yaml_io import plain as _plain

ScorerName = Literal["exact", "contains", "regex", "agreement"]
Mode = Literal["closed", "open"]

SIDECAR_SUFFIX = ".yaml"


class WorkloadRequest(BaseModel):
    """One line of a workload file."""

    # Numbers where strings are expected are almost always a reference like 42: accept them.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    id: str = Field(min_length=1)
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    expected_output_tokens: int = Field(ge=1)
    arrival_offset_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    reference: str | None = None
    metadata: dict[str, Any] | None = None

    # Where the request came from, for error messages; not part of the data.
    _line: int | None = PrivateAttr(default=None)

    @field_validator("messages")
    @classmethod
    def _messages_have_role_and_content(
        cls, messages: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]] | None:
        for i, message in enumerate(messages or []):
            for key in ("role", "content"):
                if key not in message:
                    raise PydanticCustomError(
                        "message_shape",
                        "messages[{index}] has no '{key}'",
                        {"index": i, "key": key},
                    )
            if not isinstance(message["role"], str):
                raise PydanticCustomError(
                    "message_shape", "messages[{index}].role must be a string", {"index": i}
                )
        return messages

    @model_validator(mode="after")
    def _exactly_one_input(self) -> WorkloadRequest:
        if (self.prompt is None) == (self.messages is None):
            which = "both were given" if self.prompt is not None else "neither was given"
            raise PydanticCustomError(
                "prompt_or_messages",
                "give exactly one of 'prompt' or 'messages' ({which})",
                {"which": which},
            )
        return self

    @property
    def line(self) -> int | None:
        """Line of the workload file this request was read from (None if built in code)."""
        return self._line


class AccuracySpec(BaseModel):
    """The sidecar's ``accuracy:``: which scorer judges the outputs, and its floor."""

    model_config = ConfigDict(extra="forbid")

    scorer: ScorerName | None = None
    # Scores are in [0, 1], so a floor above 1 could never pass.
    floor: float | None = Field(default=None, ge=0, le=1)


class Replay(BaseModel):
    """How to replay a workload: the ``<name>.yaml`` sidecar, every key optional."""

    model_config = ConfigDict(extra="forbid")

    # None until load_workload resolves it: "open" when requests carry arrival offsets.
    mode: Mode | None = None
    concurrency: int = Field(default=8, ge=1)
    request_rate: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # Shape of the gamma inter-arrival distribution, as vLLM's bench: 1.0 is Poisson,
    # below 1 burstier, above 1 more regular.
    burstiness: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    warmup: int = Field(default=2, ge=0)
    repeats: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 0
    ignore_eos: bool = True
    slo: SLO = Field(default_factory=SLO)
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec)
    request_timeout_s: float = Field(default=600, gt=0)

    @property
    def max_concurrency(self) -> int | None:
        """In-flight request limit: always set in closed loop; in open loop only if the
        sidecar sets ``concurrency`` (otherwise arrivals are not throttled)."""
        if self.mode == "open" and "concurrency" not in self.model_fields_set:
            return None
        return self.concurrency


# eq=False: identity hashing, so a Workload can key a dict despite its list of requests.
@dataclass(frozen=True, eq=False)
class Workload:
    """A workload file's requests and how to replay them (``load_workload`` builds it)."""

    name: str
    path: Path
    requests: list[WorkloadRequest]
    replay: Replay  # mode already resolved by load_workload

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[WorkloadRequest]:
        return iter(self.requests)

    @property
    def mode(self) -> Mode:
        """Closed or open loop: the sidecar's, else open when requests carry offsets."""
        return self.replay.mode or _default_mode(self.requests)

    @property
    def has_references(self) -> bool:
        """Whether any request has a reference answer to score against."""
        return any(r.reference is not None for r in self.requests)

    @property
    def total_expected_output_tokens(self) -> int:
        """The output tokens one pass over the workload asks for."""
        return sum(r.expected_output_tokens for r in self.requests)

    @cached_property
    def by_id(self) -> dict[str, WorkloadRequest]:
        """The requests by id."""
        return {r.id: r for r in self.requests}

    @cached_property
    def references(self) -> dict[str, str]:
        """Reference answer by request id, for the requests that have one."""
        return {r.id: r.reference for r in self.requests if r.reference is not None}

    def arrival_offsets(self) -> list[float] | None:
        """Send time of each request (seconds after the start, in ``requests`` order) for an
        open loop; None for a closed loop.

        Offsets from the file win; otherwise inter-arrival gaps are drawn from a gamma
        distribution with shape ``burstiness`` and mean ``1 / request_rate`` (vLLM's
        ``bench serve`` arrivals), seeded by the sidecar's ``seed`` so runs compare.
        """
        if self.mode == "closed":
            return None
        if all(r.arrival_offset_s is not None for r in self.requests):
            return [float(r.arrival_offset_s or 0.0) for r in self.requests]
        import numpy as np

        rate = self.replay.request_rate
        if rate is None:  # load_workload rejects this; guards a hand-built Workload
            raise WorkloadError(self.path, None, "mode", _OPEN_NEEDS_ARRIVALS)
        shape = self.replay.burstiness
        rng = np.random.default_rng(self.replay.seed)
        gaps = rng.gamma(shape=shape, scale=1.0 / (rate * shape), size=len(self.requests))
        return [float(t) for t in np.cumsum(gaps)]


_OPEN_NEEDS_ARRIVALS = (
    "open-loop replay needs arrival_offset_s on every request or request_rate in the sidecar"
)


def _default_mode(requests: Sequence[WorkloadRequest]) -> Mode:
    return "open" if any(r.arrival_offset_s is not None for r in requests) else "closed"


# --- error translation ---------------------------------------------------------------------


def _loc_to_field(loc: Sequence[int | str]) -> str | None:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else item)
    return "".join(parts) or None


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = nearest(key, valid, cutoff=0.5)
    hint = f"; did you mean '{close}'?" if close else ""
    return f"unknown key '{key}'{hint} (valid keys: {', '.join(valid)})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """What a user wrote, in file terms rather than Python class names."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


def _valid_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """Field names of the (nested) model at ``loc``, to suggest a replacement for a typo."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(error: Mapping[str, Any], model: type[BaseModel]) -> tuple[str | None, str]:
    """(field, message) for one pydantic error, worded for someone editing the file."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return _loc_to_field(loc), _suggest(str(loc[-1]), _valid_keys(model, loc[:-1]))
    if kind == "missing":
        return _loc_to_field(loc), "required key is missing"
    if kind == "prompt_or_messages":
        return "prompt/messages", error["msg"]
    message = error["msg"]
    if "input" in error and kind != "message_shape":
        message += f" (got {_short(error['input'])})"
    return _loc_to_field(loc), message


# --- loading ---------------------------------------------------------------------------------


def load_workload(path: Path | str) -> Workload:
    """Read ``path`` (JSONL) and its sidecar ``<name>.yaml`` if present.

    Raises WorkloadError naming the file, line and field of the first problem.
    """
    path = Path(path)
    name = path.stem
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkloadError(path, None, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(path, None, None, f"cannot read: {exc}") from None

    requests: list[WorkloadRequest] = []
    first_line_of: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(path, line_no, None, f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise WorkloadError(path, line_no, None, f"expected a JSON object, got {_kind(data)}")
        data.setdefault("id", f"{name}-{line_no}")
        try:
            request = WorkloadRequest.model_validate(data)
        except ValidationError as exc:
            field, message = _describe(exc.errors()[0], WorkloadRequest)
            raise WorkloadError(path, line_no, field, message) from None
        if request.id in first_line_of:
            raise WorkloadError(
                path,
                line_no,
                "id",
                f"duplicate id '{request.id}' (first used on line {first_line_of[request.id]})",
            )
        first_line_of[request.id] = line_no
        request._line = line_no
        requests.append(request)

    if not requests:
        raise WorkloadError(path, None, None, "workload has no requests (the file is empty)")

    if any(r.arrival_offset_s is not None for r in requests):
        # A trace that times some requests leaves the rest at the start: arrival_offset_s
        # defaults to 0, as in the Forge tuner's workload format (seed 001).
        requests = [
            r if r.arrival_offset_s is not None else r.model_copy(update={"arrival_offset_s": 0.0})
            for r in requests
        ]
    sidecar = path.with_suffix(SIDECAR_SUFFIX)
    replay = load_replay(sidecar) if sidecar.is_file() else Replay()
    replay = _resolve_mode(replay, requests, path, sidecar)
    workload = Workload(name=name, path=path, requests=requests, replay=replay)
    if replay.accuracy.scorer == "regex":
        # Fail at load, not after a whole benchmark run, on a pattern that cannot compile.
        compile_reference_patterns(workload)
    return workload


def _resolve_mode(
    replay: Replay, requests: list[WorkloadRequest], path: Path, sidecar: Path
) -> Replay:
    mode = replay.mode or _default_mode(requests)
    if mode == "open":
        missing = [r for r in requests if r.arrival_offset_s is None]
        if missing and replay.request_rate is None:
            raise WorkloadError(
                sidecar, _sidecar_line(sidecar, ("mode",)), "mode", _OPEN_NEEDS_ARRIVALS
            )
        if not missing and replay.request_rate is not None:
            raise WorkloadError(
                sidecar,
                _sidecar_line(sidecar, ("request_rate",)),
                "request_rate",
                "the requests already carry arrival_offset_s; drop request_rate or the offsets",
            )
    return replay.model_copy(update={"mode": mode})


def _sidecar_line(sidecar: Path, loc: Sequence[int | str]) -> int | None:
    if not sidecar.is_file():
        return None
    try:
        return _line_of(load_yaml(read_text(sidecar)), loc)
    except Exception:  # only used to decorate an error that is already being raised
        return None


def load_replay(sidecar: Path | str) -> Replay:
    """Parse a ``<name>.yaml`` sidecar; errors name the sidecar, the line and the key."""
    sidecar = Path(sidecar)
    try:
        text = read_text(sidecar)
    except OSError as exc:
        raise WorkloadError(sidecar, None, None, f"cannot read: {exc}") from None
    except YamlInputError as exc:
        raise WorkloadError(sidecar, exc.line, None, f"cannot read: {exc.message}") from None
    try:
        doc = load_yaml(text)
    except YamlInputError as exc:
        raise WorkloadError(sidecar, exc.line, None, f"invalid YAML: {exc.message}") from None
    if doc is None:
        return Replay()
    if not isinstance(doc, Mapping):
        raise WorkloadError(
            sidecar, None, None, f"expected a mapping of replay settings, got {_kind(doc)}"
        )
    try:
        return Replay.model_validate(_plain(doc))
    except ValidationError as exc:
        error = exc.errors()[0]
        field, message = _describe(error, Replay)
        raise WorkloadError(sidecar, _line_of(doc, error["loc"]), field, message) from None


def discover_workloads(directory: Path | str) -> dict[str, Path]:
    """Every ``*.jsonl`` in ``directory`` by name (file stem), sorted; {} if it does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found = (p for p in directory.glob("*.jsonl") if p.is_file() and not p.name.startswith("."))
    return {p.stem: p for p in sorted(found, key=lambda p: p.stem)}


__all__ = [
    "AccuracySpec",
    "Mode",
    "Replay",
    "ScorerName",
    "Workload",
    "WorkloadRequest",
    "discover_workloads",
    "load_replay",
    "load_workload",
]


def _compile(request: WorkloadRequest, workload: Workload) -> re.Pattern[str]:
    try:
        return re.compile(request.reference or "")
    except re.error as exc:
        raise WorkloadError(
            workload.path,
            request.line,
            "reference",
            f"request '{request.id}': invalid regular expression {request.reference!r}: {exc}",
        ) from None


def compile_reference_patterns(workload: Workload) -> dict[str, re.Pattern[str]]:
    """Each request's reference compiled as a regex; a bad one raises naming the request."""
    return {r.id: _compile(r, workload) for r in workload.requests if r.reference is not None}
