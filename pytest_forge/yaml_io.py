"""The one place pytest-forge reads and writes YAML (recipes, AIM files, playbooks, sidecars).

Reading is bounded: a file over `MAX_YAML_BYTES`, a document nested deeper than
`MAX_YAML_DEPTH` or one whose aliases expand to more than `MAX_YAML_ALIAS_NODES` values (the
"billion laughs" bomb) is refused by a scan of ruamel's event stream, before any object
is built. Every problem is a `YamlInputError` carrying the line and column, which each
caller turns into its own error naming the file (RecipeError, WorkloadError...).

Writing uses ruamel's round-trip mode, so the comments and key order a user wrote survive
a tuner or baseline update (`merge` edits the loaded document in place).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    NodeEvent,
)

__all__ = [
    "MAX_YAML_ALIAS_NODES",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "YamlInputError",
    "check_limits",
    "dump",
    "equivalent",
    "flow_samples",
    "guess_layout",
    "line_of",
    "line_suffix",
    "load",
    "merge",
    "plain",
    "read_text",
    "rt_yaml",
    "scalar_to_str",
]

# The largest bundled recipe is 6 KB (baselines for five workloads), a recipe measured on
# ten workloads with 30 repeats ~30 KB. ruamel reads ~100 KB/s here, so this bounds a
# file's load to ~2.5 s.
MAX_YAML_BYTES = 256 * 1024
# Recipes nest 6 levels (baselines.<workload>.samples.<metric>.[i]); vLLM's JSON configs
# a few more. The composer recurses per level, so this also keeps clear of RecursionError.
MAX_YAML_DEPTH = 64
# Values that aliases (*name) add when expanded: far above what a `<<: *defaults` merge
# adds, far below a "billion laughs" bomb (a 342-byte one expands to 387 million).
MAX_YAML_ALIAS_NODES = 10_000


class YamlInputError(Exception):
    """A YAML input refused: unreadable bytes, a syntax error or a limit.

    `message` is the cause alone, `line` and `column` are 1-based when known, and
    `str()` is the whole sentence ("YAML syntax error at line 3, column 5: ...").
    """

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        *,
        syntax: bool = False,
    ) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.syntax = syntax
        where = ""
        if line is not None:
            where = f"line {line}, column {column}" if column is not None else f"line {line}"
        if syntax:
            text = (
                f"YAML syntax error at {where}: {message}"
                if where
                else f"YAML syntax error: {message}"
            )
        else:
            text = f"{where}: {message}" if where else message
        super().__init__(text)


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MiB"
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n:,} bytes"


# ------------------------------------------------------------------------ reading


def read_text(path: Path, max_bytes: int = MAX_YAML_BYTES) -> str:
    """The file as UTF-8 text; OSError passes through, size and encoding problems do not."""
    with path.open("rb") as fh:
        size = _file_size(fh)
        if size is not None and size > max_bytes:
            raise YamlInputError(_too_big(size, max_bytes))
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YamlInputError(_too_big(None, max_bytes))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise YamlInputError(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} cannot be decoded ({e.reason}); "
            "save the file as UTF-8",
            line,
            column,
        ) from None


def _file_size(fh: Any) -> int | None:
    try:
        return os.fstat(fh.fileno()).st_size
    except OSError:
        return None


def _too_big(size: int | None, max_bytes: int) -> str:
    what = f"is {_size(size)}" if size is not None else "is larger than that"
    return f"the file {what}; YAML inputs are limited to {_size(max_bytes)}"


def check_limits(text: str, max_bytes: int = MAX_YAML_BYTES) -> None:
    """Refuse oversized, over-deep or alias-bomb documents without building them."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise YamlInputError(_too_big(size, max_bytes))
    depth = 0
    nodes = 0  # every node so far, each alias counted as what it expands to
    from_aliases = 0  # the part of `nodes` that aliases added
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, node count at its start)
    expanded: dict[str, int] = {}  # anchor -> nodes it stands for, aliases expanded
    for event in YAML(typ="rt").parse(text):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                mark = event.start_mark
                raise YamlInputError(
                    f"nested deeper than {MAX_YAML_DEPTH} levels; no pytest-forge file "
                    "needs that many",
                    mark.line + 1,
                    mark.column + 1,
                )
            open_nodes.append((event.anchor, nodes))
            nodes += 1
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
            anchor, start = open_nodes.pop()
            if anchor is not None:
                expanded[anchor] = nodes - start
        elif isinstance(event, AliasEvent):
            size = expanded.get(event.anchor, 1)
            nodes += size
            from_aliases += size
            if from_aliases > MAX_YAML_ALIAS_NODES:
                mark = event.start_mark
                raise YamlInputError(
                    f"aliases (*{event.anchor} and the like) expand to more than "
                    f"{MAX_YAML_ALIAS_NODES:,} values; write the values out instead",
                    mark.line + 1,
                    mark.column + 1,
                )
        elif isinstance(event, NodeEvent):  # a scalar
            nodes += 1
            if event.anchor is not None:
                expanded[event.anchor] = 1


def load(text: str, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """A round-trip document (comments, key lines), after check_limits; None when empty."""
    try:
        check_limits(text, max_bytes)
        return rt_yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise YamlInputError(problem, line, column, syntax=True) from None
    except YAMLError as e:
        raise YamlInputError(str(e), syntax=True) from None
    except RecursionError:
        # check_limits bounds nesting; this is the backstop should a construct recurse anyway.
        raise YamlInputError("nested too deeply to read") from None


# ------------------------------------------------------------------------ writing


def rt_yaml() -> YAML:
    """Round-trip YAML as pytest-forge writes it: 2-space maps, `  - item` lists."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    # Long rationales stay on one line rather than being folded at 80 columns.
    yaml.width = 4096
    return yaml


def dump(doc: Any, yaml: YAML | None = None) -> str:
    """A document as YAML text, written by `yaml` (default: rt_yaml())."""
    buf = StringIO()
    (yaml or rt_yaml()).dump(doc, buf)
    return buf.getvalue()


_KEY_LINE = re.compile(r"^( *)[^\s#-][^#]*:\s*(#.*)?$")


def guess_layout(yaml: YAML, text: str) -> None:
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


def flow_samples(doc: Any) -> None:
    """Per-repeat samples on one line each (`[812.1, 798.4, ...]`), not one per value."""
    baselines = doc.get("baselines") if isinstance(doc, Mapping) else None
    for baseline in (baselines or {}).values():
        samples = baseline.get("samples") if isinstance(baseline, Mapping) else None
        if not samples:
            continue
        for metric, values in samples.items():
            seq = CommentedSeq(values)
            seq.fa.set_flow_style()
            samples[metric] = seq


def merge(old: Any, compact: Mapping[str, Any], full: Mapping[str, Any]) -> None:
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
            merge(old[key], sub_compact if isinstance(sub_compact, Mapping) else {}, new_full)
            if not old[key] and key not in compact:
                del old[key]
        elif equivalent(plain(old[key]), new_full):
            continue
        elif key in compact:
            old[key] = compact[key]
        else:
            del old[key]
    for key, value in compact.items():
        if key not in old:
            old[key] = value


# ------------------------------------------------------------------------ values


def scalar_to_str(value: Any) -> Any:
    """YAML turns `parent_id: 12345678`, `vllm: 0.32` and dates into non-strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    return value


def plain(obj: Any) -> Any:
    """ruamel/numpy scalars and containers as plain Python, for pydantic and comparisons."""
    if isinstance(obj, Mapping):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
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
        return plain(obj.item())
    return obj


def equivalent(written: Any, value: Any) -> bool:
    """Whether what the file says already loads as `value` (so it is left as written)."""
    if isinstance(written, bool) != isinstance(value, bool):
        # True == 1 in Python, but `--x` and `--x 1` are different vLLM args.
        return isinstance(written, bool) and value == ("1" if written else "0")
    if isinstance(value, str) and not isinstance(written, str):
        # `FLAG: 1`, `parent_id: 1234`, `date: 2026-11-22` load as the string value.
        return scalar_to_str(written) == value
    return bool(written == value)


# ------------------------------------------------------------------------ lines


def line_of(tree: Any, loc: Sequence[Any]) -> int | None:
    """1-based line of the key at `loc` in a round-trip tree, or of its nearest parent."""
    node = tree
    line: int | None = None
    try:
        for part in loc:
            # Only round-trip containers know their lines; a plain one ends the walk.
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
    except (AttributeError, KeyError, TypeError, IndexError):
        return line
    return line


def line_suffix(line: int | None) -> str:
    """The text " (line N)" for a message, or "" when the line is not known."""
    return f" (line {line})" if line is not None else ""
