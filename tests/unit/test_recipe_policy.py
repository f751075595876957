"""What a recipe may hand to vLLM (serving_policy) and the aevyra Forge seed format.

No config value may inject a flag, args pytest-forge sets are refused in every spelling,
and options or env vars that load code need the recipe's `allow_code_loading:` opt-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_forge.aim import import_aim
from pytest_forge.errors import RecipeError
from pytest_forge.recipe import Recipe
from pytest_forge.serving_policy import CODE_LOADING, RESERVED_CONFIG_KEYS
from pytest_forge.vllm_args import load_bundled_spec

HEAD = "id: x\nmodel: m\nhardware: {vendor: cpu}\n"

# seeds/000 (docs.aevyra.ai "Recipe" page), as written there.
AEVYRA = """\
model: meta-llama/Llama-3.2-1B-Instruct
hardware:
  vendor: nvidia
  gpu_type: Tesla T4
  count: 1
  memory_gb_per_gpu: 15
config:                          # Layer 1 — vLLM serving args
  max_num_seqs: 256
  max_num_batched_tokens: 8192
  block_size: 16
  gpu_memory_utilization: 0.9
  enable_prefix_caching: true
  enable_chunked_prefill: true
  swap_space: 4
  kv_cache_dtype: auto
  tensor_parallel_size: 1
  pipeline_parallel_size: 1
quant:                           # Layer 2 — quantization (v0: defaults only)
  method: bf16
  kv_cache_quant: none
kernels: []                      # Layer 3 — custom kernels (v0: empty)
generation: 3
parent_id: a1b2c3d4
id: e5f6a7b8
"""


def refused(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(HEAD + text)
    return exc.value


# ------------------------------------------------------------------ seed 000 format


def test_aevyra_recipe_loads_as_written_and_saves_as_lineage(tmp_path: Path) -> None:
    path = tmp_path / "e5f6a7b8.yaml"
    path.write_text(AEVYRA, encoding="utf-8")
    recipe = Recipe.load(path)
    assert (recipe.lineage.generation, recipe.lineage.parent_id) == (3, "a1b2c3d4")
    assert recipe.config["max_num_seqs"] == 256 and recipe.quant.method == "bf16"

    recipe.save()
    text = path.read_text(encoding="utf-8")
    assert "lineage:" in text and "\ngeneration:" not in text and "\nparent_id:" not in text
    assert "# Layer 1 — vLLM serving args" in text  # the user's comments survive
    assert Recipe.load(path).lineage == recipe.lineage


def test_lineage_in_both_places_is_refused_with_its_line() -> None:
    err = refused("generation: 3\nlineage: {generation: 4}\n")
    assert err.field == "generation" and "(line 4)" in err.message
    assert "keep one" in err.message


# ------------------------------------------------------------------ argv injection


def test_list_value_cannot_inject_flags() -> None:
    err = refused(
        'config:\n  middleware: ["my.mod.Mw", "--host", "0.0.0.0", "--port", "8000",'
        ' "--trust-remote-code"]\nallow_code_loading: [config.middleware]\n'
    )
    assert err.field == "config.middleware"
    assert "item [1]" in err.message and "'--host'" in err.message and "(line 5)" in err.message


@pytest.mark.parametrize("value", ["-p", "--host", "--port=1", "-O3", "- x"])
def test_scalar_value_cannot_start_a_flag(value: str) -> None:
    err = refused(f"config: {{served_model_name_x: {value!r}}}\n")
    assert err.field == "config.served_model_name_x" and "flag" in err.message


def test_negative_numbers_stay_values() -> None:
    recipe = Recipe.from_yaml_text(HEAD + 'config: {seed: -1, xa: "-0.5", xb: ["-1e3", -2]}\n')
    assert recipe.vllm_cli_args() == ["--seed", "-1", "--xa", "-0.5", "--xb", "-1e3", "-2"]


def test_argv_is_checked_again_when_validation_was_skipped() -> None:
    # model_construct/model_copy skip validators: vllm_cli_args still refuses.
    recipe = Recipe.from_yaml_text(HEAD).model_copy(update={"config": {"x": ["a", "--host"]}})
    with pytest.raises(RecipeError, match="item \\[1\\]"):
        recipe.vllm_cli_args()


# ------------------------------------------------------------------ reserved args


@pytest.mark.parametrize(
    "key",
    [
        "host",
        "--host",
        "Host",
        "HOST",
        "host=0.0.0.0",
        "host.x",
        "hos",  # argparse would expand --hos to --host
        "port",
        "-port",
        "served-model-name",
        "Served_Model_Name",
        "api-key",
        "uds",
        "ssl_keyfile",
        "ssl-certfile",
        "grpc_port",
        "config",
        "hf_token",
    ],
)
def test_reserved_args_are_refused_in_every_spelling(key: str) -> None:
    err = refused(f'config: {{"{key}": "0.0.0.0"}}\n')
    assert err.field == f"config.{key}"
    assert "pytest-forge reserves" in err.message or "expands to --host" in err.message


def test_keys_that_are_not_arg_names_are_refused() -> None:
    err = refused('config: {"max num seqs": 4}\n')
    assert "not an argument name" in err.message


def test_known_args_that_prefix_a_protected_one_stay_legal() -> None:
    # reasoning_parser is a vLLM arg of its own, not an abbreviation of reasoning_parser_plugin.
    recipe = Recipe.from_yaml_text(HEAD + "config: {reasoning_parser: qwen3, model_impl: auto}\n")
    assert recipe.vllm_cli_args()[:2] == ["--reasoning-parser", "qwen3"]


@pytest.mark.parametrize("name", ["VLLM_API_KEY", "VLLM_HOST_IP", "vllm_loopback_ip"])
def test_reserved_env_is_refused(name: str) -> None:
    err = refused(f"env: {{{name}: 0.0.0.0}}\n")
    assert err.field == f"env.{name}" and "pytest-forge reserves it" in err.message
    assert "0.0.0.0" not in err.message  # env values are never echoed


def test_every_reserved_arg_is_one_vllm_knows_or_its_config_file() -> None:
    known = set(load_bundled_spec().args)
    assert set(RESERVED_CONFIG_KEYS) - known == {"config"}
    assert {d.split(".", 1)[1] for d in CODE_LOADING if d.startswith("config.")} <= known


# ------------------------------------------------------------------ code loading


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("config: {trust_remote_code: true}\n", "config.trust_remote_code"),
        ("config: {middleware: [my.mod.Mw]}\n", "config.middleware"),
        ("config: {worker_extension_cls: my.Ext}\n", "config.worker_extension_cls"),
        ("config: {tool_parser_plugin: /tmp/p.py}\n", "config.tool_parser_plugin"),
        (
            "config: {distributed_executor_backend: my.Exec}\n",
            "config.distributed_executor_backend",
        ),
        ("compilation: {backend: my.backend}\n", "compilation.backend"),
        ("env: {LD_PRELOAD: /tmp/evil.so}\n", "env.LD_PRELOAD"),
        ("env: {PYTHONPATH: /tmp}\n", "env.PYTHONPATH"),
        ("env: {VLLM_PLUGINS: evil}\n", "env.VLLM_PLUGINS"),
    ],
)
def test_code_loading_needs_the_recipe_opt_in(text: str, name: str) -> None:
    err = refused(text)
    assert err.field == name and f"allow_code_loading: [{name}]" in err.message
    recipe = Recipe.from_yaml_text(HEAD + text + f"allow_code_loading: [{name}]\n")
    assert recipe.allow_code_loading == [name]


def test_settings_that_load_nothing_need_no_opt_in() -> None:
    recipe = Recipe.from_yaml_text(
        HEAD
        + "config: {trust_remote_code: false, distributed_executor_backend: mp}\n"
        + "compilation: {backend: inductor}\n"
    )
    assert "--no-trust-remote-code" in recipe.vllm_cli_args()


def test_opt_in_must_name_a_code_loading_option() -> None:
    err = refused("allow_code_loading: [config.max_num_seqs]\n")
    assert err.field == "allow_code_loading[0]" and "not an option that loads code" in err.message


def test_opt_in_does_not_change_the_serving_hash() -> None:
    a = Recipe.from_yaml_text(HEAD)
    b = Recipe.from_yaml_text(HEAD + "allow_code_loading: [config.trust_remote_code]\n")
    assert a.content_hash == b.content_hash


def test_tuner_changes_cannot_add_code_loading() -> None:
    recipe = Recipe.from_yaml_text(HEAD)
    with pytest.raises(RecipeError) as exc:
        recipe.with_changes({"env.LD_PRELOAD": "/tmp/x.so"})
    assert exc.value.field == "env.LD_PRELOAD"


def test_aim_import_carries_its_trust_remote_code_as_an_opt_in(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[1] / "data" / "aim"
    recipes = import_aim(source / "standard-model-mi300x-bf16.yaml", load_bundled_spec())
    for recipe in recipes:
        assert recipe.config["trust_remote_code"] is True
        assert recipe.allow_code_loading == ["config.trust_remote_code"]
        target = tmp_path / f"{recipe.id}.yaml"
        target.write_text(recipe.to_yaml_text(), encoding="utf-8")
        assert Recipe.load(target).allow_code_loading == ["config.trust_remote_code"]


def test_aim_import_refuses_other_code_loading_options(tmp_path: Path) -> None:
    source = tmp_path / "m-mi300x-bf16.yaml"
    source.write_text(
        "recipe_id: m-mi300x-bf16\nhuggingface_id: Org/M\nprecision: bf16\nhardware: mi300x\n"
        "vllm_serve:\n  1_gpu:\n    enabled: true\n    args:\n      --model: Org/M\n"
        "      --dtype: bfloat16\n      --max-model-len: '4096'\n"
        "      --gpu-memory-utilization: '0.9'\n      --trust-remote-code: 'true'\n"
        "      --port: '8000'\n      --middleware: my.mod.Mw\n"
    )
    with pytest.raises(RecipeError) as exc:
        import_aim(source, load_bundled_spec())
    assert "vllm_serve.1_gpu" in str(exc.value)
    assert "allow_code_loading: [config.middleware]" in str(exc.value)
