"""Which YAML files in the recipes directory are recipes: a guest in someone else's
repository leaves their YAML alone, while a recipe gone wrong still fails loudly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_forge.recipe_files import holds_recipes, is_recipe_file

pytest_plugins = ["pytester"]

CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")


@pytest.mark.parametrize(
    ("content", "recipe"),
    [
        (b"flour: 200g\neggs: 2\n", False),  # someone else's YAML
        (b"- flour\n- eggs\n", False),
        (b"", False),
        (b"# only a comment\n", False),
        (b"id: x\nsteps: [mix, bake]\n", False),
        (b"id: x\nmodel: m\nhardware: {vendor: cpu}\n", True),
        # aevyra Forge's seed format: no id, lineage at the top level
        (b"model: m\nhardware: {vendor: nvidia}\ngeneration: 3\n", True),
        (b"id: x\nmodle: m\nhardware: {vendor: cpu}\n", True),  # a typo still fails
        (b"id: x\nmodel: m\nhardwre: {vendor: cpu}\n", True),
        # Not readable as YAML at all: intent unknown, so it fails as a recipe would.
        (b"model: [unclosed\n", True),
        (b"flour: \xff\xfe\n", True),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", True),
    ],
)
def test_what_counts_as_a_recipe(tmp_path: Path, content: bytes, recipe: bool) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    assert is_recipe_file(path) is recipe


def test_holds_recipes_ignores_other_yaml(tmp_path: Path) -> None:
    (tmp_path / "pancakes.yaml").write_text("flour: 200g\n")
    (tmp_path / "notes.txt").write_text("model: m\n")
    assert not holds_recipes(tmp_path)
    assert not holds_recipes(tmp_path / "missing")
    (tmp_path / "alpha.yml").write_text("model: m\n")
    assert holds_recipes(tmp_path)


@pytest.fixture
def repo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Someone else's repository: a test, and a recipes/ directory of pancakes."""
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    (pytester.path / "recipes").mkdir()
    (pytester.path / "recipes" / "pancakes.yaml").write_text("flour: 200g\n")
    return pytester


def test_unrelated_yaml_in_recipes_is_left_alone(repo: pytest.Pytester) -> None:
    # Before: pancakes.yaml became a failing test and a .forge/gate/... directory.
    result = repo.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "pancakes.yaml" not in out
    assert "forge:" not in out  # no header, no summary: nothing forge ran
    assert not (repo.path / ".forge").exists()


def test_a_broken_recipe_beside_pancakes_still_fails_with_its_cause(
    repo: pytest.Pytester,
) -> None:
    recipes = repo.path / "recipes"
    (repo.path / "workloads").mkdir()
    (repo.path / "workloads" / "w.jsonl").write_text(
        '{"id": "r0", "prompt": "p", "expected_output_tokens": 4}\n'
    )
    (recipes / "typo.yaml").write_text("id: typo\nmodle: m\nhardware: {vendor: cpu}\n")
    (recipes / "garbled.yaml").write_text("model: [unclosed\nflour: 200g\n")
    (recipes / "latin1.yaml").write_bytes(b"flour: 200g\nnote: cr\xe8me\n")
    result = repo.runpytest_subprocess("-p", "no:cacheprovider", "--forge-no-strict")
    result.assert_outcomes(passed=1, failed=3)
    out = result.stdout.str()
    assert "pancakes.yaml" not in out
    assert "typo.yaml" in out and "modle" in out
    assert "garbled.yaml" in out and "YAML syntax error" in out
    assert "latin1.yaml" in out and "not UTF-8" in out
