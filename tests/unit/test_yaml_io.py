"""Hostile or broken YAML is refused quickly, by file, with a message naming the cause.

Each case here once stopped a whole session or hung it: a non-UTF-8 recipe raised
UnicodeDecodeError out of collection, 5,000 nested `[` a RecursionError, a 342-byte alias
bomb grew past 1 GB, a 12 MB recipe took minutes to read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pytest_forge import yaml_io
from pytest_forge.errors import RecipeError, WorkloadError
from pytest_forge.recipe import Recipe
from pytest_forge.tune.playbook import validate_playbook
from pytest_forge.workload import load_replay

pytest_plugins = ["pytester"]

HEAD = "id: {id}\nmodel: m\nhardware: {{vendor: cpu}}\n"
BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)
# pytester points HOME at a temp dir: keep the real cache of vLLM's introspected args.
CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")
# Well under a second each on a 2-core runner; the bound leaves room for a busy one.
FAST_S = 3.0


def hostile(tmp_path: Path) -> dict[str, Path]:
    """The four files of the issue, each a recipe named after its case."""
    files = {
        "nonutf8": HEAD.format(id="nonutf8").encode() + b"config:\n  dtype: \xff\xfe\n",
        "nested": (
            HEAD.format(id="nested") + "config:\n  x: " + "[" * 5000 + "]" * 5000 + "\n"
        ).encode(),
        "bomb": (HEAD.format(id="bomb") + BOMB).encode(),
        "big": (
            HEAD.format(id="big")
            + "config:\n"
            + "".join(f"  key_{i:07d}: {i:07d}\n" for i in range(522_000))
        ).encode(),
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.yaml"
        out[name].write_bytes(data)
    assert 12_000_000 < out["big"].stat().st_size < 12_100_000
    return out


EXPECTED = {
    "nonutf8": "line 5, column 10: not UTF-8 text: byte 0xff",
    "nested": "nested deeper than 64 levels",
    "bomb": "aliases (*",
    "big": "the file is 11.4 MiB",  # 12.0 MB
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_hostile_recipe_fails_fast_with_its_cause(tmp_path: Path, case: str) -> None:
    path = hostile(tmp_path)[case]
    start = time.perf_counter()
    with pytest.raises(RecipeError) as exc:
        Recipe.load(path)
    assert time.perf_counter() - start < FAST_S
    assert exc.value.path == path
    assert EXPECTED[case] in str(exc.value), str(exc.value)
    if case == "big":
        assert "limited to 256 KiB" in str(exc.value)


def test_limits_hold_for_text_from_elsewhere() -> None:
    # from_yaml_text reads what `git show` returned (A/B): the same limits apply.
    with pytest.raises(RecipeError, match="limited to 256 KiB"):
        Recipe.from_yaml_text(HEAD.format(id="x") + "#" * (300 * 1024) + "\n")
    with pytest.raises(RecipeError, match="aliases"):
        Recipe.from_yaml_text(HEAD.format(id="x") + BOMB)


def test_aliases_within_the_limit_still_load() -> None:
    # A `<<: *defaults` style reuse is legal YAML and stays so.
    tree = yaml_io.load("base: &b {x: 1, y: [1, 2]}\nother:\n  <<: *b\n  z: 3\nagain: *b\n")
    assert yaml_io.plain(tree)["other"] == {"x": 1, "y": [1, 2], "z": 3}


def test_deep_but_legal_nesting_loads() -> None:
    depth = yaml_io.MAX_YAML_DEPTH - 1
    assert yaml_io.load("a: " + "[" * depth + "]" * depth + "\n") is not None
    with pytest.raises(yaml_io.YamlInputError) as exc:
        depth += 2
        yaml_io.load("a: " + "[" * depth + "]" * depth + "\n")
    assert exc.value.line == 1 and "nested deeper" in exc.value.message


def test_syntax_errors_keep_their_position() -> None:
    with pytest.raises(yaml_io.YamlInputError) as exc:
        yaml_io.load("a: 1\nb: [1, 2\n")
    assert exc.value.syntax and str(exc.value).startswith("YAML syntax error at line 3")


def test_hostile_sidecar_and_playbook_are_refused_by_file(tmp_path: Path) -> None:
    sidecar = tmp_path / "w.yaml"
    sidecar.write_text("mode: closed\nextra: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(WorkloadError) as wl:
        load_replay(sidecar)
    assert wl.value.path == sidecar and wl.value.line == 2 and "nested deeper" in str(wl.value)
    sidecar.write_bytes(b"mode: \xff\n")
    with pytest.raises(WorkloadError, match="not UTF-8"):
        load_replay(sidecar)

    playbook = tmp_path / "playbook.md"
    playbook.write_text("## Search space: CPU\n\n```yaml\n" + BOMB + "```\n")
    problems = validate_playbook(playbook)
    assert any(f"{playbook}:" in p and "aliases" in p for p in problems), problems
    playbook.write_bytes(b"# \xff\n")
    assert "not UTF-8" in validate_playbook(playbook)[0]


def test_collection_fails_only_the_hostile_files(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    recipes = pytester.path / "recipes"
    recipes.mkdir()
    (pytester.path / "workloads").mkdir()
    (pytester.path / "workloads" / "w.jsonl").write_text(
        '{"id": "r0", "prompt": "p", "expected_output_tokens": 4}\n'
    )
    (recipes / "good.yaml").write_text(HEAD.format(id="good"))
    for name, path in hostile(pytester.path).items():
        path.rename(recipes / path.name)
        assert (recipes / f"{name}.yaml").exists()

    start = time.perf_counter()
    listed = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert time.perf_counter() - start < 60
    ids = {line for line in listed.outlines if "::" in line}
    assert "recipes/good.yaml::w" in ids
    assert {f"recipes/{n}.yaml::recipe" for n in EXPECTED} <= ids
    assert "Interrupted" not in listed.stdout.str() and listed.ret == 0

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k", "recipe and not good", "--forge-no-strict"
    )
    result.assert_outcomes(failed=4)
    out = result.stdout.str()
    for name, expected in EXPECTED.items():
        assert f"{name}.yaml" in out and expected in out, (name, out)
