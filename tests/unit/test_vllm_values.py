"""Recipe values checked the way vLLM checks them: batching, caching, messages, type-only."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_forge import vllm_values
from pytest_forge.aim import import_aim
from pytest_forge.cli import main as forge_main
from pytest_forge.errors import RecipeError
from pytest_forge.recipe import Recipe
from pytest_forge.session import ForgeConfig, ForgeSession, check_recipe
from pytest_forge.vllm_args import (
    VllmArgSpec,
    installed_vllm_version,
    load_arg_spec,
    load_bundled_spec,
)
from pytest_forge.vllm_values import RecipeChecker, check_values

HEAD = "id: {id}\nmodel: m\nhardware: {{vendor: cpu}}\n"

# The six values of issue 9 that passed `forge validate` and cost a boot to find out.
BAD_RECIPES = {
    "seqs": ("config: {max_num_seqs: lots}\n", "config.max_num_seqs", "invalid int value"),
    "cgmode": (
        "compilation: {cudagraph_mode: SOMETIMES}\n",
        "compilation.cudagraph_mode",
        "FULL_AND_PIECEWISE",  # the hint lists CUDAGraphMode's names
    ),
    "sizes": (
        'compilation: {cudagraph_capture_sizes: "eight"}\n',
        "compilation.cudagraph_capture_sizes",
        "valid list",
    ),
    "mode": ("compilation: {mode: 7}\n", "compilation.mode", "0, 1, 2 or 3"),
}
AIM_REQUIRED = {
    "--model": "Model/Name",
    "--dtype": "bfloat16",
    "--max-model-len": "32768",
    "--gpu-memory-utilization": "0.9",
    "--trust-remote-code": "true",
    "--port": "8000",
}


def recipe(extra: str, id: str = "r") -> Recipe:
    return Recipe.from_yaml_text(HEAD.format(id=id) + extra, path=f"recipes/{id}.yaml")


def write_recipe(directory: Path, id: str, extra: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{id}.yaml"
    path.write_text(HEAD.format(id=id) + extra)
    return path


def write_aim(path: Path, blocks: dict[str, dict[str, str]]) -> Path:
    doc = {
        "recipe_id": "model-name-mi300x-bf16",
        "huggingface_id": "Model/Name",
        "precision": "bf16",
        "hardware": "mi300x",
        "vllm_serve": {
            name: {"enabled": True, "args": {**AIM_REQUIRED, **args}}
            for name, args in blocks.items()
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process answers and failures start empty in every test (the disk cache is per test).
    monkeypatch.setattr(vllm_values, "_memo", {})
    monkeypatch.setattr(vllm_values, "_failed", {})


# ------------------------------------------------------------------ a fake vLLM interpreter

# Answers the value script the way vLLM's parser would for `lots`: enough to test batching,
# caching and how answers become RecipeErrors without importing vLLM.
FAKE_VLLM = """\
import json, sys
from pathlib import Path
here = Path(__file__).parent
with open(here / "calls", "a") as fh:
    fh.write("values\\n")
if (here / "fail").exists():
    sys.stderr.write("ImportError: libcuda.so.1 not found\\n")
    sys.exit(3)
requests = json.loads(Path(sys.argv[3]).read_text())
results = {
    key: [[field, f"argument {argv[0]}: invalid int value: {argv[1]!r}"]
          for field, argv in request["segments"] if argv[1:] == ["lots"]]
    for key, request in requests.items()
}
Path(sys.argv[4]).write_text(json.dumps({"results": results}))
"""


@pytest.fixture
def fake_spec(tmp_path: Path) -> VllmArgSpec:
    (tmp_path / "fake.py").write_text(FAKE_VLLM)
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "fake.py"}" "$@"\n')
    exe.chmod(0o755)
    return dataclasses.replace(
        load_bundled_spec(),
        source="installed",
        version="9.9.0",
        distribution="vllm",
        python=str(exe),
    )


def calls(spec: VllmArgSpec) -> int:
    assert spec.python is not None
    path = Path(spec.python).parent / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_many_recipes_one_subprocess_then_memo_then_disk(
    fake_spec: VllmArgSpec, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    recipes = [
        recipe("config: {max_num_seqs: lots}\n", "bad"),
        recipe("config: {max_num_seqs: 8}\n", "good"),
        recipe("config: {max_num_seqs: 8, block_size: lots}\n", "bad2"),
    ]
    found = check_values(recipes, fake_spec, cache_dir=cache)
    assert calls(fake_spec) == 1  # one vLLM import for all three
    assert found.method == "vllm" and found.how == "values parsed by vllm 9.9.0"
    assert found.problems[0] == [
        (
            "config.max_num_seqs",
            "vLLM 9.9.0 refuses it: argument --max-num-seqs: invalid int value: 'lots'",
        )
    ]
    assert found.problems[1] == []
    assert [f for f, _ in found.problems[2]] == ["config.block_size"]

    assert check_values(recipes, fake_spec, cache_dir=cache).problems == found.problems
    assert calls(fake_spec) == 1  # memoized in-process
    vllm_values._memo.clear()  # forget in-process answers; the disk cache stays
    assert check_values(recipes, fake_spec, cache_dir=cache).problems == found.problems
    assert calls(fake_spec) == 1  # from the disk cache
    cached = list((cache / "vllm-values-v1-vllm-9.9.0").glob("*.json"))
    assert len(cached) == 3

    # The same args under another model share the answer; other args are asked for.
    other = recipe("config: {max_num_seqs: 8}\n", "good").model_copy(update={"model": "x/y"})
    check_values([other], fake_spec, cache_dir=cache)
    assert calls(fake_spec) == 1
    check_values([recipe("config: {max_num_seqs: 16}\n")], fake_spec, cache_dir=cache)
    assert calls(fake_spec) == 2


def test_checker_names_file_field_and_skips_values_of_unknown_names(
    fake_spec: VllmArgSpec, tmp_path: Path
) -> None:
    checker = RecipeChecker(fake_spec, cache_dir=tmp_path / "cache")
    with pytest.raises(RecipeError) as exc:
        checker.check(recipe("config: {max_num_seqs: lots, max_num_seq: lots}\n"))
    err = exc.value
    assert str(err).startswith("recipes/r.yaml: config.max_num_seq: 'max_num_seq' is not an arg")
    assert "nearest valid name: 'max_num_seqs'" in err.message  # did-you-mean kept
    assert "also config.max_num_seqs: vLLM 9.9.0 refuses it: argument --max-num-seqs" in err.message
    assert err.message.count("refuses it") == 1  # the unknown name's value is not parsed
    assert checker.check(recipe("config: {max_num_seqs: 8}\n")) == "values parsed by vllm 9.9.0"


def test_failed_vllm_falls_back_to_type_only_and_says_so(
    fake_spec: VllmArgSpec, tmp_path: Path
) -> None:
    assert fake_spec.python is not None
    (Path(fake_spec.python).parent / "fail").touch()
    bad = recipe("config: {max_num_seqs: lots}\n")
    found = check_values([bad], fake_spec, cache_dir=tmp_path / "cache")
    assert found.method == "type-only" and found.warning is not None
    assert "libcuda.so.1" in found.warning and "only type-checked" in found.warning
    ((field, message),) = found.problems[0]
    assert field == "config.max_num_seqs" and "type-only" in message
    assert "refuses" not in message  # no claim of a vLLM check that did not happen
    assert not (tmp_path / "cache").exists()  # failures are not cached
    check_values([bad], fake_spec, cache_dir=tmp_path / "cache")
    assert calls(fake_spec) == 1  # and not retried in this process


def test_session_checks_every_recipe_in_one_subprocess_before_boot(
    fake_spec: VllmArgSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGE_CACHE_DIR", str(tmp_path / "cache"))
    recipes_dir = tmp_path / "recipes"
    paths = [
        write_recipe(recipes_dir, "a", "config: {max_num_seqs: 8}\n"),
        write_recipe(recipes_dir, "b", "config: {max_num_seqs: lots}\n"),
        write_recipe(recipes_dir, "c", "config: {max_num_seqs: 16}\n"),
    ]
    (recipes_dir / "broken.yaml").write_text("id: [\n")  # fails on its own, not the batch
    session = ForgeSession(ForgeConfig(recipes_dir, tmp_path / "w", tmp_path / "runs"))
    session._arg_spec = fake_spec
    outcomes: dict[str, str] = {}
    for path in paths:
        try:
            check_recipe(Recipe.load(path), session)
            outcomes[path.stem] = "ok"
        except RecipeError as e:
            outcomes[path.stem] = str(e)
    assert outcomes["a"] == outcomes["c"] == "ok"  # a bad value fails only its own recipe
    assert outcomes["b"].startswith(f"{paths[1]}: config.max_num_seqs: vLLM 9.9.0 refuses it")
    assert calls(fake_spec) == 1 and session.boots == 0


# ------------------------------------------------------------------ type-only (bundled)


@pytest.mark.parametrize(
    ("extra", "field", "expect"),
    [
        ("config: {max_num_seqs: lots}\n", "config.max_num_seqs", "invalid int value: 'lots'"),
        ("config: {gpu_memory_utilization: high}\n", "config.gpu_memory_utilization", "float"),
        ("config: {enforce_eager: 'yes'}\n", "config.enforce_eager", "a flag takes no value"),
        ("config: {dtype: bf16}\n", "config.dtype", "invalid choice: 'bf16'"),
        (
            'compilation: {cudagraph_capture_sizes: "eight"}\n',
            "compilation.cudagraph_capture_sizes",
            "valid list",
        ),
    ],
)
def test_bundled_type_only_check_refuses_plain_type_errors(
    extra: str, field: str, expect: str
) -> None:
    with pytest.raises(RecipeError) as exc:
        RecipeChecker(load_bundled_spec()).check(recipe(extra))
    assert exc.value.field == field
    assert expect in exc.value.message
    assert "type-only check against the bundled vLLM 0.32.0 parser types" in exc.value.message


def test_bundled_type_only_check_passes_what_vllm_parses_its_own_way() -> None:
    # max_model_len takes "32k"/"auto" and mode a name or number: no plain type to check.
    checker = RecipeChecker(load_bundled_spec())
    ok = recipe(
        "config: {max_model_len: 32k, max_num_seqs: 8, enforce_eager: true, dtype: auto,"
        " gpu_memory_utilization: 0.9}\n"
        "compilation: {mode: 3, cudagraph_capture_sizes: [1, 2, 4]}\n"
    )
    assert checker.check(ok).startswith("values type-checked only")


def test_cli_validate_reports_a_bad_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pytest_forge.vllm_args.load_arg_spec", lambda *a, **k: load_bundled_spec())
    write_recipe(tmp_path / "recipes", "seqs", "config: {max_num_seqs: lots}\n")
    assert forge_main(["validate", str(tmp_path / "recipes")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  " in out and "seqs.yaml: config.max_num_seqs: argument --max-num-seqs" in out


def test_aim_value_is_reported_under_the_aim_key_with_its_line(tmp_path: Path) -> None:
    path = write_aim(
        tmp_path / "model-name-mi300x-bf16.yaml", {"1_gpu": {"--max-num-seqs": "lots"}}
    )
    with pytest.raises(RecipeError) as exc:
        import_aim(path, load_bundled_spec())
    assert exc.value.field == "vllm_serve.1_gpu.args.--max-num-seqs"
    assert "invalid int value: 'lots'" in exc.value.message
    line = path.read_text().splitlines().index("      --max-num-seqs: lots") + 1
    assert exc.value.message.endswith(f"(line {line})")


def test_dump_types_refuses_without_vllm(tmp_path: Path) -> None:
    # The bundled types file is what the type-only check reads; it names its vLLM.
    data: dict[str, Any] = vllm_values.load_bundled_types()
    assert data["version"] == "0.32.0" and data["args"]["--max-num-seqs"] == {"kind": "int"}
    assert "--max-model-len" not in data["args"]  # human-readable: not a plain type
    missing = tmp_path / "no-such-python"
    assert (
        vllm_values.main(["--dump-types", str(tmp_path / "t.json"), "--python", str(missing)]) == 1
    )


# ------------------------------------------------------------------ the real vLLM


needs_vllm = pytest.mark.skipif(installed_vllm_version() is None, reason="vLLM is not installed")


@needs_vllm
def test_real_vllm_refuses_the_four_recipe_values_in_one_batch(tmp_path: Path) -> None:
    # Default disk cache on purpose: one vLLM import (~10 s) the first time, instant after.
    spec = load_arg_spec()
    recipes_dir = tmp_path / "recipes"
    paths = {
        name: write_recipe(recipes_dir, name, extra) for name, (extra, _, _) in BAD_RECIPES.items()
    }
    good = write_recipe(
        recipes_dir,
        "good",
        "config: {max_num_seqs: 8, max_model_len: 32k, gpu_memory_utilization: 0.9}\n"
        "compilation: {mode: 3, cudagraph_mode: FULL_AND_PIECEWISE,"
        " cudagraph_capture_sizes: [8]}\n",
    )
    checker = RecipeChecker(spec)
    checker.prefetch(sorted(recipes_dir.iterdir()))
    assert checker.warning is None
    assert (
        checker.check(Recipe.load(good)) == f"values parsed by {spec.distribution} {spec.version}"
    )
    for name, (_, field, expect) in BAD_RECIPES.items():
        with pytest.raises(RecipeError) as exc:
            checker.check(Recipe.load(paths[name]))
        assert exc.value.path == paths[name] and exc.value.field == field
        assert (
            f"vLLM {spec.version} refuses it" in exc.value.message and expect in exc.value.message
        )


@needs_vllm
def test_real_vllm_refuses_the_two_aim_values_under_their_keys(tmp_path: Path) -> None:
    path = write_aim(
        tmp_path / "model-name-mi300x-bf16.yaml",
        {
            "1_gpu": {"--gpu-memory-utilization": "1.7"},
            "2_gpu": {"--max-model-len": "lots", "--tensor-parallel-size": "2"},
        },
    )
    spec = load_arg_spec()
    with pytest.raises(RecipeError) as exc:
        import_aim(path, spec)
    message = str(exc.value)
    assert exc.value.field == "vllm_serve.1_gpu.args.--gpu-memory-utilization"
    assert "CacheConfig.gpu_memory_utilization: Input should be less than or equal to 1" in message
    assert "also vllm_serve.2_gpu.args.--max-model-len: " in message
    assert "invalid human_readable_int_or_auto value: 'lots'" in message


@needs_vllm
def test_real_vllm_values_of_the_bundled_recipes_pass() -> None:
    root = Path(__file__).resolve().parents[2]
    checker = RecipeChecker(load_arg_spec())
    paths = sorted((root / "recipes").glob("*.yaml"))
    checker.prefetch(paths)
    for path in paths:
        assert checker.check(Recipe.load(path)).startswith("values parsed by")
    assert json.dumps(checker.warning) == "null"
