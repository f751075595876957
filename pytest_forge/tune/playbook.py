"""The tuning playbook: expert heuristics (prose for the LLM agents) plus, per hardware
class, the legal search space (a ```yaml block under ``## Search space: <CLASS>``).

The same file feeds every agent: the LLM agents read the whole text, the offline
``playbook`` agent and the proposal validator read the search spaces.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from pytest_forge.errors import ForgeError
from pytest_forge.hardware import quant_supported
from pytest_forge.recipe import quant_method_problem
from pytest_forge.serving_policy import search_key_problem
from pytest_forge.yaml_io import YamlInputError, read_text
from pytest_forge.yaml_io import load as load_yaml
from pytest_forge.yaml_io import plain as _plain

if TYPE_CHECKING:
    from pytest_forge.hardware import HostHardware

__all__ = [
    "HARDWARE_CLASSES",
    "NAMESPACES",
    "ParamSpec",
    "Playbook",
    "SearchSpace",
    "classify_hardware",
    "hardware_class",
    "load_playbook",
    "playbook_show",
    "playbook_validate",
    "same_value",
    "validate_playbook",
]

log = logging.getLogger(__name__)

HARDWARE_CLASSES: tuple[str, ...] = ("T4", "A10", "A100", "H100", "MI300X", "CPU")
NAMESPACES: tuple[str, ...] = ("config.", "compilation.", "quant.", "env.")
BUNDLED_NAME = "playbook.md"

# Heading spellings people naturally write for a class.
_CLASS_ALIASES = {"H100/H200": "H100", "H200": "H100", "MI300": "MI300X", "MI325X": "MI300X"}

# A representative GPU per class, so the FP8 gate has one source of truth
# (hardware.quant_supported) for playbooks and proposals alike.
_CLASS_GPU: dict[str, tuple[str, str | None]] = {
    "T4": ("Tesla T4", "7.5"),
    "A10": ("NVIDIA A10", "8.6"),
    "A100": ("NVIDIA A100-SXM4-80GB", "8.0"),
    "H100": ("NVIDIA H100 80GB HBM3", "9.0"),
    "MI300X": ("AMD Instinct MI300X", "gfx942"),
}
# Nominal memory per class, for mapping a GPU we do not know by name.
_CLASS_MEMORY_GB = {"T4": 16.0, "A10": 24.0, "A100": 80.0, "H100": 80.0, "MI300X": 192.0}
_NVIDIA_CLASSES = ("T4", "A10", "A100", "H100")

# Order matters: "A100" must be tried before "A10".
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(GH200|H100|H200|H800|H20)\b", re.I), "H100"),
    (re.compile(r"\b(A100|A800)\b", re.I), "A100"),
    (re.compile(r"\bA10G?\b", re.I), "A10"),
    (re.compile(r"\bT4\b", re.I), "T4"),
    (re.compile(r"\bMI3(00|25)X?\b", re.I), "MI300X"),
)

_NO_QUANT = ("none", "auto", "bf16", "fp16", "bfloat16", "float16")
# Search-space keys whose values are quantization methods or FP8 KV cache dtypes.
_QUANT_KEYS = (
    "quant.method",
    "quant.kv_cache_quant",
    "config.kv_cache_dtype",
    "config.quantization",
)
_METHOD_KEYS = ("quant.method", "config.quantization")

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


# ----------------------------------------------------------------------- values


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


# ----------------------------------------------------------------------- spaces


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
        raise ValueError(f"{key}={value!r} is not allowed (allowed: {_show_values(spec.values)})")

    def contains(self, key: str, value: Any) -> bool:
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
        return math.prod(len(spec.values) for spec in self.params.values())

    def iter_grid(self) -> Iterator[dict[str, Any]]:
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


def _show_values(values: list[Any]) -> str:
    return "[" + ", ".join(_yaml_scalar(v) for v in values) + "]"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


# ----------------------------------------------------------------------- playbook


@dataclass(frozen=True)
class Playbook:
    text: str
    path: Path
    spaces: dict[str, SearchSpace] = field(default_factory=dict)

    def search_space(self, hardware_class: str) -> SearchSpace:
        try:
            return self.spaces[hardware_class]
        except KeyError:
            raise ForgeError(
                f"{self.path}: no '## Search space: {hardware_class}' section "
                f"(this playbook covers: {', '.join(self.spaces) or 'nothing'})"
            ) from None


def bundled_playbook_path() -> Path:
    return Path(str(resources.files("pytest_forge.tune").joinpath(BUNDLED_NAME)))


def load_playbook(path: Path | str | None = None) -> Playbook:
    """Load a playbook (the bundled one when ``path`` is None).

    A search space that cannot be parsed is an error naming the file and line. A
    playbook that leaves out some hardware classes still loads (a team may only tune
    on one kind of machine); ``validate_playbook`` reports the missing ones.
    """
    target = Path(path) if path is not None else bundled_playbook_path()
    try:
        text = read_text(target)
    except (OSError, YamlInputError) as e:
        raise ForgeError(f"{target}: cannot read the playbook: {_read_error(e)}") from None
    spaces, problems = _parse(text, target)
    if problems:
        raise ForgeError(
            f"{target}: the playbook is invalid:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return Playbook(text=text, path=target, spaces=spaces)


def validate_playbook(path: Path | str | None = None) -> list[str]:
    """Every problem in a playbook, each naming the file and (where it has one) the line."""
    target = Path(path) if path is not None else bundled_playbook_path()
    try:
        text = read_text(target)
    except (OSError, YamlInputError) as e:
        return [f"{target}: cannot read the playbook: {_read_error(e)}"]
    _, problems = _parse(text, target)
    declared = {block.cls for block in _find_blocks(text)}
    missing = [c for c in HARDWARE_CLASSES if c not in declared]
    if missing:
        problems.append(
            f"{target}: no search space for {', '.join(missing)} "
            f"(add a '## Search space: <CLASS>' heading with a ```yaml block for each)"
        )
    return problems


def _read_error(error: OSError | YamlInputError) -> str:
    return str(error.strerror or error) if isinstance(error, OSError) else str(error)


def playbook_show(path: Path | str | None = None) -> str:
    """What `forge playbook show` prints: the playbook and a summary of its spaces."""
    playbook = load_playbook(path)
    lines = [playbook.text.rstrip(), "", "---", f"playbook: {playbook.path}"]
    for cls, space in playbook.spaces.items():
        lines.append(f"  {cls}: {len(space.params)} parameters, {space.grid_size():,} grid points")
    return "\n".join(lines) + "\n"


def playbook_validate(path: Path | str | None = None) -> int:
    """What `forge playbook validate` runs: print the verdict, return the exit code."""
    target = Path(path) if path is not None else bundled_playbook_path()
    problems = validate_playbook(target)
    if problems:
        print(f"playbook {target}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    playbook = load_playbook(target)
    sizes = ", ".join(f"{c} {s.grid_size():,}" for c, s in playbook.spaces.items())
    print(f"playbook {target}: OK (grid points per class: {sizes})")
    return 0


# ----------------------------------------------------------------------- parsing

_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SPACE_HEADING_RE = re.compile(r"^search space\s*:\s*(.+)$", re.I)
_FENCE_RE = re.compile(r"^\s*(```+|~~~+)\s*([\w.+-]*)")


@dataclass
class _Block:
    cls: str
    heading_line: int
    yaml_text: str | None = None
    # 1-based line of the block's first YAML line in the markdown file.
    first_line: int = 0
    lang: str = ""
    closed: bool = True


def _normalise_class(raw: str) -> str:
    name = raw.strip().strip("`*").strip()
    upper = name.upper()
    if upper in HARDWARE_CLASSES:
        return upper
    return _CLASS_ALIASES.get(upper, name)


def _find_blocks(text: str) -> list[_Block]:
    """Each '## Search space: X' heading with the first fenced block in its section."""
    blocks: list[_Block] = []
    current: _Block | None = None
    fence: str | None = None
    fence_lines: list[str] = []
    fence_lang = ""
    fence_start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is not None:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                if current is not None and current.yaml_text is None:
                    current.yaml_text = "\n".join(fence_lines)
                    current.first_line = fence_start + 1
                    current.lang = fence_lang
                fence = None
            else:
                fence_lines.append(line)
            continue
        opened = _FENCE_RE.match(line)
        if opened:
            fence, fence_lang, fence_lines, fence_start = (
                opened.group(1),
                opened.group(2).lower(),
                [],
                number,
            )
            continue
        heading = _HEADING_RE.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2)
            space = _SPACE_HEADING_RE.match(title)
            if space:
                current = _Block(cls=_normalise_class(space.group(1)), heading_line=number)
                blocks.append(current)
            elif level <= 2:
                current = None
    if fence is not None and current is not None and current.yaml_text is None:
        current.closed = False
        current.first_line = fence_start + 1
    return blocks


def _parse(text: str, path: Path) -> tuple[dict[str, SearchSpace], list[str]]:
    spaces: dict[str, SearchSpace] = {}
    problems: list[str] = []
    seen: dict[str, int] = {}
    for block in _find_blocks(text):
        where = f"{path}:{block.heading_line}"
        if block.cls not in HARDWARE_CLASSES:
            problems.append(
                f"{where}: unknown hardware class '{block.cls}' "
                f"(known: {', '.join(HARDWARE_CLASSES)})"
            )
            continue
        if block.cls in seen:
            problems.append(
                f"{where}: a second search space for {block.cls} "
                f"(the first is at line {seen[block.cls]})"
            )
            continue
        seen[block.cls] = block.heading_line
        if not block.closed:
            problems.append(f"{path}:{block.first_line - 1}: the ```yaml block is never closed")
            continue
        if block.yaml_text is None:
            problems.append(f"{where}: no ```yaml block under the {block.cls} heading")
            continue
        if block.lang not in ("yaml", "yml"):
            problems.append(
                f"{path}:{block.first_line - 1}: the block under the {block.cls} heading "
                f"must be ```yaml, not ```{block.lang or '(no language)'}"
            )
            continue
        space, block_problems = _parse_space(block, path)
        problems.extend(block_problems)
        if space is not None and not block_problems:
            spaces[block.cls] = space
    return spaces, problems


def _parse_space(block: _Block, path: Path) -> tuple[SearchSpace | None, list[str]]:
    assert block.yaml_text is not None
    base = block.first_line  # absolute line of the block's line 0 (ruamel lines are 0-based)
    try:
        data = load_yaml(block.yaml_text)
    except YamlInputError as e:
        line = base + e.line - 1 if e.line is not None else block.first_line
        return None, [f"{path}:{line}: {block.cls} search space: invalid YAML: {e.message}"]

    def at(node: Any, key: Any = None) -> int:
        try:
            if key is None:
                return base + int(node.lc.line)
            return base + int(node.lc.key(key)[0])
        except (AttributeError, KeyError, TypeError):
            return block.first_line

    label = f"{block.cls} search space"
    if not isinstance(data, dict) or "params" not in data:
        return None, [f"{path}:{block.first_line}: {label}: expected a mapping with 'params:'"]
    problems = [
        f"{path}:{at(data, k)}: {label}: unknown top-level key '{k}' (only 'params')"
        for k in data
        if k != "params"
    ]
    params = data["params"]
    if not isinstance(params, dict) or not params:
        return None, [*problems, f"{path}:{at(data, 'params')}: {label}: 'params' is empty"]

    specs: dict[str, ParamSpec] = {}
    for key, raw in params.items():
        line = at(params, key)
        where = f"{path}:{line}: {label}: {key}"
        if not isinstance(key, str) or not key.startswith(NAMESPACES) or key in NAMESPACES:
            problems.append(f"{where}: unknown namespace (keys start with {', '.join(NAMESPACES)})")
            continue
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a mapping with 'values' and 'priority'")
            continue
        if isinstance(raw.get("values"), list) and not raw["values"]:
            problems.append(f"{where}: values is empty")
            continue
        try:
            spec = ParamSpec.model_validate(_plain(raw))
        except ValueError as e:
            problems.extend(_spec_errors(e, where))
            continue
        duplicates = [
            v for i, v in enumerate(spec.values) if any(same_value(v, w) for w in spec.values[:i])
        ]
        if duplicates:
            problems.append(f"{where}: duplicate values {_show_values(duplicates)}")
        gate = _gate_problem(block.cls, key, spec)
        if gate:
            problems.append(f"{where}: {gate}")
        # Reserved args and code-loading options never enter the agent's search space.
        unsafe = search_key_problem(key, list(spec.values))
        if unsafe:
            problems.append(f"{where}: {unsafe}")
        specs[key] = spec
    if problems:
        return None, problems
    return SearchSpace(params=specs), []


def _spec_errors(error: ValueError, where: str) -> list[str]:
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return [f"{where}: {error}"]
    out = []
    for item in errors():
        loc = ".".join(str(p) for p in item.get("loc", ()))
        msg = item.get("msg", "invalid")
        if item.get("type") == "extra_forbidden":
            msg = "unknown field (allowed: values, priority, default, why)"
        elif item.get("type") == "missing":
            msg = "is required"
        out.append(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}")
    return out


def _gate_problem(cls: str, key: str, spec: ParamSpec) -> str | None:
    """A quantization value this class cannot run (seeds/001's gates), or a method label
    every recipe refuses (int8/int4 name no vLLM method: they would run unquantized)."""
    if key not in _QUANT_KEYS:
        return None
    for value in spec.values if key in _METHOD_KEYS else ():
        refused = quant_method_problem(str(value))
        if refused:
            return refused
    bad = []
    for value in spec.values:
        method = str(value).lower()
        if method in _NO_QUANT:
            continue
        if key == "config.kv_cache_dtype" and not method.startswith("fp8"):
            continue
        if cls == "CPU":
            bad.append(value)
            continue
        fp8_kv = key not in _METHOD_KEYS and method.startswith("fp8")
        gate_method = "fp8" if fp8_kv else method
        name, cc = _CLASS_GPU[cls]
        if not quant_supported(name, cc, gate_method):
            bad.append(value)
    if not bad:
        return None
    if cls == "CPU":
        return f"{_show_values(bad)}: no quantization on CPU"
    return (
        f"{_show_values(bad)} cannot run on {cls} "
        "(FP8 needs SM >= 8.9 or MI300X; see the quantization gates)"
    )


# ----------------------------------------------------------------------- hardware


def _cc_float(cc: Any) -> float | None:
    try:
        return float(cc) if cc is not None else None
    except (TypeError, ValueError):
        return None


def classify_hardware(host: HostHardware) -> tuple[str, str | None]:
    """The playbook class for a host, and a note when the GPU was not known by name."""
    if host.vendor == "cpu" or not host.gpus:
        return "CPU", None
    gpu = host.gpus[0]
    for pattern, cls in _NAME_PATTERNS:
        if pattern.search(gpu.name):
            return cls, None
    if host.vendor == "amd":
        candidates: tuple[str, ...] = ("MI300X",)
    else:
        candidates = _NVIDIA_CLASSES
    sm = _cc_float(gpu.compute_capability)

    def distance(cls: str) -> tuple[float, float]:
        # Tie-break (A100 vs H100 at 80 GB) by compute capability when known.
        cls_sm = _cc_float(_CLASS_GPU[cls][1]) or 0.0
        return abs(_CLASS_MEMORY_GB[cls] - gpu.memory_gb), abs(cls_sm - sm) if sm else cls_sm

    cls = min(candidates, key=distance)
    note = (
        f"unknown GPU '{gpu.name}' ({gpu.memory_gb:g} GB): using the playbook's {cls} "
        f"search space, the nearest class by memory"
    )
    return cls, note


def hardware_class(host: HostHardware) -> str:
    """T4, A10, A100, H100 (also H200), MI300X or CPU; an unknown GPU maps by memory."""
    cls, note = classify_hardware(host)
    if note:
        log.warning(note)
    return cls
