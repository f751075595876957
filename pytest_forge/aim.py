"""AMD Inference Microservice (AIM) recipes read into pytest-forge recipes, and the AIM format.

An AIM recipe (seeds/003) describes one model on one AMD GPU type at one precision, with a
``vllm_serve.<N>_gpu.args`` block of ``--flag: "value"`` strings per GPU count. Importing
checks it the way the AIM guide's validation checklist does, validates every flag against
this vLLM's arguments, and yields one pytest-forge recipe per enabled block. The way back
(and to ``vllm serve``) is export.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pytest_forge.errors import RecipeError
from pytest_forge.recipe import NO_KV_CACHE_QUANT, Recipe
from pytest_forge.serving_policy import code_loading_settings
from pytest_forge.suggest import name_hint, nearest
from pytest_forge.vllm_args import SUCCESSORS
from pytest_forge.yaml_io import YamlInputError, plain, read_text
from pytest_forge.yaml_io import load as load_yaml

if TYPE_CHECKING:
    from pytest_forge.vllm_args import VllmArgSpec

# AIM hardware identifier -> (gpu_type as pytest-forge and rocm-smi name it, HBM per GPU).
AIM_HARDWARE: dict[str, tuple[str, float]] = {
    "mi300x": ("MI300X", 192.0),
    "mi325x": ("MI325X", 256.0),
}
AIM_PRECISIONS = ("bf16", "fp16", "fp8", "int8", "int4")
AIM_GPU_COUNTS = (1, 2, 4, 8)
AIM_REQUIRED_ARGS = (
    "--model",
    "--dtype",
    "--max-model-len",
    "--gpu-memory-utilization",
    "--trust-remote-code",
    "--port",
)
AIM_DEFAULT_PORT = "8000"
# Quantized precisions become quant.method when the args carry no --quantization.
QUANTIZED_PRECISIONS = frozenset({"fp8", "int8", "int4"})
# The guide's naming rule: {model-name}-{hardware}-{precision}, in lower case.
RECIPE_ID_RE = re.compile(
    r"^(?P<model>[a-z0-9][a-z0-9.]*(?:-[a-z0-9.]+)*)"
    r"-(?P<hardware>[a-z0-9]+)-(?P<precision>[a-z0-9]+)$"
)

# Flags pytest-forge sets itself when it boots vLLM: the model is the recipe's `model:`,
# the server binds 127.0.0.1 on a free port and names the model after the recipe.
_DROPPED = frozenset({"--model", "--port", "--host", "--served-model-name"})
_BLOCK_RE = re.compile(r"^(\d+)_gpu$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][+-]?\d+)$")
# Flags AIM recipes borrow from other servers whose vLLM name spells nothing alike, so
# difflib alone suggests something unrelated (--ubatch-size for --max-batch-size). AIM's
# own successors win over vLLM's renames.
_RENAMED = {**SUCCESSORS, "max_batch_size": "max_num_seqs"}
_TOP_KEYS = ("recipe_id", "huggingface_id", "precision", "hardware", "vllm_serve")


class _Problems:
    """Every problem found in one AIM file, reported together as one RecipeError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, message: str, line: int | None = None) -> None:
        self.items.append((field, message + (f" (line {line})" if line is not None else "")))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        (field, first), rest = self.items[0], self.items[1:]
        raise RecipeError(self.path, field, first + "".join(f"; also {f}: {m}" for f, m in rest))


@dataclass(frozen=True)
class _Block:
    """One enabled ``vllm_serve.<N>_gpu`` block, before it becomes a recipe."""

    name: str
    gpus: int
    args: Mapping[Any, Any]
    line: int | None  # of the block's key

    @property
    def where(self) -> str:
        return f"vllm_serve.{self.name}.args"


def _line(node: Any, key: Any) -> int | None:
    """1-based line of `key` in a ruamel round-trip mapping, when known."""
    try:
        return int(node.lc.key(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        return None


def _load_yaml(path: Path) -> Any:
    try:
        return load_yaml(read_text(path))
    except OSError as e:
        raise RecipeError(path, None, f"cannot read AIM recipe: {e.strerror or e}") from None
    except YamlInputError as e:
        raise RecipeError(path, None, str(e)) from None


def convert_value(raw: Any) -> Any:
    """An AIM arg value ("true", "8192", "0.9", '{"mode": 3}', "bfloat16") as a typed value."""
    value = plain(raw)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            return value
    return value


def check_recipe_id(recipe_id: str, hardware: str, precision: str) -> str | None:
    """Why ``recipe_id`` breaks the AIM naming rule for this hardware and precision, or None."""
    match = RECIPE_ID_RE.match(recipe_id)
    example = "e.g. qwen3-32b-mi300x-bf16"
    if not match:
        return (
            f"'{recipe_id}' does not follow {{model-name}}-{{hardware}}-{{precision}} "
            f"in lower case ({example})"
        )
    if match["hardware"] != hardware:
        return f"'{recipe_id}' names hardware '{match['hardware']}' but hardware is '{hardware}'"
    if match["precision"] != precision:
        return (
            f"'{recipe_id}' names precision '{match['precision']}' but precision is '{precision}'"
        )
    return None


def flag_name(snake: str) -> str:
    """The long option of an argument name: ``max_num_seqs`` -> ``--max-num-seqs``."""
    return "--" + snake.replace("_", "-")


# ---------------------------------------------------------------------- one block


def _check_args_known(
    args: Mapping[str, Any], where: str, spec: VllmArgSpec, problems: _Problems
) -> None:
    for flag in args:
        snake = str(flag)[2:].replace("-", "_")
        if snake in spec.args:
            continue
        near = nearest(snake, spec.args, renamed=_RENAMED)
        problems.add(
            f"{where}.{flag}",
            f"'{flag}' is not an argument of vLLM {spec.version} ({spec.source}); "
            + name_hint(flag_name(near) if near else None),
            _line(args, flag),
        )


def _check_arg_shape(block: _Block, problems: _Problems) -> None:
    """Every key a long option, every AIM-required arg present."""
    args, where = block.args, block.where
    for key in args:
        if not isinstance(key, str) or not key.startswith("--"):
            problems.add(
                f"{where}.{key}",
                "an AIM arg is a long option such as '--max-model-len'",
                _line(args, key),
            )
    missing = [flag for flag in AIM_REQUIRED_ARGS if flag not in args]
    if missing:
        problems.add(where, f"required args missing: {', '.join(missing)}", block.line)


def _check_arg_values(
    block: _Block, values: Mapping[str, Any], top: Mapping[str, Any], problems: _Problems
) -> None:
    """--model against huggingface_id, --port a port, --tensor-parallel-size the GPU count."""
    args, where, gpus = block.args, block.where, block.gpus
    model = str(values["--model"])
    if model != top["huggingface_id"]:
        problems.add(
            f"{where}.--model",
            f"'{model}' disagrees with huggingface_id '{top['huggingface_id']}'",
            _line(args, "--model"),
        )
    port = values["--port"]
    if not isinstance(port, int) or not 1 <= port <= 65535:
        problems.add(
            f"{where}.--port", f"'{args['--port']}' is not a TCP port", _line(args, "--port")
        )
    tp = values.get("--tensor-parallel-size")
    if tp is None and gpus > 1:
        problems.add(
            where,
            f"--tensor-parallel-size is missing; a {gpus}-GPU block needs "
            f'--tensor-parallel-size: "{gpus}"',
            block.line,
        )
    elif tp is not None and tp != gpus:
        problems.add(
            f"{where}.--tensor-parallel-size",
            f"'{args['--tensor-parallel-size']}' does not match the block's GPU count {gpus}",
            _line(args, "--tensor-parallel-size"),
        )


def _check_compilation(
    block: _Block, flag: str, value: Mapping[str, Any], spec: VllmArgSpec, problems: _Problems
) -> None:
    for key in value:
        if key not in spec.compilation_fields:
            near = nearest(str(key), spec.compilation_fields, renamed=_RENAMED)
            problems.add(
                f"{block.where}.{flag}",
                f"'{key}' is not a CompilationConfig field of vLLM {spec.version}; "
                + name_hint(near),
                _line(block.args, flag),
            )


def _sections(
    block: _Block, values: Mapping[str, Any], spec: VllmArgSpec, problems: _Problems
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, str]]:
    """The block's values as a recipe's (config, compilation, quant) sections."""
    config: dict[str, Any] = {}
    compilation: dict[str, Any] | None = None
    quant = {"method": "none", "kv_cache_quant": "none"}
    for flag, value in values.items():
        if flag in _DROPPED:
            continue
        snake = flag[2:].replace("-", "_")
        if snake == "quantization":
            quant["method"] = str(value)
        elif snake == "kv_cache_dtype" and str(value) not in NO_KV_CACHE_QUANT:
            quant["kv_cache_quant"] = str(value)
        elif snake == "compilation_config" and isinstance(value, dict):
            compilation = value
            _check_compilation(block, flag, value, spec, problems)
        else:
            config[snake] = value
    return config, compilation, quant


def _block_recipe(
    path: Path, block: _Block, top: Mapping[str, Any], spec: VllmArgSpec, problems: _Problems
) -> Recipe | None:
    """One enabled block as a Recipe, or None after recording why it cannot be one."""
    before = len(problems.items)
    _check_arg_shape(block, problems)
    if len(problems.items) > before:
        return None
    _check_args_known(block.args, block.where, spec, problems)
    values = {flag: convert_value(raw) for flag, raw in block.args.items()}
    _check_arg_values(block, values, top, problems)
    if len(problems.items) > before:
        return None

    config, compilation, quant = _sections(block, values, spec, problems)
    if quant["method"] == "none" and top["precision"] in QUANTIZED_PRECISIONS:
        # The checkpoint is quantized and vLLM reads its scheme from its config (AMD's
        # FP8 checkpoints are quark): `--quantization fp8` would not match it, and int8 /
        # int4 are no vLLM methods at all. So the method is "auto" (no flag: what vLLM
        # does with such a checkpoint), and the recipe id keeps the AIM precision.
        quant["method"] = "auto"
    gpu_type, memory = AIM_HARDWARE[top["hardware"]]
    data = {
        "id": f"{top['recipe_id']}-{block.gpus}gpu",
        "model": str(values["--model"]),
        "hardware": {
            "vendor": "amd",
            "gpu_type": gpu_type,
            "count": block.gpus,
            "memory_gb_per_gpu": memory,
        },
        "config": config,
        "compilation": compilation,
        "quant": quant,
        # AIM requires --trust-remote-code in every block: the imported recipe carries the
        # opt-in where a reviewer sees it. Other code-loading options are refused below.
        "allow_code_loading": [
            name
            for name in code_loading_settings(config, None, {})
            if name == "config.trust_remote_code"
        ],
        "lineage": {"rationale": f"imported from AIM recipe {path.name} ({block.name})"},
    }
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            ctx = err.get("ctx") or {}
            field = ctx.get("field") or ".".join(str(p) for p in err.get("loc", ()))
            message = str(ctx.get("message") or err.get("msg", "invalid value"))
            problems.add(f"vllm_serve.{block.name}", f"{field}: {message}")
        return None


# ---------------------------------------------------------------------- the file


def _top(doc: Mapping[Any, Any], problems: _Problems) -> dict[str, Any]:
    """The file's top-level keys, checked (raises RecipeError on the first failed stage)."""
    for key in _TOP_KEYS:
        if doc.get(key) in (None, ""):
            problems.add(key, "required key is missing")
    problems.raise_if_any()
    top: dict[str, Any] = {
        "recipe_id": str(doc["recipe_id"]),
        "huggingface_id": str(doc["huggingface_id"]),
        "precision": str(doc["precision"]).lower(),
        "hardware": str(doc["hardware"]).lower(),
        "vllm_serve": doc["vllm_serve"],
    }
    for key, allowed in (("precision", AIM_PRECISIONS), ("hardware", AIM_HARDWARE)):
        if top[key] not in allowed:
            problems.add(key, f"'{doc[key]}' is not one of {', '.join(allowed)}", _line(doc, key))
    problems.raise_if_any()
    bad_id = check_recipe_id(top["recipe_id"], top["hardware"], top["precision"])
    if bad_id:
        problems.add("recipe_id", bad_id, _line(doc, "recipe_id"))
    if not isinstance(top["vllm_serve"], Mapping):
        problems.add("vllm_serve", "must be a mapping of <N>_gpu blocks", _line(doc, "vllm_serve"))
    problems.raise_if_any()
    return top


def _enabled_blocks(serve: Mapping[Any, Any], problems: _Problems) -> Iterator[_Block]:
    """The enabled blocks with an args mapping; what is wrong with the others is recorded."""
    for block, body in serve.items():
        match = _BLOCK_RE.match(str(block))
        gpus = int(match.group(1)) if match else None
        line = _line(serve, block)
        if gpus is None or gpus not in AIM_GPU_COUNTS:
            counts = ", ".join(f"{n}_gpu" for n in AIM_GPU_COUNTS)
            problems.add(
                f"vllm_serve.{block}", f"not a supported GPU block: AIM supports {counts}", line
            )
            continue
        if not isinstance(body, Mapping):
            problems.add(f"vllm_serve.{block}", "must be a mapping", line)
            continue
        enabled = plain(body.get("enabled", True))
        if not isinstance(enabled, bool):
            problems.add(
                f"vllm_serve.{block}.enabled",
                f"must be true or false, not {enabled!r}",
                _line(body, "enabled"),
            )
            continue
        if not enabled:
            continue
        args = body.get("args")
        if not isinstance(args, Mapping):
            problems.add(
                f"vllm_serve.{block}.args",
                "missing or not a mapping of '--flag: \"value\"'",
                _line(body, "args") or line,
            )
            continue
        yield _Block(str(block), gpus, args, line)


def _check_values(
    recipes: list[Recipe], blocks: list[_Block], spec: VllmArgSpec, problems: _Problems
) -> None:
    """Values as vLLM's own parser sees them (type-only without vLLM), under the AIM key."""
    from pytest_forge.vllm_values import aim_flag_problems

    found = aim_flag_problems(recipes, [b.args for b in blocks], spec)
    for block, block_problems in zip(blocks, found, strict=True):
        for flag, message in block_problems:
            at = f".{flag}" if flag is not None else ""
            problems.add(f"{block.where}{at}", message, _line(block.args, flag))


def import_aim(path: str | os.PathLike[str], spec: VllmArgSpec | None = None) -> list[Recipe]:
    """One pytest-forge recipe per enabled ``vllm_serve.<N>_gpu`` block of an AIM recipe.

    Raises RecipeError naming the file, the block and the arg (with its line) for every
    problem found; `spec` defaults to this interpreter's vLLM arguments.
    """
    p = Path(path)
    doc = _load_yaml(p)
    if not isinstance(doc, Mapping):
        raise RecipeError(p, None, "an AIM recipe must be a YAML mapping")
    problems = _Problems(p)
    top = _top(doc, problems)
    if spec is None:
        from pytest_forge.vllm_args import load_arg_spec

        spec = load_arg_spec()

    recipes: list[Recipe] = []
    sources: list[_Block] = []  # the block each recipe came from
    ports: dict[str, Any] = {}
    for block in _enabled_blocks(top["vllm_serve"], problems):
        if "--port" in block.args:
            ports[block.name] = plain(block.args["--port"])
        recipe = _block_recipe(p, block, top, spec, problems)
        if recipe is not None:
            recipes.append(recipe)
            sources.append(block)
    if recipes:
        _check_values(recipes, sources, spec, problems)
    if len({str(v) for v in ports.values()}) > 1:
        listed = ", ".join(f"{b}: {v}" for b, v in ports.items())
        problems.add("vllm_serve", f"--port differs between blocks ({listed}); keep it consistent")
    problems.raise_if_any()
    if not recipes:
        raise RecipeError(p, "vllm_serve", "no enabled <N>_gpu block: nothing to import")
    return recipes


__all__ = [
    "AIM_DEFAULT_PORT",
    "AIM_GPU_COUNTS",
    "AIM_HARDWARE",
    "AIM_PRECISIONS",
    "AIM_REQUIRED_ARGS",
    "QUANTIZED_PRECISIONS",
    "RECIPE_ID_RE",
    "check_recipe_id",
    "convert_value",
    "flag_name",
    "import_aim",
]
