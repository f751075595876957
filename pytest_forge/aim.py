"""AMD Inference Microservice (AIM) recipes in and out, and other ways to hand a recipe on.

An AIM recipe (seeds/003) describes one model on one AMD GPU type at one precision, with a
``vllm_serve.<N>_gpu.args`` block of ``--flag: "value"`` strings per GPU count. Importing
checks it the way the AIM guide's validation checklist does, validates every flag against
this vLLM's arguments, and yields one pytest-forge recipe per enabled block. Exporting goes
the other way, or to a ``vllm serve`` command line, or to a ``vllm serve --config`` file.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from pytest_forge.errors import ForgeError, RecipeError
from pytest_forge.gpu_models import normalise_gpu_name
from pytest_forge.recipe import NO_QUANTIZATION_FLAG, Recipe
from pytest_forge.serving_policy import code_loading_settings
from pytest_forge.yaml_io import YamlInputError, read_text
from pytest_forge.yaml_io import dump as dump_yaml
from pytest_forge.yaml_io import load as load_yaml

if TYPE_CHECKING:
    from pytest_forge.vllm_args import VllmArgSpec

ExportFormat = Literal["aim", "vllm-cmd", "vllm-config"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("aim", "vllm-cmd", "vllm-config")

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

# Flags pytest-forge sets itself when it boots vLLM: the model is the recipe's `model:`,
# the server binds 127.0.0.1 on a free port and names the model after the recipe.
_DROPPED = frozenset({"--model", "--port", "--host", "--served-model-name"})
# Quantized precisions become quant.method when the args carry no --quantization.
_QUANTIZED_PRECISIONS = frozenset({"fp8", "int8", "int4"})
# The precision a quant.method belongs to, by prefix, for exporting to AIM.
_PRECISION_OF_METHOD = (
    ("fp8", "fp8"),
    ("ptpc_fp8", "fp8"),
    ("int8", "int8"),
    ("w8a8", "int8"),
    ("int4", "int4"),
    ("awq", "int4"),
    ("gptq", "int4"),
)
_PRECISION_OF_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
_DTYPE_OF_PRECISION = {"bf16": "bfloat16", "fp16": "float16"}

_RECIPE_ID_RE = re.compile(
    r"^(?P<model>[a-z0-9][a-z0-9.]*(?:-[a-z0-9.]+)*)"
    r"-(?P<hardware>[a-z0-9]+)-(?P<precision>[a-z0-9]+)$"
)
_BLOCK_RE = re.compile(r"^(\d+)_gpu$")
_GPU_SUFFIX_RE = re.compile(r"-(\d+)gpu$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][+-]?\d+)$")
# Flags AIM recipes borrow from other servers whose vLLM name spells nothing alike, so
# difflib alone suggests something unrelated (--ubatch-size for --max-batch-size).
_AIM_SUCCESSORS = {"max_batch_size": "max_num_seqs"}
_NO_KV_QUANT = frozenset({"none", "auto"})
_NO_QUANT = frozenset({"none", "auto", "bf16", "fp16"})


# ============================================================================ import


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


def _plain_scalar(value: Any) -> Any:
    # ruamel's round-trip scalars subclass str/int/float; pydantic and == want plain ones.
    if isinstance(value, bool) or type(value).__name__ == "ScalarBoolean":
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def convert_value(raw: Any) -> Any:
    """An AIM arg value ("true", "8192", "0.9", '{"mode": 3}', "bfloat16") as a typed value."""
    value = _plain_scalar(raw)
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


def _check_recipe_id(recipe_id: str, hardware: str, precision: str) -> str | None:
    match = _RECIPE_ID_RE.match(recipe_id)
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


def _nearest_flag(snake: str, names: Iterable[str]) -> str | None:
    from pytest_forge.vllm_args import SUCCESSORS

    candidates = list(names)
    successor = _AIM_SUCCESSORS.get(snake) or SUCCESSORS.get(snake)
    if successor in candidates:
        return successor
    near = difflib.get_close_matches(snake, candidates, n=1)
    return near[0] if near else None


def _flag(snake: str) -> str:
    return "--" + snake.replace("_", "-")


def _check_args_known(
    args: Mapping[str, Any],
    where: str,
    spec: VllmArgSpec,
    problems: _Problems,
) -> None:
    for flag in args:
        snake = str(flag)[2:].replace("-", "_")
        if snake in spec.args:
            continue
        near = _nearest_flag(snake, spec.args)
        hint = f"nearest valid name: '{_flag(near)}'" if near else "no close match"
        problems.add(
            f"{where}.{flag}",
            f"'{flag}' is not an argument of vLLM {spec.version} ({spec.source}); {hint}",
            _line(args, flag),
        )


def _block_recipe(
    *,
    path: Path,
    block: str,
    gpus: int,
    args: Mapping[str, Any],
    top: Mapping[str, Any],
    spec: VllmArgSpec,
    problems: _Problems,
) -> Recipe | None:
    """One enabled block as a Recipe, or None after recording why it cannot be one."""
    where = f"vllm_serve.{block}.args"
    before = len(problems.items)
    for key in args:
        if not isinstance(key, str) or not key.startswith("--"):
            problems.add(
                f"{where}.{key}",
                "an AIM arg is a long option such as '--max-model-len'",
                _line(args, key),
            )
    missing = [flag for flag in AIM_REQUIRED_ARGS if flag not in args]
    if missing:
        problems.add(
            where, f"required args missing: {', '.join(missing)}", _line(top["vllm_serve"], block)
        )
    if len(problems.items) > before:
        return None
    _check_args_known(args, where, spec, problems)

    values = {flag: convert_value(raw) for flag, raw in args.items()}
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
            _line(top["vllm_serve"], block),
        )
    elif tp is not None and tp != gpus:
        problems.add(
            f"{where}.--tensor-parallel-size",
            f"'{args['--tensor-parallel-size']}' does not match the block's GPU count {gpus}",
            _line(args, "--tensor-parallel-size"),
        )
    if len(problems.items) > before:
        return None

    config: dict[str, Any] = {}
    compilation: dict[str, Any] | None = None
    quant = {"method": "none", "kv_cache_quant": "none"}
    for flag, value in values.items():
        if flag in _DROPPED:
            continue
        snake = flag[2:].replace("-", "_")
        if snake == "quantization":
            quant["method"] = str(value)
        elif snake == "kv_cache_dtype" and str(value) not in _NO_KV_QUANT:
            quant["kv_cache_quant"] = str(value)
        elif snake == "compilation_config" and isinstance(value, dict):
            compilation = value
            for key in value:
                if key not in spec.compilation_fields:
                    near = _nearest_flag(str(key), spec.compilation_fields)
                    problems.add(
                        f"{where}.{flag}",
                        f"'{key}' is not a CompilationConfig field of vLLM {spec.version}; "
                        + (f"nearest valid name: '{near}'" if near else "no close match"),
                        _line(args, flag),
                    )
        else:
            config[snake] = value
    precision = top["precision"]
    if quant["method"] == "none" and precision in _QUANTIZED_PRECISIONS:
        # The checkpoint is quantized and vLLM reads its scheme from its config (AMD's
        # FP8 checkpoints are quark): `--quantization fp8` would not match it, and int8 /
        # int4 are no vLLM methods at all. So the method is "auto" (no flag: what vLLM
        # does with such a checkpoint), and the recipe id keeps the AIM precision.
        quant["method"] = "auto"

    gpu_type, memory = AIM_HARDWARE[top["hardware"]]
    data = {
        "id": f"{top['recipe_id']}-{gpus}gpu",
        "model": model,
        "hardware": {
            "vendor": "amd",
            "gpu_type": gpu_type,
            "count": gpus,
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
        "lineage": {"rationale": f"imported from AIM recipe {path.name} ({block})"},
    }
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            ctx = err.get("ctx") or {}
            field = ctx.get("field") or ".".join(str(p) for p in err.get("loc", ()))
            message = str(ctx.get("message") or err.get("msg", "invalid value"))
            problems.add(f"vllm_serve.{block}", f"{field}: {message}")
        return None


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
    for key in ("recipe_id", "huggingface_id", "precision", "hardware", "vllm_serve"):
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
    if top["precision"] not in AIM_PRECISIONS:
        problems.add(
            "precision",
            f"'{doc['precision']}' is not one of {', '.join(AIM_PRECISIONS)}",
            _line(doc, "precision"),
        )
    if top["hardware"] not in AIM_HARDWARE:
        problems.add(
            "hardware",
            f"'{doc['hardware']}' is not one of {', '.join(AIM_HARDWARE)}",
            _line(doc, "hardware"),
        )
    problems.raise_if_any()
    bad_id = _check_recipe_id(top["recipe_id"], top["hardware"], top["precision"])
    if bad_id:
        problems.add("recipe_id", bad_id, _line(doc, "recipe_id"))
    serve = doc["vllm_serve"]
    if not isinstance(serve, Mapping):
        problems.add("vllm_serve", "must be a mapping of <N>_gpu blocks", _line(doc, "vllm_serve"))
    problems.raise_if_any()

    if spec is None:
        from pytest_forge.vllm_args import load_arg_spec

        spec = load_arg_spec()

    recipes: list[Recipe] = []
    sources: list[tuple[str, Mapping[Any, Any]]] = []  # each recipe's block and its args
    ports: dict[str, Any] = {}
    for block, body in serve.items():
        match = _BLOCK_RE.match(str(block))
        gpus = int(match.group(1)) if match else None
        if gpus not in AIM_GPU_COUNTS:
            counts = ", ".join(f"{n}_gpu" for n in AIM_GPU_COUNTS)
            problems.add(
                f"vllm_serve.{block}",
                f"not a supported GPU block: AIM supports {counts}",
                _line(serve, block),
            )
            continue
        assert gpus is not None
        if not isinstance(body, Mapping):
            problems.add(f"vllm_serve.{block}", "must be a mapping", _line(serve, block))
            continue
        enabled = _plain_scalar(body.get("enabled", True))
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
                _line(body, "args") or _line(serve, block),
            )
            continue
        if "--port" in args:
            ports[str(block)] = _plain_scalar(args["--port"])
        recipe = _block_recipe(
            path=p, block=str(block), gpus=gpus, args=args, top=top, spec=spec, problems=problems
        )
        if recipe is not None:
            recipes.append(recipe)
            sources.append((str(block), args))
    if recipes:
        # Values as vLLM's own parser sees them (type-only without vLLM), under the AIM key.
        from pytest_forge.vllm_values import aim_flag_problems

        found = aim_flag_problems(recipes, [a for _, a in sources], spec)
        for (name, args), block_problems in zip(sources, found, strict=True):
            for flag, message in block_problems:
                at = f".{flag}" if flag is not None else ""
                problems.add(f"vllm_serve.{name}.args{at}", message, _line(args, flag))
    if len({str(v) for v in ports.values()}) > 1:
        listed = ", ".join(f"{b}: {v}" for b, v in ports.items())
        problems.add("vllm_serve", f"--port differs between blocks ({listed}); keep it consistent")
    problems.raise_if_any()
    if not recipes:
        raise RecipeError(p, "vllm_serve", "no enabled <N>_gpu block: nothing to import")
    return recipes


# ============================================================================ export


def _aim_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        # No AIM form for these; JSON is what vLLM's JSON-typed args parse and what
        # import_aim() reads back.
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _aim_names(recipe: Recipe) -> tuple[str, str, str]:
    """(recipe_id, hardware, precision) of the AIM recipe a pytest-forge recipe belongs to."""
    # The model however spelled ("AMD Instinct MI300X OAM"), compared exactly (gpu_models).
    gpu = normalise_gpu_name(recipe.hardware.gpu_type or "").lower()
    hardware = gpu if gpu in AIM_HARDWARE else None
    if recipe.hardware.vendor != "amd" or hardware is None:
        raise RecipeError(
            recipe.path,
            "hardware",
            f"AIM recipes are for AMD {' / '.join(g for g, _ in AIM_HARDWARE.values())}; "
            f"this recipe is for {recipe.hardware.vendor}"
            + (f" {recipe.hardware.gpu_type}" if recipe.hardware.gpu_type else ""),
        )
    method = recipe.quant.method.lower()
    named = _RECIPE_ID_RE.match(_GPU_SUFFIX_RE.sub("", recipe.id))
    if method == "auto" and named and named["precision"] in _QUANTIZED_PRECISIONS:
        precision = named["precision"]  # a quantized checkpoint vLLM reads (see import)
    elif method in _NO_QUANT:
        dtype = str(recipe.config.get("dtype", "bfloat16")).lower()
        precision = _PRECISION_OF_DTYPE.get(dtype, "bf16" if method != "fp16" else "fp16")
    else:
        precision = next((p for prefix, p in _PRECISION_OF_METHOD if method.startswith(prefix)), "")
        if not precision:
            raise RecipeError(
                recipe.path,
                "quant.method",
                f"'{recipe.quant.method}' has no AIM precision ({', '.join(AIM_PRECISIONS)})",
            )
    recipe_id = _GPU_SUFFIX_RE.sub("", recipe.id)
    bad_id = _check_recipe_id(recipe_id, hardware, precision)
    if bad_id:
        # The guide's naming rule, as on import: an AIM file we would not read back is no use.
        raise RecipeError(
            recipe.path, "id", f"{bad_id}; rename the recipe to export it as an AIM recipe"
        )
    return recipe_id, hardware, precision


def _aim_args(recipe: Recipe, precision: str) -> dict[str, str]:
    config = {k: v for k, v in recipe.config.items() if v is not None}
    count = recipe.hardware.count
    tp = config.get("tensor_parallel_size")
    if tp is not None and tp != count:
        raise RecipeError(
            recipe.path,
            "config.tensor_parallel_size",
            f"{tp} does not match hardware.count {count}: an AIM <N>_gpu block needs them equal",
        )
    if "max_model_len" not in config:
        raise RecipeError(
            recipe.path,
            "config.max_model_len",
            "required by AIM (--max-model-len) and has no model-independent default: set it",
        )
    args: dict[str, str] = {
        "--model": recipe.model,
        "--dtype": str(config.pop("dtype", _DTYPE_OF_PRECISION.get(precision, "bfloat16"))),
    }
    if count > 1 or tp is not None:
        args["--tensor-parallel-size"] = str(config.pop("tensor_parallel_size", count))
    args["--max-model-len"] = _aim_value(config.pop("max_model_len"))
    # vLLM's own defaults, written out because AIM requires the args to be present.
    args["--gpu-memory-utilization"] = _aim_value(config.pop("gpu_memory_utilization", 0.9))
    args["--trust-remote-code"] = _aim_value(config.pop("trust_remote_code", False))
    args["--port"] = AIM_DEFAULT_PORT
    for key, value in config.items():
        args[_flag(key)] = _aim_value(value)
    if recipe.compilation:
        args["--compilation-config"] = _aim_value(recipe.compilation)
    if recipe.quant.method.lower() not in NO_QUANTIZATION_FLAG:
        args["--quantization"] = recipe.quant.method
    if recipe.quant.kv_cache_quant.lower() not in _NO_KV_QUANT:
        args["--kv-cache-dtype"] = recipe.quant.kv_cache_quant
    return args


def _dump_yaml(data: Any, header: list[str] | None = None) -> str:
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header or [])
    return lines + dump_yaml(data)


def _env_note(recipes: Iterable[Recipe], what: str) -> list[str]:
    # Names only: AIM cannot carry them, but whoever deploys it must know they are missing.
    names = sorted({name for r in recipes for name in r.env})
    if not names:
        return []
    return [f"{what} has no place for environment variables; the recipe sets: {', '.join(names)}"]


def export_aim(recipes: list[Recipe]) -> str:
    """An AIM recipe with one ``<N>_gpu`` block per recipe (same model, hardware, precision)."""
    if not recipes:
        raise ForgeError("export to AIM: no recipe given")
    names = [_aim_names(r) for r in recipes]
    recipe_id, hardware, precision = names[0]
    blocks: dict[str, Any] = {}
    for recipe, these in zip(recipes, names, strict=True):
        if these != names[0] or recipe.model != recipes[0].model:
            raise RecipeError(
                recipe.path,
                None,
                f"recipe '{recipe.id}' ({recipe.model}, {these[1]}, {these[2]}) cannot share an "
                f"AIM file with '{recipes[0].id}' ({recipes[0].model}, {hardware}, {precision})",
            )
        count = recipe.hardware.count
        if count not in AIM_GPU_COUNTS:
            raise RecipeError(
                recipe.path,
                "hardware.count",
                f"{count} GPUs: AIM supports {', '.join(map(str, AIM_GPU_COUNTS))}",
            )
        block = f"{count}_gpu"
        if block in blocks:
            raise RecipeError(recipe.path, "hardware.count", f"a second recipe for {block}")
        # Double-quoted like the AIM guide writes them: every arg value is a string.
        args = {k: DoubleQuotedScalarString(v) for k, v in _aim_args(recipe, precision).items()}
        blocks[block] = {"enabled": True, "args": args}
    gpu_type = AIM_HARDWARE[hardware][0]
    data = {
        "recipe_id": recipe_id,
        "huggingface_id": DoubleQuotedScalarString(recipes[0].model),
        "precision": DoubleQuotedScalarString(precision),
        "hardware": DoubleQuotedScalarString(hardware),
        "description": DoubleQuotedScalarString(
            f"{recipes[0].model} on {gpu_type} ({precision}), exported by pytest-forge"
        ),
        "vllm_serve": dict(sorted(blocks.items(), key=lambda kv: int(kv[0].split("_")[0]))),
    }
    header = [f"Exported by pytest-forge from {', '.join(r.id for r in recipes)}."]
    return _dump_yaml(data, header + _env_note(recipes, "AIM"))


def export_vllm_cmd(recipe: Recipe) -> str:
    """A shell-quoted ``vllm serve MODEL ...`` line, the recipe's env assignments first."""
    env = [f"{name}={shlex.quote(value)}" for name, value in recipe.server_env().items()]
    command = shlex.join(["vllm", "serve", recipe.model, *recipe.vllm_cli_args()])
    return " ".join([*env, command])


def vllm_config_data(recipe: Recipe) -> dict[str, Any]:
    """The mapping for ``vllm serve --config FILE``.

    vLLM's FlexibleArgumentParser.load_config_file turns each key into ``--<key>``: true
    becomes the flag, false its ``--no-`` form, a list the flag followed by its items and a
    mapping the flag with the mapping as JSON. So keys are the long option names without the
    leading dashes, a false boolean is written as ``no-<name>: true``, and the compilation
    section stays a nested mapping.
    """
    data: dict[str, Any] = {"model": recipe.model}
    for key, value in recipe.config.items():
        flag = key.replace("_", "-")
        if value is False:
            # `flag: false` only works when the parser reading the file owns --no-<flag>;
            # under `vllm serve --config` that is the top-level parser, which does not, so
            # vLLM 0.32 silently drops it. `no-flag: true` becomes --no-flag and holds.
            data[f"no-{flag}"] = True
        elif value is not None:
            data[flag] = value
    if recipe.compilation:
        data["compilation-config"] = dict(recipe.compilation)
    if recipe.quant.method.lower() not in NO_QUANTIZATION_FLAG:
        data["quantization"] = recipe.quant.method
    if recipe.quant.kv_cache_quant.lower() not in _NO_KV_QUANT:
        data["kv-cache-dtype"] = recipe.quant.kv_cache_quant
    return data


def export_vllm_config(recipe: Recipe) -> str:
    header = [f"vllm serve --config FILE for pytest-forge recipe {recipe.id}."]
    if recipe.env:
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in recipe.server_env().items())
        header.append(f"Run it with this environment: {assignments}")
    return _dump_yaml(vllm_config_data(recipe), header)


def export_recipe(recipe: Recipe, fmt: ExportFormat) -> str:
    """The recipe as an AIM recipe, a ``vllm serve`` command line or a vLLM config file."""
    if fmt == "aim":
        return export_aim([recipe])
    if fmt == "vllm-cmd":
        return export_vllm_cmd(recipe) + "\n"
    if fmt == "vllm-config":
        return export_vllm_config(recipe)
    raise ForgeError(f"unknown export format '{fmt}': use one of {', '.join(EXPORT_FORMATS)}")


__all__ = [
    "AIM_GPU_COUNTS",
    "AIM_HARDWARE",
    "AIM_PRECISIONS",
    "AIM_REQUIRED_ARGS",
    "EXPORT_FORMATS",
    "ExportFormat",
    "convert_value",
    "export_aim",
    "export_recipe",
    "export_vllm_cmd",
    "export_vllm_config",
    "import_aim",
    "vllm_config_data",
]
