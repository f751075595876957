"""Hardware detection with fake smi tools on PATH, recipe matching and quant gates."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_forge import hardware
from pytest_forge.errors import ForgeError
from pytest_forge.hardware import (
    GpuInfo,
    HostHardware,
    backend_name,
    comparable_hardware,
    detect_hardware,
    match_recipe_hardware,
    normalise_gpu_name,
    quant_supported,
    quant_unsupported_reason,
    recipe_quant_problem,
)

NVIDIA_ARGS = (
    "--query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader,nounits"
)
ROCM_ARGS = "--showproductname --showmeminfo vram --showdriverversion --json"
H100 = "NVIDIA H100 80GB HBM3, 81559, 550.54.15, 9.0"
A100 = "NVIDIA A100-SXM4-40GB, 40960, 535.104.05, 8.0"
MI300X_CARD = {
    "Card Series": "AMD Instinct MI300X OAM",
    "Card Model": "0x74a1",
    "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
    "Card SKU": "M3000100",
    "GFX Version": "gfx942",
    "VRAM Total Memory (B)": "206141652992",
    "VRAM Total Used Memory (B)": "285212672",
}


@pytest.fixture
def smi_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    detect_hardware.cache_clear()
    yield bin_dir
    detect_hardware.cache_clear()


def write_smi(bin_dir: Path, name: str, expected_args: str, output: str, code: int = 0) -> None:
    """A fake tool that only answers the exact query pytest-forge is meant to send."""
    script = bin_dir / name
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$*" = {shlex.quote(expected_args)} ] || {{ echo "bad args: $*" >&2; exit 64; }}\n'
        f"printf '%s\\n' {shlex.quote(output)}\n"
        f"exit {code}\n"
    )
    script.chmod(0o755)


def test_one_nvidia_gpu(smi_dir: Path) -> None:
    write_smi(smi_dir, "nvidia-smi", NVIDIA_ARGS, H100)
    host = detect_hardware()
    assert host.vendor == "nvidia"
    assert host.gpus == [GpuInfo("NVIDIA H100 80GB HBM3", 79.6, "550.54.15", "9.0")]
    assert (host.gpu_type, host.count) == ("NVIDIA H100 80GB HBM3", 1)
    assert host.describe() == "NVIDIA H100 80GB HBM3 x1 (driver 550.54.15, sm 9.0)"
    assert backend_name(host) == "cuda"
    assert detect_hardware() is host  # memoized


def test_two_nvidia_gpus_and_visible_subset(smi_dir: Path, monkeypatch) -> None:
    write_smi(smi_dir, "nvidia-smi", NVIDIA_ARGS, f"{A100}\n{H100}")
    assert detect_hardware().count == 2
    assert "x1" in detect_hardware().describe() and "; " in detect_hardware().describe()

    detect_hardware.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    host = detect_hardware()
    assert [g.name for g in host.gpus] == ["NVIDIA H100 80GB HBM3"]

    # The runtime stops at the first invalid index.
    detect_hardware.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,7,1")
    assert [g.name for g in detect_hardware().gpus] == ["NVIDIA A100-SXM4-40GB"]

    # UUIDs cannot be mapped by this query, but each one is one visible device.
    detect_hardware.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f6a2c1e-0000-0000-0000-000000000000")
    assert detect_hardware().count == 1


def test_no_visible_cuda_device_falls_back_to_cpu(smi_dir: Path, monkeypatch) -> None:
    write_smi(smi_dir, "nvidia-smi", NVIDIA_ARGS, H100)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_hardware().vendor == "cpu"


def test_failing_nvidia_smi_falls_through_to_cpu(smi_dir: Path) -> None:
    write_smi(
        smi_dir,
        "nvidia-smi",
        NVIDIA_ARGS,
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        code=9,
    )
    host = detect_hardware()
    assert host.vendor == "cpu" and host.gpus == [] and host.count == 0
    assert host.cpu_count >= 1 and host.cpu_model
    assert host.describe().startswith(f"cpu: {host.cpu_model} ({host.cpu_count} cores")
    assert backend_name(host) == "cpu"


def test_cpu_isa_is_part_of_the_cpu_identity() -> None:
    genoa = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl\n"
    milan = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    graviton = "processor\t: 0\nFeatures\t: fp asimd sve\n"
    assert hardware.cpu_isa(genoa) == "avx512_bf16"
    assert hardware.cpu_isa(milan) == "avx2"
    assert hardware.cpu_isa(graviton) == "sve"
    assert hardware.cpu_isa("processor\t: 0\n") == ""
    a = HostHardware("cpu", [], "AMD EPYC", 2, "avx512_bf16")
    b = HostHardware("cpu", [], "AMD EPYC", 2, "avx2")
    assert a.describe() == "cpu: AMD EPYC (2 cores, avx512_bf16)"
    assert a.describe() != b.describe()  # baselines from one are skipped on the other
    assert HostHardware("cpu", [], "AMD EPYC", 2).describe() == "cpu: AMD EPYC (2 cores)"


def test_hanging_smi_times_out_and_falls_through(smi_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(hardware, "SMI_TIMEOUT_S", 0.3)
    script = smi_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    assert detect_hardware().vendor == "cpu"


def test_rocm_smi_two_mi300x_with_noise(smi_dir: Path, monkeypatch) -> None:
    payload = {
        "card0": MI300X_CARD,
        "card1": MI300X_CARD,
        "system": {"Driver version": "6.7.0"},
    }
    noise = "WARNING: AMD GPU device(s) is/are in a low-power state.\n"
    write_smi(smi_dir, "rocm-smi", ROCM_ARGS, noise + json.dumps(payload))
    host = detect_hardware()
    assert host.vendor == "amd" and host.count == 2
    assert host.gpus[0] == GpuInfo("AMD Instinct MI300X OAM", 192.0, "6.7.0", "gfx942")
    assert host.describe() == "AMD Instinct MI300X OAM x2 (driver 6.7.0, gfx942)"
    assert backend_name(host) == "rocm"

    detect_hardware.cache_clear()
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "1")
    assert detect_hardware().count == 1


def test_rocm_smi_old_key_spelling_infers_gfx(smi_dir: Path) -> None:
    card = {"Card series": "AMD Instinct MI300X", "VRAM Total Memory (B)": "206158430208"}
    write_smi(smi_dir, "rocm-smi", ROCM_ARGS, json.dumps({"card0": card}))
    host = detect_hardware()
    assert host.gpus == [GpuInfo("AMD Instinct MI300X", 192.0, None, "gfx942")]


def test_rocm_smi_garbage_falls_through_to_cpu(smi_dir: Path) -> None:
    write_smi(smi_dir, "rocm-smi", ROCM_ARGS, "ERROR: no ROCm devices {not json")
    assert detect_hardware().vendor == "cpu"


H100_HOST = HostHardware("nvidia", [GpuInfo("NVIDIA H100 80GB HBM3", 79.6, "550", "9.0")] * 2)
CPU_HOST = HostHardware("cpu", [], "AMD EPYC", 2)


@pytest.mark.parametrize(
    ("recipe_hw", "host", "reason"),
    [
        ({"vendor": "nvidia", "gpu_type": "H100", "count": 1}, H100_HOST, None),
        ({"vendor": "nvidia", "gpu_type": "nvidia h100 80gb hbm3", "count": 2}, H100_HOST, None),
        # The host's name inside the recipe's longer one also counts.
        (
            {"vendor": "nvidia", "gpu_type": "NVIDIA H100 80GB HBM3 SXM5", "count": 1},
            H100_HOST,
            None,
        ),
        ({"vendor": "nvidia", "gpu_type": None, "count": 1}, H100_HOST, None),
        ({"vendor": "cpu", "gpu_type": None, "count": 0}, CPU_HOST, None),
        ({"vendor": "nvidia", "gpu_type": "A100", "count": 1}, H100_HOST, "gpu_type 'A100'"),
        ({"vendor": "nvidia", "gpu_type": "H100", "count": 4}, H100_HOST, "wants 4 'H100' GPUs"),
        ({"vendor": "amd", "gpu_type": "MI300X", "count": 1}, H100_HOST, "vendor amd"),
        ({"vendor": "nvidia", "gpu_type": "H100", "count": 1}, CPU_HOST, "this host is cpu"),
        ({"vendor": "cpu", "gpu_type": None, "count": 0}, H100_HOST, "vendor cpu"),
    ],
)
def test_match_recipe_hardware(recipe_hw, host, reason) -> None:
    found = match_recipe_hardware(SimpleNamespace(**recipe_hw), host)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found
    assert match_recipe_hardware(recipe_hw, host) == found  # a plain dict works too


@pytest.mark.parametrize(
    ("gpu", "cc", "awq", "int8", "fp8"),
    [
        ("Tesla T4", "7.5", True, True, False),
        ("NVIDIA A100-SXM4-80GB", "8.0", True, True, False),
        ("NVIDIA H100 80GB HBM3", "9.0", True, True, True),
        ("NVIDIA H200", None, True, True, True),  # capability inferred from the name
        # Ada (SM 8.9): FP8 W8A8 per vLLM's support matrix, from the table alone.
        ("NVIDIA L40S", None, True, True, True),
        ("NVIDIA L4", None, True, True, True),
        ("L40", None, True, True, True),
        ("NVIDIA A10", None, True, True, False),  # SM 8.6, known without nvidia-smi
        ("NVIDIA A10G", None, True, True, False),
        ("A100", None, True, True, False),
        ("AMD Instinct MI300X", "gfx942", True, True, True),
        ("AMD Instinct MI250X", "gfx90a", False, False, False),  # not in the table
        ("Tesla V100", "7.0", False, False, False),
    ],
)
def test_quant_gates(gpu, cc, awq, int8, fp8) -> None:
    assert quant_supported(gpu, cc, "awq") is awq
    assert quant_supported(gpu, cc, "int8") is int8
    assert quant_supported(gpu, cc, "fp8") is fp8
    assert quant_supported(gpu, cc, "none") is True


def test_quant_gates_from_host_and_cpu() -> None:
    assert quant_supported(H100_HOST, None, "fp8_e4m3")
    a100 = HostHardware("nvidia", [GpuInfo("NVIDIA A100", 80.0, "535", "8.0")])
    assert "SM >= 9" in (quant_unsupported_reason(a100, None, "fp8") or "")
    assert "8.9 (Ada Lovelace)" in (quant_unsupported_reason(a100, None, "fp8") or "")
    for method in ("awq", "int8", "fp8"):
        reason = quant_unsupported_reason(CPU_HOST, None, method)
        assert reason is not None and "needs a GPU" in reason
        assert not quant_supported("cpu", None, method)
    # Methods outside the table's families are not gated (vLLM checks the name).
    assert quant_unsupported_reason(H100_HOST, None, "compressed-tensors") is None
    # vLLM's variants are gated by the family their name says.
    assert "SM >= 9" in (quant_unsupported_reason(a100, None, "fp8_per_tensor") or "")
    assert quant_supported(a100, None, "gptq_marlin")
    assert not quant_supported(CPU_HOST, None, "int8_per_channel_weight_only")


def test_comparable_hardware_ignores_driver_and_gpu_count() -> None:
    a = "NVIDIA H100 80GB HBM3 x8 (driver 550.54, sm 9.0)"
    b = "NVIDIA H100 80GB HBM3 x1 (driver 560.28, sm 9.0)"
    assert comparable_hardware(a) == comparable_hardware(b) == "NVIDIA H100 80GB HBM3 (sm 9.0)"
    assert comparable_hardware(a) != comparable_hardware("NVIDIA A100 x8 (driver 550.54, sm 8.0)")
    cpu = "cpu: AMD EPYC (2 cores, avx512_bf16)"
    assert comparable_hardware(cpu) == cpu
    assert comparable_hardware(cpu) != comparable_hardware("cpu: AMD EPYC (2 cores, avx2)")


# -- pytest-xdist: one GPU share per worker ---------------------------------------------


def _device_env(monkeypatch: pytest.MonkeyPatch, worker: str, workers: int, count: int):
    from pytest_forge.recipe import Recipe
    from pytest_forge.session import ForgeConfig, ForgeSession

    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    recipe = Recipe.from_yaml_text(
        f"id: r\nmodel: m\nhardware: {{vendor: nvidia, gpu_type: H100, count: {count}}}\n"
    )
    session = ForgeSession(ForgeConfig(Path("r"), Path("w"), Path("f")))
    return session.device_env(recipe)


def test_xdist_workers_get_disjoint_gpu_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 GPUs, 2 workers: gw0 owns 0,1 and gw1 owns 2,3, whatever each recipe's count.
    assert _device_env(monkeypatch, "gw0", 2, 2) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert _device_env(monkeypatch, "gw1", 2, 1) == {"CUDA_VISIBLE_DEVICES": "2"}
    assert _device_env(monkeypatch, "gw1", 2, 2) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert _device_env(monkeypatch, "gw3", 4, 1) == {"CUDA_VISIBLE_DEVICES": "3"}
    with pytest.raises(ForgeError, match="give each 1: run fewer workers"):
        _device_env(monkeypatch, "gw0", 4, 2)


# -- GPU identity: exact models, compute capability --------------------------------------


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 NVL", "H100"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 ADA"),
        ("Quadro RTX 6000", "RTX 6000"),  # Turing, not the Ada card
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "A100"),
        ("GRID A100-40C", "A100"),  # a vGPU profile
        ("AMD Instinct MI300X OAM", "MI300X"),
        ("l40s", "L40S"),
    ],
)
def test_gpu_names_normalise_to_their_model(name: str, model: str) -> None:
    assert normalise_gpu_name(name) == model


@pytest.mark.parametrize(
    ("wanted", "host_gpu"),
    [
        ("A10", "NVIDIA A100-SXM4-80GB"),
        ("A100", "NVIDIA A10"),
        ("A10", "NVIDIA A10G"),
        ("L4", "NVIDIA L40S"),
        ("L40", "NVIDIA L40S"),
        ("L40S", "NVIDIA L40"),
        ("H100", "NVIDIA H200"),
        ("H20", "NVIDIA H200"),
        ("T4", "NVIDIA T400"),
        ("MI300", "AMD Instinct MI300X"),
    ],
)
def test_gpu_type_never_matches_another_model_by_substring(wanted: str, host_gpu: str) -> None:
    host = HostHardware("nvidia", [GpuInfo(host_gpu, 24.0, "550", None)])
    reason = match_recipe_hardware({"vendor": None, "gpu_type": wanted, "count": 1}, host)
    assert reason is not None and f"gpu_type {wanted!r}" in reason
    assert f"({normalise_gpu_name(host_gpu)})" in reason  # the model compared, not the text


@pytest.mark.parametrize(
    ("wanted", "host_gpu"),
    [
        ("A10", "NVIDIA A10"),
        ("L4", "NVIDIA L4"),
        ("L40S", "NVIDIA L40S"),
        ("A100", "NVIDIA A100-PCIE-40GB"),
        ("H100 80GB HBM3", "NVIDIA H100 PCIe"),
        ("T4", "Tesla T4"),
        ("MI300X", "AMD Instinct MI300X VF"),
    ],
)
def test_gpu_type_matches_the_same_model_however_spelled(wanted: str, host_gpu: str) -> None:
    host = HostHardware("nvidia", [GpuInfo(host_gpu, 24.0, "550", None)])
    assert match_recipe_hardware({"gpu_type": wanted, "count": 1}, host) is None


def test_reported_compute_capability_wins_over_the_name() -> None:
    # A GPU the table does not know is gated by what nvidia-smi reported.
    new = HostHardware("nvidia", [GpuInfo("NVIDIA Future GPU", 96.0, "600", "8.9")])
    assert quant_supported(new, None, "fp8")
    old = HostHardware("nvidia", [GpuInfo("NVIDIA Future GPU", 96.0, "600", "8.6")])
    assert "is SM 8.6" in (quant_unsupported_reason(old, None, "fp8") or "")
    unknown = quant_unsupported_reason("NVIDIA Future GPU", None, "awq") or ""
    assert "unknown compute capability" in unknown and "'FUTURE GPU'" in unknown


NVIDIA_LEGACY_ARGS = "--query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits"


def test_driver_without_compute_cap_field_is_still_nvidia(smi_dir: Path) -> None:
    # Drivers before R510 refuse the whole query over the compute_cap field.
    script = smi_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$*" = {shlex.quote(NVIDIA_ARGS)} ]; then\n'
        "  echo 'Field \"compute_cap\" is not a valid field to query.'; exit 2\n"
        "fi\n"
        f'[ "$*" = {shlex.quote(NVIDIA_LEGACY_ARGS)} ] || exit 64\n'
        "echo 'Tesla T4, 15360, 470.82.01'\n"
    )
    script.chmod(0o755)
    host = detect_hardware()
    assert host.vendor == "nvidia"
    assert host.gpus == [GpuInfo("Tesla T4", 15.0, "470.82.01", None)]
    # The capability then comes from the table: AWQ yes, FP8 no.
    assert quant_supported(host, None, "awq")
    assert "Tesla T4 is SM 7.5" in (quant_unsupported_reason(host, None, "fp8") or "")


T4_HOST = HostHardware("nvidia", [GpuInfo("Tesla T4", 15.0, "550", "7.5")])


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("quant: {kv_cache_quant: fp8}", "quant.kv_cache_quant"),
        ("config: {kv_cache_dtype: fp8}", "config.kv_cache_dtype"),
        ("config: {kv_cache_dtype: fp8_e5m2}", "config.kv_cache_dtype"),
        ("quant: {method: fp8}", "quant.method"),
        ("config: {quantization: fp8}", "config.quantization"),
    ],
)
def test_recipe_quantization_is_gated_wherever_it_is_spelled(section: str, field: str) -> None:
    from pytest_forge.recipe import Recipe

    recipe = Recipe.from_yaml_text(
        f"id: r\nmodel: m\nhardware: {{vendor: nvidia, gpu_type: T4}}\n{section}\n"
    )
    for target in (T4_HOST, "T4"):
        problem = recipe_quant_problem(recipe, target)
        assert problem is not None and problem[0] == field
        assert "is SM 7.5" in problem[1]
    assert recipe_quant_problem(recipe, H100_HOST) is None
    assert recipe_quant_problem(recipe, "L40S") is None


def test_forge_validate_applies_the_gates_to_the_recipes_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_forge import vllm_args
    from pytest_forge.cli import main as forge_main

    monkeypatch.setattr(vllm_args, "load_arg_spec", lambda *a, **k: vllm_args.load_bundled_spec())
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    cases = {
        "t4-kv": ("T4", "config: {kv_cache_dtype: fp8}"),
        "a10-awq": ("A10", "quant: {method: awq}"),
        "l40s-fp8": ("L40S", "quant: {method: fp8, kv_cache_quant: fp8}"),
        "l4-fp8": ("L4", "quant: {method: fp8}"),
    }
    for name, (gpu, section) in cases.items():
        (recipes / f"{name}.yaml").write_text(
            f"id: {name}\nmodel: m\nhardware: {{vendor: nvidia, gpu_type: {gpu}}}\n{section}\n"
        )
    assert forge_main(["validate", str(recipes)]) == 1
    out = capsys.readouterr().out
    assert "t4-kv.yaml: config.kv_cache_dtype: not on T4: fp8 needs SM >= 9" in out
    for ok in ("a10-awq", "l40s-fp8", "l4-fp8"):
        assert f"ok    {recipes / ok}.yaml" in out, out
    assert "4 checked, 1 with problems" in out
