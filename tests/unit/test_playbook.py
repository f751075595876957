"""The playbook: parsing, validation with line numbers, search spaces, hardware classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_forge.errors import ForgeError
from pytest_forge.hardware import GpuInfo, HostHardware
from pytest_forge.tune.hardware_classes import HARDWARE_CLASSES, classify_hardware, hardware_class
from pytest_forge.tune.playbook import (
    load_playbook,
    playbook_show,
    playbook_validate,
    validate_playbook,
)
from pytest_forge.tune.search_space import ParamSpec, SearchSpace


def _section(cls: str, body: str) -> str:
    return f"## Search space: {cls}\n\n```yaml\n{body}```\n\n"


_GOOD_BODY = """\
params:
  config.max_num_seqs:
    values: [16, 32]
    priority: 1
"""


def _playbook(**overrides: str) -> str:
    """A small valid playbook; ``overrides`` replaces a class's YAML body."""
    text = "# Test playbook\n\nSome heuristics.\n\n"
    for cls in HARDWARE_CLASSES:
        text += _section(cls, overrides.get(cls, _GOOD_BODY))
    return text


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "playbook.md"
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# ------------------------------------------------------------------ the bundled one


def test_bundled_playbook_validates_clean_and_covers_every_class() -> None:
    assert validate_playbook() == []
    playbook = load_playbook()
    assert set(playbook.spaces) == set(HARDWARE_CLASSES)
    assert "What to try first" in playbook.text
    for space in playbook.spaces.values():
        assert all(
            key.startswith(("config.", "compilation.", "quant.", "env.")) for key in space.params
        )


def test_bundled_cpu_space_is_small_and_has_no_quantization() -> None:
    cpu = load_playbook().spaces["CPU"]
    assert cpu.grid_size() <= 100
    assert len(list(cpu.iter_grid())) == cpu.grid_size()
    assert not any(key.startswith("quant.") for key in cpu.params)
    for key in (
        "config.max_num_seqs",
        "config.max_num_batched_tokens",
        "config.enable_prefix_caching",
        "config.enable_chunked_prefill",
        "config.enforce_eager",
    ):
        assert key in cpu.params
    # The tiny model's KV cache is never the bottleneck: searching its size wastes runs.
    assert "env.VLLM_CPU_KVCACHE_SPACE" not in cpu.params


def test_bundled_fp8_only_where_the_gate_allows_it() -> None:
    spaces = load_playbook().spaces
    for cls in ("H100", "MI300X"):
        assert "fp8" in spaces[cls].params["quant.method"].values
        assert "fp8" in spaces[cls].params["quant.kv_cache_quant"].values
    for cls in ("T4", "A10", "A100", "CPU"):
        values = [
            v
            for k, spec in spaces[cls].params.items()
            if k.startswith("quant.")
            for v in spec.values
        ]
        assert "fp8" not in values
    # Precision labels are refused by every recipe: the bundled spaces never offer them.
    for space in spaces.values():
        for key in ("quant.method", "config.quantization"):
            assert not {"int8", "int4"} & set(
                space.params[key].values if key in space.params else ()
            )


# ------------------------------------------------------------------ search space


def test_search_space_contains_is_type_aware() -> None:
    space = SearchSpace(
        params={
            "config.max_num_seqs": ParamSpec(values=[1, 16], priority=1),
            "config.enforce_eager": ParamSpec(values=[False, True], priority=2),
            "env.VLLM_CPU_KVCACHE_SPACE": ParamSpec(values=["1", "2"], priority=3),
        }
    )
    assert space.contains("config.max_num_seqs", 16)
    assert not space.contains("config.max_num_seqs", True)  # True == 1 in Python
    assert not space.contains("config.enforce_eager", 1)
    assert not space.contains("config.max_num_seqs", 17)
    assert not space.contains("config.block_size", 16)
    # Env values are strings in a recipe; an agent's 2 stands for "2".
    assert space.canonical("env.VLLM_CPU_KVCACHE_SPACE", 2) == "2"
    with pytest.raises(ValueError, match=r"allowed: \[1, 16\]"):
        space.canonical("config.max_num_seqs", 17)
    assert space.grid_size() == 8
    grid = list(space.iter_grid())
    assert len(grid) == 8 and len({tuple(p.values()) for p in grid}) == 8


def test_ordered_keys_follow_priority_then_file_order(tmp_path: Path) -> None:
    body = """\
params:
  env.B:
    values: ["0", "1"]
    priority: 2
  config.max_num_seqs:
    values: [8, 16]
    priority: 1
  env.A:
    values: ["0", "1"]
    priority: 2
"""
    path = _write(tmp_path, _playbook(CPU=body))
    space = load_playbook(path).spaces["CPU"]
    assert space.ordered_keys() == ["config.max_num_seqs", "env.B", "env.A"]


# ------------------------------------------------------------------ broken playbooks


def test_bad_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    body = "params:\n  config.max_num_seqs:\n    values: [16, 32\n    priority: 1\n"
    text = _playbook(A10=body)
    path = _write(tmp_path, text)
    problems = validate_playbook(path)
    assert len(problems) == 1
    assert "invalid YAML" in problems[0] and "A10" in problems[0]
    reported = int(problems[0].split(":")[1])
    heading = _line_of(text, "Search space: A10")
    # The error lies inside the A10 block, a few lines under its heading.
    assert heading < reported <= heading + 7
    with pytest.raises(ForgeError, match=rf"{path.name}:{reported}:"):
        load_playbook(path)


def test_unknown_namespace_and_empty_values_name_the_line(tmp_path: Path) -> None:
    body = """\
params:
  config.max_num_seqs:
    values: [16, 32]
    priority: 1
  swap_space:
    values: [4]
    priority: 2
  config.block_size:
    values: []
    priority: 3
"""
    text = _playbook(T4=body)
    problems = validate_playbook(_write(tmp_path, text))
    by_key = {p.split(": ")[-2]: p for p in problems}
    assert len(problems) == 2
    assert f":{_line_of(text, 'swap_space:')}:" in by_key["swap_space"]
    assert "unknown namespace" in by_key["swap_space"]
    assert f":{_line_of(text, 'config.block_size:')}:" in by_key["config.block_size"]
    assert "values is empty" in by_key["config.block_size"]


def test_fp8_on_a_class_that_cannot_run_it(tmp_path: Path) -> None:
    fp8 = _GOOD_BODY + "  quant.method:\n    values: [none, awq, fp8]\n    priority: 5\n"
    kv = _GOOD_BODY + "  quant.kv_cache_quant:\n    values: [none, fp8]\n    priority: 5\n"
    text = _playbook(T4=fp8, A100=kv, H100=fp8, MI300X=kv)
    problems = validate_playbook(_write(tmp_path, text))
    assert len(problems) == 2, problems
    assert any("T4" in p and "quant.method" in p and '"fp8"' in p for p in problems)
    assert any("A100" in p and "quant.kv_cache_quant" in p for p in problems)
    assert not any("H100 search" in p or "MI300X search" in p for p in problems)


def test_quantization_on_cpu_is_refused(tmp_path: Path) -> None:
    body = _GOOD_BODY + "  quant.method:\n    values: [none, awq]\n    priority: 5\n"
    problems = validate_playbook(_write(tmp_path, _playbook(CPU=body)))
    assert len(problems) == 1 and "no quantization on CPU" in problems[0]


@pytest.mark.parametrize("key", ["quant.method", "config.quantization"])
def test_a_precision_label_is_never_a_proposable_method(tmp_path: Path, key: str) -> None:
    # int8 passes no --quantization: the run would measure the unquantized model.
    body = _GOOD_BODY + f"  {key}:\n    values: [none, awq, int8]\n    priority: 5\n"
    problems = validate_playbook(_write(tmp_path, _playbook(H100=body)))
    assert len(problems) == 1, problems
    assert "H100" in problems[0] and key in problems[0]
    assert "'int8' is a precision, not a vLLM quantization method" in problems[0]


def test_config_quantization_fp8_is_gated_like_quant_method(tmp_path: Path) -> None:
    body = _GOOD_BODY + "  config.quantization:\n    values: [none, fp8]\n    priority: 5\n"
    problems = validate_playbook(_write(tmp_path, _playbook(A100=body)))
    assert len(problems) == 1 and "A100" in problems[0] and '"fp8"' in problems[0]


@pytest.mark.parametrize(
    ("key", "values", "expected"),
    [
        ("config.trust_remote_code", "[false, true]", "config.trust_remote_code runs"),
        ("config.middleware", "[my.mod.Mw]", "config.middleware imports"),
        ("config.distributed_executor_backend", "[mp, my.Exec]", "never searched by the tuner"),
        ("env.LD_PRELOAD", "[/tmp/evil.so]", "env.LD_PRELOAD loads a native library"),
        ("env.PYTHONPATH", "[/tmp]", "never searched by the tuner"),
        ("config.host", "[0.0.0.0]", "pytest-forge reserves --host"),
        ("config.Port", "[8000]", "pytest-forge reserves --port"),
        ("env.VLLM_HOST_IP", "[0.0.0.0]", "pytest-forge reserves it"),
        ("config.max_num_batched_tokens", "[8, --host]", "would reach vLLM as a flag"),
    ],
)
def test_a_custom_playbook_cannot_search_code_loading_or_reserved_args(
    tmp_path: Path, key: str, values: str, expected: str
) -> None:
    body = _GOOD_BODY + f"  {key}:\n    values: {values}\n    priority: 5\n"
    text = _playbook(CPU=body)
    path = _write(tmp_path, text)
    problems = validate_playbook(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{_line_of(text, f'  {key}:')}: CPU search space")
    assert expected in problems[0], problems[0]
    with pytest.raises(ForgeError, match="the playbook is invalid"):
        load_playbook(path)


def test_a_search_space_may_keep_code_loading_options_off(tmp_path: Path) -> None:
    body = _GOOD_BODY + "  config.trust_remote_code:\n    values: [false]\n    priority: 5\n"
    assert validate_playbook(_write(tmp_path, _playbook(CPU=body))) == []


def test_missing_classes_and_bad_fields(tmp_path: Path) -> None:
    text = _section("CPU", _GOOD_BODY) + _section(
        "H200",
        "params:\n  config.max_num_seqs:\n    values: [1]\n    priority: high\n    step: 2\n",
    )
    problems = validate_playbook(_write(tmp_path, text))
    assert any("priority" in p and "integer" in p for p in problems)
    assert any("step" in p and "unknown field" in p for p in problems)
    # H200 is the H100 class; the others are missing.
    missing = next(p for p in problems if "no search space for" in p)
    assert "T4, A10, A100, MI300X" in missing and "H100" not in missing


def test_unknown_class_and_unclosed_fence(tmp_path: Path) -> None:
    text = _playbook() + "## Search space: TPU\n\n```yaml\nparams: {}\n```\n"
    problems = validate_playbook(_write(tmp_path, text))
    assert len(problems) == 1 and "unknown hardware class 'TPU'" in problems[0]
    assert f":{_line_of(text, 'Search space: TPU')}:" in problems[0]

    text = _playbook().rstrip().removesuffix("```")
    problems = validate_playbook(_write(tmp_path, text))
    assert len(problems) == 1 and "never closed" in problems[0]
    assert f":{_line_of(text, 'Search space: CPU') + 2}:" in problems[0]


def test_a_playbook_for_one_class_still_loads(tmp_path: Path) -> None:
    playbook = load_playbook(_write(tmp_path, _section("CPU", _GOOD_BODY)))
    assert list(playbook.spaces) == ["CPU"]
    with pytest.raises(ForgeError, match="no '## Search space: T4' section"):
        playbook.search_space("T4")


# ------------------------------------------------------------------ CLI functions


def test_playbook_show_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = playbook_show(None)
    assert "What to try first" in shown
    assert "CPU: 5 parameters, 32 grid points" in shown

    assert playbook_validate(None) == 0
    assert "OK" in capsys.readouterr().out

    broken = _write(
        tmp_path, _playbook(CPU="params:\n  bogus.key:\n    values: [1]\n    priority: 1\n")
    )
    assert playbook_validate(broken) == 1
    out = capsys.readouterr().out
    assert "1 problem" in out and "bogus.key" in out and str(broken) in out


# ------------------------------------------------------------------ hardware classes


def _gpu_host(name: str, memory_gb: float, cc: str | None, vendor: str = "nvidia") -> HostHardware:
    return HostHardware(vendor, [GpuInfo(name, memory_gb, "550.54", cc)], "Xeon", 32)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "memory", "cc", "vendor", "expected"),
    [
        ("Tesla T4", 15.0, "7.5", "nvidia", "T4"),
        ("NVIDIA A10G", 22.5, "8.6", "nvidia", "A10"),
        ("NVIDIA A10", 22.5, "8.6", "nvidia", "A10"),
        ("NVIDIA A100-SXM4-80GB", 80.0, "8.0", "nvidia", "A100"),
        ("NVIDIA H100 80GB HBM3", 79.6, "9.0", "nvidia", "H100"),
        ("NVIDIA H200", 140.4, "9.0", "nvidia", "H100"),
        ("AMD Instinct MI300X", 192.0, "gfx942", "amd", "MI300X"),
    ],
)
def test_known_gpus_map_by_name(
    name: str, memory: float, cc: str, vendor: str, expected: str
) -> None:
    assert classify_hardware(_gpu_host(name, memory, cc, vendor)) == (expected, None)


def test_cpu_host_and_unknown_gpus(caplog: pytest.LogCaptureFixture) -> None:
    assert hardware_class(HostHardware("cpu", [], "EPYC", 2)) == "CPU"

    cls, note = classify_hardware(_gpu_host("NVIDIA L4", 22.5, "8.9"))
    assert cls == "A10"
    assert note is not None and "NVIDIA L4" in note and "nearest" in note
    assert hardware_class(_gpu_host("NVIDIA L40S", 45.0, "8.9")) in ("A10", "A100")
    assert "unknown GPU" in caplog.text
    # 80 GB is both A100 and H100: the compute capability breaks the tie.
    assert classify_hardware(_gpu_host("NVIDIA Future 80GB", 80.0, "9.0"))[0] == "H100"
    assert classify_hardware(_gpu_host("NVIDIA Other 80GB", 80.0, "8.0"))[0] == "A100"
    assert classify_hardware(_gpu_host("AMD Instinct MI250X", 64.0, "gfx90a", "amd"))[0] == "MI300X"
