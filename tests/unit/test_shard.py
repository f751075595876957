"""``--forge-shard I/N``: a stable, balanced share of the recipes, a recipe never split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_forge.shard import Shard, assign, parse_shard, split

pytest_plugins = ["pytester"]

RECIPE = "id: {id}\nmodel: fake-model\nhardware:\n  vendor: cpu\n"
CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")


def test_parse_accepts_i_of_n() -> None:
    assert parse_shard("2/3") == Shard(2, 3)
    assert parse_shard(" 1 / 1 ") == Shard(1, 1)
    assert str(parse_shard("4/4")) == "4/4"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0/2", "between 1 and N"),
        ("3/2", "between 1 and N"),
        ("a/b", "expected I/N"),
        ("1/0", "at least 1"),
        ("2", "expected I/N"),
        ("-1/2", "expected I/N"),
    ],
)
def test_parse_refuses_bad_values(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_shard(text)


def test_split_keeps_a_file_whole_and_covers_every_test_once() -> None:
    ids = [f"recipes/r{r}.yaml::w{w}" for r in range(7) for w in range(1 + r % 3)]
    ids += ["tests/test_x.py::test_a", "tests/test_x.py::test_b"]
    seen: list[int] = []
    shards = []
    for i in (1, 2, 3):
        keep, drop = split(ids, Shard(i, 3))
        assert sorted(keep + drop) == list(range(len(ids)))
        seen += keep
        shards.append({ids[k].split("::")[0] for k in keep})
        sizes = len(keep)
        assert 3 <= sizes <= 6  # 16 tests over 3 shards: none starved, none overloaded
    assert sorted(seen) == list(range(len(ids)))  # every test in exactly one shard
    assert not (shards[0] & shards[1] or shards[1] & shards[2] or shards[0] & shards[2])


def test_split_is_independent_of_collection_order() -> None:
    ids = [f"recipes/r{r}.yaml::w{w}" for r in range(5) for w in range(2)]
    forward = {ids[i] for i in split(ids, Shard(2, 3))[0]}
    backward_ids = list(reversed(ids))
    backward = {backward_ids[i] for i in split(backward_ids, Shard(2, 3))[0]}
    assert forward == backward and forward


def test_assign_balances_largest_first() -> None:
    owner = assign({"a": 4, "b": 3, "c": 2, "d": 1}, 2)
    assert owner == {"a": 1, "b": 2, "c": 2, "d": 1}  # 5 and 5


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.delenv("CI", raising=False)
    (pytester.path / "recipes").mkdir()
    (pytester.path / "workloads").mkdir()
    for rid in ("alpha", "beta", "gamma"):
        (pytester.path / "recipes" / f"{rid}.yaml").write_text(RECIPE.format(id=rid))
    for name in ("short", "long"):
        (pytester.path / "workloads" / f"{name}.jsonl").write_text(
            '{"prompt": "hi", "expected_output_tokens": 4}\n'
        )
    return pytester


def _collected(project: pytest.Pytester, *args: str) -> list[str]:
    result = project.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider", *args)
    assert result.ret == 0, result.stdout.str()
    return sorted(line for line in result.outlines if "::" in line)


def test_shards_partition_the_recipes(project: pytest.Pytester) -> None:
    everything = _collected(project)
    parts = [_collected(project, f"--forge-shard={i}/2") for i in (1, 2)]
    assert sorted(parts[0] + parts[1]) == everything
    for part in parts:
        assert part  # both shards have work
    recipes = [{n.split("::")[0] for n in part} for part in parts]
    assert not recipes[0] & recipes[1]  # a recipe's workloads stay together
    # The ini key works too, and gives the same split.
    (project.path / "pytest.ini").write_text("[pytest]\nforge_shard = 2/2\n")
    assert _collected(project) == parts[1]


@pytest.mark.parametrize(("value", "where"), [("0/2", "cli"), ("3/2", "ini"), ("a/b", "xdist")])
def test_bad_shard_is_a_usage_error_naming_the_option(
    project: pytest.Pytester, value: str, where: str
) -> None:
    args = ["--collect-only", "-p", "no:cacheprovider"]
    if where == "ini":
        (project.path / "pytest.ini").write_text(f"[pytest]\nforge_shard = {value}\n")
    else:
        args.append(f"--forge-shard={value}")
    if where == "xdist":
        pytest.importorskip("xdist")
        args += ["-n", "2"]  # refused on the controller, before a worker collects
    result = project.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"--forge-shard (ini forge_shard) '{value}'" in err
    assert "INTERNALERROR" not in err + result.stdout.str()


def test_shard_under_xdist_runs_the_same_share(project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    (project.path / "test_names.py").write_text("")
    plain = _collected(project, "--forge-shard=1/2")
    result = project.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        "--forge-shard=1/2",
        "-rA",
        "--forge-endpoint=http://127.0.0.1:9",
        "--forge-no-strict",
        "recipes",
    )
    ran = sorted(
        {
            line.split()[1]
            for line in result.outlines
            if line.startswith(("PASSED ", "FAILED ", "SKIPPED ", "ERROR ")) and "::" in line
        }
    )
    assert ran == plain, result.stdout.str()
