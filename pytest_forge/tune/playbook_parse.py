"""Reading a playbook's search spaces: each ``## Search space: <CLASS>`` heading's
```yaml block, checked key by key, every problem naming the file and line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_forge.hardware import quant_supported
from pytest_forge.recipe import quant_method_problem
from pytest_forge.serving_policy import search_key_problem
from pytest_forge.tune.hardware_classes import CLASS_GPU, HARDWARE_CLASSES, normalise_class
from pytest_forge.tune.search_space import ParamSpec, SearchSpace, same_value, show_values
from pytest_forge.yaml_io import YamlInputError, plain
from pytest_forge.yaml_io import load as load_yaml

NAMESPACES: tuple[str, ...] = ("config.", "compilation.", "quant.", "env.")

_NO_QUANT = ("none", "auto", "bf16", "fp16", "bfloat16", "float16")
# Search-space keys whose values are quantization methods or FP8 KV cache dtypes.
_QUANT_KEYS = (
    "quant.method",
    "quant.kv_cache_quant",
    "config.kv_cache_dtype",
    "config.quantization",
)
_METHOD_KEYS = ("quant.method", "config.quantization")

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


def find_blocks(text: str) -> list[_Block]:
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
                current = _Block(cls=normalise_class(space.group(1)), heading_line=number)
                blocks.append(current)
            elif level <= 2:
                current = None
    if fence is not None and current is not None and current.yaml_text is None:
        current.closed = False
        current.first_line = fence_start + 1
    return blocks


def parse(text: str, path: Path) -> tuple[dict[str, SearchSpace], list[str]]:
    """Every class's search space in a playbook's text, and every problem found."""
    spaces: dict[str, SearchSpace] = {}
    problems: list[str] = []
    seen: dict[str, int] = {}
    for block in find_blocks(text):
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
    """One class's ```yaml block as a search space, or every problem in it."""
    assert block.yaml_text is not None
    base = block.first_line  # absolute line of the block's line 0 (ruamel lines are 0-based)
    try:
        data = load_yaml(block.yaml_text)
    except YamlInputError as e:
        line = base + e.line - 1 if e.line is not None else block.first_line
        return None, [f"{path}:{line}: {block.cls} search space: invalid YAML: {e.message}"]

    def at(node: Any, key: Any) -> int:
        return _line_of(node, key, base, block.first_line)

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
        spec, found = _param_spec(block.cls, key, raw, f"{path}:{at(params, key)}: {label}: {key}")
        problems.extend(found)
        if spec is not None:
            specs[key] = spec
    if problems:
        return None, problems
    return SearchSpace(params=specs), []


def _line_of(node: Any, key: Any, base: int, fallback: int) -> int:
    """The markdown line of ``key`` in a ruamel mapping (``fallback`` when it has none)."""
    try:
        return base + int(node.lc.key(key)[0])
    except (AttributeError, KeyError, TypeError):
        return fallback


def _param_spec(cls: str, key: Any, raw: Any, where: str) -> tuple[ParamSpec | None, list[str]]:
    """One search-space entry as a ParamSpec, with every problem it has (``where`` names
    the file, line and key)."""
    if not isinstance(key, str) or not key.startswith(NAMESPACES) or key in NAMESPACES:
        return None, [f"{where}: unknown namespace (keys start with {', '.join(NAMESPACES)})"]
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a mapping with 'values' and 'priority'"]
    if isinstance(raw.get("values"), list) and not raw["values"]:
        return None, [f"{where}: values is empty"]
    try:
        spec = ParamSpec.model_validate(plain(raw))
    except ValueError as e:
        return None, _spec_errors(e, where)
    problems = []
    duplicates = [
        v for i, v in enumerate(spec.values) if any(same_value(v, w) for w in spec.values[:i])
    ]
    if duplicates:
        problems.append(f"{where}: duplicate values {show_values(duplicates)}")
    gate = _gate_problem(cls, key, spec)
    if gate:
        problems.append(f"{where}: {gate}")
    # Reserved args and code-loading options never enter the agent's search space.
    unsafe = search_key_problem(key, list(spec.values))
    if unsafe:
        problems.append(f"{where}: {unsafe}")
    return spec, problems


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
        name, cc = CLASS_GPU[cls]
        if not quant_supported(name, cc, gate_method):
            bad.append(value)
    if not bad:
        return None
    if cls == "CPU":
        return f"{show_values(bad)}: no quantization on CPU"
    return (
        f"{show_values(bad)} cannot run on {cls} "
        "(FP8 needs SM >= 8.9 or MI300X; see the quantization gates)"
    )
