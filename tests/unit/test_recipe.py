"""Recipe: loading, error messages, round-trip saving, diff, hash, CLI mapping, changes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from pytest_forge.errors import RecipeError
from pytest_forge.recipe import Baseline, MeasuredWith, Recipe

FULL = """\
# Serving recipe for the chat gate. Hand-edited: keep these comments.
id: tiny-llama-cpu
model: forge:tiny-llama
hardware: {vendor: cpu, count: 1}
config:
  max_num_seqs: 256        # tuned 2026-11-01
  max_num_batched_tokens: 8192
  enable_prefix_caching: true
  enable_chunked_prefill: false
  kv_cache_dtype: auto
  enforce_eager: true
compilation: {mode: 3, cudagraph_mode: FULL_AND_PIECEWISE, max_cudagraph_capture_size: 256}
quant: {method: none, kv_cache_quant: none}
kernels: []
env:
  VLLM_CPU_KVCACHE_SPACE: 1   # GiB
  VLLM_FLAG: true
workloads:
  - chat
  - rag
# Gates decide pass/fail.
gates:
  accuracy_floor: 0.99
  throughput_tolerance: 0.05
  slo: {ttft_p99_ms: 500}
lineage: {generation: 3, parent_id: 12345678, rationale: "prefix caching: shared prompt"}
"""

MINIMAL = "id: mini\nmodel: m\nhardware: {vendor: cpu}\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def baseline(throughput: float = 3421.0) -> Baseline:
    return Baseline(
        output_throughput=throughput,
        ttft_p99_ms=187.0,
        accuracy=0.993,
        repeats=3,
        cv=0.012,
        measured_with=MeasuredWith(
            vllm="0.32.0",
            pytest_forge="0.1.0",
            hardware="2x cpu",
            backend="vllm",
            date="2026-11-22",
        ),
    )


# ------------------------------------------------------------------ loading


def test_load_full_recipe(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny-llama-cpu.yaml", FULL)
    r = Recipe.load(path)
    assert r.path == path
    assert r.hardware.vendor == "cpu" and r.hardware.count == 1
    assert r.config["max_num_seqs"] == 256
    assert r.compilation == {
        "mode": 3,
        "cudagraph_mode": "FULL_AND_PIECEWISE",
        "max_cudagraph_capture_size": 256,
    }
    # env values are strings for the server process; booleans as vLLM parses them.
    assert r.server_env() == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_FLAG": "1"}
    assert r.workloads == ["chat", "rag"]
    assert r.gates.slo.ttft_p99_ms == 500
    # An all-digit hash in YAML is an int; lineage keeps it as the string it means.
    assert r.lineage.parent_id == "12345678"
    assert r.baselines == {}


def test_minimal_recipe_defaults() -> None:
    r = Recipe.from_yaml_text(MINIMAL)
    assert r.path is None
    assert r.quant.method == "none" and r.config == {} and r.compilation is None
    assert r.gates.accuracy_floor is None and r.gates.slo.is_empty()
    assert r.vllm_cli_args() == []


def test_baseline_date_loads_as_string() -> None:
    text = MINIMAL + (
        "baselines:\n  chat:\n    output_throughput: 10\n    repeats: 1\n    cv: 0\n"
        "    measured_with: {vllm: 0.32.0, pytest_forge: 0.1.0, hardware: h, backend: vllm,"
        " date: 2026-11-22}\n"
    )
    b = Recipe.from_yaml_text(text).baselines["chat"]
    assert b.measured_with.date == "2026-11-22"
    assert b.output_throughput == 10.0


def test_accuracy_floor_above_one_is_allowed() -> None:
    r = Recipe.from_yaml_text(MINIMAL + "gates: {accuracy_floor: 1.5}\n")
    assert r.gates.accuracy_floor == 1.5


# ------------------------------------------------------------------ errors


def test_unknown_top_level_key_names_key_and_nearest(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "id: x\nmodle: m\nhardware: {vendor: cpu}\n")
    with pytest.raises(RecipeError) as exc:
        Recipe.load(path)
    assert exc.value.field == "modle"
    assert exc.value.path == path
    text = str(exc.value)
    assert text.startswith(f"{path}: modle: ")
    assert "nearest valid key: 'model'" in text
    assert "line 2" in text


def test_nested_unknown_key_suggests_from_its_own_model() -> None:
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(MINIMAL + "gates: {acuracy_floor: 0.9}\n", path="r/mini.yaml")
    assert exc.value.field == "gates.acuracy_floor"
    assert "nearest valid key: 'accuracy_floor'" in str(exc.value)


def test_bad_type_names_dotted_field_file_and_line(tmp_path: Path) -> None:
    text = "id: x\nmodel: m\nhardware:\n  vendor: cpu\n  count: many\n"
    path = write(tmp_path, "x.yaml", text)
    with pytest.raises(RecipeError) as exc:
        Recipe.load(path)
    assert exc.value.field == "hardware.count"
    assert str(path) in str(exc.value)
    assert "'many'" in str(exc.value) and "line 5" in str(exc.value)


def test_several_errors_in_one_message_first_in_field() -> None:
    text = "id: x\nmodel: m\nhardware: {vendor: cpu, count: 0}\ngates: {throughput_tolerance: 1}\n"
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(text)
    assert exc.value.field == "hardware.count"
    assert "gates.throughput_tolerance" in exc.value.message


def test_id_must_match_file_stem(tmp_path: Path) -> None:
    path = write(tmp_path, "other.yaml", MINIMAL)
    with pytest.raises(RecipeError) as exc:
        Recipe.load(path)
    assert exc.value.field == "id"
    assert "'mini'" in str(exc.value) and "other.yaml" in str(exc.value)


def test_id_pattern() -> None:
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(MINIMAL.replace("id: mini", "id: -mini"))
    assert exc.value.field == "id"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "id: x\nmodel: m\n  oops: 1\n")
    with pytest.raises(RecipeError) as exc:
        Recipe.load(path)
    assert str(path) in str(exc.value) and "line 3" in str(exc.value)


def test_non_mapping_document() -> None:
    with pytest.raises(RecipeError, match="mapping"):
        Recipe.from_yaml_text("- a\n- b\n")


@pytest.mark.parametrize("key", ["model", "host", "port", "served_model_name"])
def test_reserved_config_keys(key: str) -> None:
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(MINIMAL + f"config: {{{key}: x}}\n")
    assert exc.value.field == f"config.{key}"
    assert "pytest-forge" in exc.value.message


def test_quantization_conflicts() -> None:
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(MINIMAL + "quant: {method: awq}\nconfig: {quantization: fp8}\n")
    assert exc.value.field == "config.quantization"
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(
            MINIMAL + "quant: {kv_cache_quant: fp8}\nconfig: {kv_cache_dtype: auto}\n"
        )
    assert exc.value.field == "config.kv_cache_dtype"
    # Unset quant sections do not conflict with the plain config keys.
    r = Recipe.from_yaml_text(MINIMAL + "config: {quantization: fp8, kv_cache_dtype: fp8}\n")
    assert r.vllm_cli_args() == ["--quantization", "fp8", "--kv-cache-dtype", "fp8"]


def test_bad_env_value_is_not_echoed() -> None:
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(MINIMAL + "env:\n  HF_TOKEN: [hf_secret123]\n")
    assert exc.value.field == "env.HF_TOKEN"
    assert "hf_secret123" not in str(exc.value)


# ------------------------------------------------------------------ saving


def test_save_preserves_comments_and_key_order(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny-llama-cpu.yaml", FULL)
    r = Recipe.load(path)
    changed = r.with_changes({"config.max_num_seqs": 128, "config.enforce_eager": None})
    changed.with_baselines({"chat": baseline()}).save()

    text = path.read_text()
    for comment in (
        "# Serving recipe for the chat gate. Hand-edited: keep these comments.",
        "# tuned 2026-11-01",
        "# GiB",
        "# Gates decide pass/fail.",
    ):
        assert comment in text
    assert "max_num_seqs: 128" in text and "max_num_seqs: 256" not in text
    assert "enforce_eager" not in text
    # Flow-style mappings the user wrote stay flow style.
    assert "hardware: {vendor: cpu, count: 1}" in text
    # Unchanged values are written as the user wrote them, not re-typed.
    assert "VLLM_CPU_KVCACHE_SPACE: 1   # GiB" in text
    top = [ln.split(":")[0] for ln in text.splitlines() if ln[:1].isalpha()]
    assert top == [
        "id",
        "model",
        "hardware",
        "config",
        "compilation",
        "quant",
        "kernels",
        "env",
        "workloads",
        "gates",
        "lineage",
        "baselines",
    ]
    reloaded = Recipe.load(path)
    assert reloaded.config["max_num_seqs"] == 128
    assert reloaded.baselines["chat"] == baseline()
    assert "!!" not in text


@pytest.mark.parametrize(
    "text",
    [
        FULL,
        # Four-space mappings with unindented sequences.
        "id: four\nmodel: m\nhardware:\n    vendor: cpu\nconfig:\n    max_num_seqs: 4\n"
        "workloads:\n- chat\n",
    ],
)
def test_save_unchanged_is_byte_identical(tmp_path: Path, text: str) -> None:
    stem = Recipe.from_yaml_text(text).id
    path = write(tmp_path, f"{stem}.yaml", text)
    Recipe.load(path).save()
    assert path.read_text() == text


def test_save_removes_deleted_sections(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny-llama-cpu.yaml", FULL)
    r = Recipe.load(path)
    r = r.with_changes({f"compilation.{k}": None for k in r.compilation or {}})
    r = r.model_copy(update={"gates": r.gates.model_copy(update={"accuracy_floor": None})})
    r.save()
    text = path.read_text()
    assert "compilation" not in text and "accuracy_floor" not in text
    assert "throughput_tolerance: 0.05" in text
    assert Recipe.load(path).compilation is None


def test_save_fresh_file_order_and_plain_floats(tmp_path: Path) -> None:
    r = Recipe.from_yaml_text(FULL)
    # numpy floats (what the bench computes) must come out as plain YAML floats.
    r = r.with_baselines({"chat": baseline(np.float64(3421.5))})
    out = r.save(tmp_path / "tiny-llama-cpu.yaml")
    assert out == tmp_path / "tiny-llama-cpu.yaml" and r.path == out
    text = out.read_text()
    assert "!!" not in text and "numpy" not in text
    assert "output_throughput: 3421.5" in text
    top = [ln.split(":")[0] for ln in text.splitlines() if ln[:1].isalpha()]
    assert top == [
        "id",
        "model",
        "hardware",
        "config",
        "compilation",
        "env",
        "workloads",
        "gates",
        "lineage",
        "baselines",
    ]
    # Default/empty sections are left out of a fresh file.
    assert "kernels" not in text and "quant" not in text
    assert Recipe.load(out) == r


def test_minimal_fresh_file_omits_empty_sections(tmp_path: Path) -> None:
    r = Recipe.from_yaml_text(MINIMAL)
    text = r.save(tmp_path / "mini.yaml").read_text()
    assert text == "id: mini\nmodel: m\nhardware:\n  vendor: cpu\n"


def test_save_without_path_is_an_error() -> None:
    with pytest.raises(RecipeError, match="path"):
        Recipe.from_yaml_text(MINIMAL).save()


def test_atomic_save_leaves_no_temp_files_and_keeps_mode(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny-llama-cpu.yaml", FULL)
    path.chmod(0o640)
    Recipe.load(path).with_changes({"config.max_num_seqs": 1}).save()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama-cpu.yaml"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_failed_save_keeps_the_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "tiny-llama-cpu.yaml", FULL)
    r = Recipe.load(path).with_changes({"config.max_num_seqs": 1})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        r.save()
    assert path.read_text() == FULL
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama-cpu.yaml"]


# ------------------------------------------------------------------ diff and hash


def test_diff_over_serving_sections() -> None:
    a = Recipe.from_yaml_text(FULL)
    b = a.with_changes(
        {
            "config.max_num_seqs": 128,
            "config.enable_chunked_prefill": None,
            "compilation.mode": 0,
            "quant.kv_cache_quant": "fp8",
            "config.kv_cache_dtype": None,
            "env.NEW": "x",
        }
    ).with_baselines({"chat": baseline()})
    assert a.diff(b) == {
        "config.max_num_seqs": {"from": 256, "to": 128},
        "config.enable_chunked_prefill": {"from": False, "to": None},
        "config.kv_cache_dtype": {"from": "auto", "to": None},
        "compilation.mode": {"from": 3, "to": 0},
        "quant.kv_cache_quant": {"from": "none", "to": "fp8"},
        "env.NEW": {"from": None, "to": "x"},
    }
    assert a.diff(a) == {}
    other_model = a.model_copy(update={"model": "other"})
    assert a.diff(other_model) == {"model": {"from": "forge:tiny-llama", "to": "other"}}


def test_content_hash_stable_and_order_invariant() -> None:
    a = Recipe.from_yaml_text(MINIMAL + "config: {max_num_seqs: 8, enforce_eager: true}\n")
    b = Recipe.from_yaml_text(
        "hardware: {vendor: nvidia, count: 2}\nmodel: m\nid: other\n"
        "config: {enforce_eager: true, max_num_seqs: 8, block_size: null}\n"
        "gates: {accuracy_floor: 0.5}\nlineage: {generation: 4}\n"
    )
    assert len(a.content_hash) == 8 and int(a.content_hash, 16) >= 0
    # Same serving setup: id, hardware, gates, lineage and None args do not matter.
    assert a.content_hash == b.content_hash
    assert a.with_baselines({"chat": baseline()}).content_hash == a.content_hash
    assert a.with_changes({"config.max_num_seqs": 9}).content_hash != a.content_hash
    assert a.with_changes({"env.X": "1"}).content_hash != a.content_hash
    assert a.with_changes({"compilation.mode": 0}).content_hash != a.content_hash


# ------------------------------------------------------------------ CLI args


def test_vllm_cli_args_mapping() -> None:
    r = Recipe.from_yaml_text(
        MINIMAL
        + "config:\n"
        + "  max_num_seqs: 8\n  enforce_eager: true\n  enable_prefix_caching: false\n"
        + "  block_size: null\n  gpu_memory_utilization: 0.5\n"
        + "  cudagraph_capture_sizes: [1, 2, 4]\n"
        + "  hf_overrides: {rope_theta: 10000, nested: {a: 1}}\n"
        + "compilation: {mode: 3, cudagraph_mode: FULL_AND_PIECEWISE, compile_sizes: [1, 8]}\n"
        + "quant: {method: awq, kv_cache_quant: fp8}\n"
    )
    args = r.vllm_cli_args()
    assert args[:11] == [
        "--max-num-seqs",
        "8",
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--gpu-memory-utilization",
        "0.5",
        "--cudagraph-capture-sizes",
        "1",
        "2",
        "4",
        "--hf-overrides",
    ]
    assert json.loads(args[11]) == {"rope_theta": 10000, "nested": {"a": 1}}
    assert " " not in args[11]  # compact JSON
    assert "--block-size" not in args
    i = args.index("--compilation-config")
    assert json.loads(args[i + 1]) == {
        "mode": 3,
        "cudagraph_mode": "FULL_AND_PIECEWISE",
        "compile_sizes": [1, 8],
    }
    assert args[-4:] == ["--quantization", "awq", "--kv-cache-dtype", "fp8"]
    assert "m" not in args and "--model" not in args


@pytest.mark.parametrize("method", ["none", "auto", "bf16", "fp16"])
def test_non_quantization_methods_add_no_flag(method: str) -> None:
    r = Recipe.from_yaml_text(MINIMAL + f"quant: {{method: {method}, kv_cache_quant: auto}}\n")
    assert r.vllm_cli_args() == []


@pytest.mark.parametrize(("method", "hint"), [("int8", "compressed-tensors"), ("INT4", "gptq")])
def test_a_precision_is_not_a_quant_method(method: str, hint: str) -> None:
    # With no --quantization, vLLM would serve a plain checkpoint unquantized under that label.
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(MINIMAL + f"quant: {{method: {method}}}\n")
    assert exc.value.field == "quant.method"
    assert f"'{method}' is a precision, not a vLLM quantization method" in exc.value.message
    assert hint in exc.value.message and "'auto'" in exc.value.message
    r = Recipe.from_yaml_text(MINIMAL)
    with pytest.raises(RecipeError) as exc:
        r.with_changes({"quant.method": method})  # the tuner cannot write it back either
    assert exc.value.field == "quant.method"


def test_non_empty_kernels_section_is_refused_not_dropped() -> None:
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml_text(MINIMAL + "kernels: [{op: rms_norm, source: autokernel}]\n")
    assert exc.value.field == "kernels"
    assert "does not build or load custom kernels yet" in exc.value.message
    assert Recipe.from_yaml_text(MINIMAL + "kernels: []\n").kernels == []  # seeds/000


# ------------------------------------------------------------------ deriving


def test_with_changes_revalidates_and_carries_history(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny-llama-cpu.yaml", FULL)
    r = Recipe.load(path).with_baselines({"chat": baseline()})
    new = r.with_changes({"config.max_num_seqs": 64, "quant.method": "fp8"})
    assert new.config["max_num_seqs"] == 64 and r.config["max_num_seqs"] == 256
    assert new.quant.method == "fp8"
    assert new.baselines == r.baselines and new.lineage == r.lineage
    assert new.path == path
    with pytest.raises(RecipeError) as exc:
        r.with_changes({"config.port": 1})
    assert exc.value.field == "config.port" and exc.value.path == path
    with pytest.raises(RecipeError) as exc:
        r.with_changes({"gates.accuracy_floor": 0.1})
    assert exc.value.field == "gates.accuracy_floor"
    with pytest.raises(RecipeError) as exc:
        r.with_changes({"config.max_num_seqs": []})
    assert exc.value.field == "config.max_num_seqs"


def test_with_changes_conflict_is_detected() -> None:
    r = Recipe.from_yaml_text(MINIMAL + "config: {quantization: awq}\n")
    with pytest.raises(RecipeError) as exc:
        r.with_changes({"quant.method": "fp8"})
    assert exc.value.field == "config.quantization"
    assert r.with_changes({"quant.method": "fp8", "config.quantization": None}).vllm_cli_args() == [
        "--quantization",
        "fp8",
    ]


def test_with_baselines_merges_per_workload() -> None:
    r = Recipe.from_yaml_text(MINIMAL).with_baselines({"chat": baseline(1.0), "rag": baseline(2.0)})
    r2 = r.with_baselines({"rag": baseline(3.0)})
    assert r2.baselines["chat"].output_throughput == 1.0
    assert r2.baselines["rag"].output_throughput == 3.0
    assert r.baselines["rag"].output_throughput == 2.0
