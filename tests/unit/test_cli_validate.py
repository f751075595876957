"""`forge validate`: every recipe and workload check outside pytest, non-zero on a problem."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pytest_forge import vllm_args
from pytest_forge.cli import main as forge_main

ROOT = Path(__file__).resolve().parents[2]
RECIPE = """\
id: {id}
model: forge:tiny-llama
hardware: {{vendor: {vendor}{gpu}}}
config: {{max_model_len: 512{config}}}
quant: {{method: {method}}}
"""


@pytest.fixture(autouse=True)
def _bundled_args(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bundled vLLM 0.32.0 list: no subprocess, the same answer with or without vLLM.
    monkeypatch.setattr(vllm_args, "load_arg_spec", lambda *a, **k: vllm_args.load_bundled_spec())


def _recipe(
    tmp: Path, id: str, *, config: str = "", method: str = "none", gpu: str | None = None
) -> Path:
    path = tmp / "recipes" / f"{id}.yaml"
    path.parent.mkdir(exist_ok=True)
    vendor = "nvidia" if gpu else "cpu"
    path.write_text(
        RECIPE.format(
            id=id,
            vendor=vendor,
            gpu=f", gpu_type: {gpu}" if gpu else "",
            config=config,
            method=method,
        )
    )
    return path


def test_bundled_recipes_and_workloads_validate(capsys: pytest.CaptureFixture[str]) -> None:
    code = forge_main(
        [
            "validate",
            str(ROOT / "recipes"),
            str(ROOT / "workloads"),
            "--workloads",
            str(ROOT / "workloads"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tiny-llama-cpu.yaml (vLLM 0.32.0" in out and "chat.jsonl (" in out


def test_removed_arg_fails_with_version_and_nearest_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _recipe(tmp_path, "good")
    _recipe(tmp_path, "seed", config=", swap_space: 4")
    assert forge_main(["validate", str(tmp_path / "recipes")]) == 1
    out = capsys.readouterr().out
    assert "ok    " in out and "good.yaml" in out  # the other recipe is still checked
    assert "seed.yaml: config.swap_space: 'swap_space' is not an argument of vLLM 0.32.0" in out
    assert "nearest valid name: 'kv_offloading_size'" in out
    assert "2 checked, 1 with problems" in out


def test_quant_gate_and_missing_workloads_are_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _recipe(tmp_path, "t4-fp8", method="fp8", gpu="T4")
    _recipe(tmp_path, "h100-fp8", method="fp8", gpu="H100")
    wants = _recipe(tmp_path, "wants-rag")
    wants.write_text(wants.read_text() + "workloads: [chat, rag]\n")
    (tmp_path / "workloads").mkdir()
    (tmp_path / "workloads" / "chat.jsonl").write_text(
        '{"prompt": "hi", "expected_output_tokens": 4}\n'
    )
    code = forge_main(
        ["validate", str(tmp_path / "recipes"), "--workloads", str(tmp_path / "workloads")]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "t4-fp8.yaml: quant.method: not on T4: fp8 needs SM >= 9" in out
    assert "h100-fp8.yaml (vLLM" in out  # FP8 on SM 9.0 is allowed
    assert "wants-rag.yaml: workloads: rag: not in" in out


def test_broken_workload_line_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "w.jsonl"
    bad.write_text('{"prompt": "a", "expected_output_tokens": 4}\n{"prompt": "b"\n')
    assert forge_main(["validate", str(bad)]) == 1
    assert f"{bad}:2" in capsys.readouterr().out


def test_hostile_recipes_fail_fast_each_with_its_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Once a traceback (UnicodeDecodeError, RecursionError), minutes (12 MB) or a MemoryError
    # (an alias bomb): now one FAIL line per file, a non-zero exit, the other files checked.
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    head = "id: {}\nmodel: m\nhardware: {{vendor: cpu}}\n"
    bomb = "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
        for p, n in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
    )
    (recipes / "nonutf8.yaml").write_bytes(head.format("nonutf8").encode() + b"env: {A: \xff}\n")
    (recipes / "nested.yaml").write_text(head.format("nested") + "x: " + "[" * 5000 + "\n")
    (recipes / "bomb.yaml").write_text(head.format("bomb") + bomb)
    (recipes / "big.yaml").write_text(head.format("big") + "#" * 12_000_000 + "\n")
    _recipe(tmp_path, "good")
    start = time.perf_counter()
    assert forge_main(["validate", str(recipes)]) == 1
    assert time.perf_counter() - start < 10
    out = capsys.readouterr().out
    assert "ok    " in out and "good.yaml" in out
    assert f"FAIL  {recipes / 'nonutf8.yaml'}: line 4, column 10: not UTF-8 text" in out
    assert f"FAIL  {recipes / 'nested.yaml'}: line 4" in out and "nested deeper than 64" in out
    assert f"FAIL  {recipes / 'bomb.yaml'}: line" in out and "aliases (*" in out
    assert f"FAIL  {recipes / 'big.yaml'}: the file is 11.4 MiB" in out
    assert "5 checked, 4 with problems" in out and "Traceback" not in out


def test_aevyra_recipe_fails_only_on_what_vllm_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # seeds/000 keeps parent_id and generation at the top level: read as lineage. Its
    # swap_space is gone from vLLM 0.32 (a real boot would fail), and only that is reported.
    path = _recipe(tmp_path, "e5f6a7b8", config=", swap_space: 4")
    path.write_text(path.read_text() + "generation: 3\nparent_id: a1b2c3d4\n")
    assert forge_main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "config.swap_space" in out and "generation" not in out and "parent_id" not in out
