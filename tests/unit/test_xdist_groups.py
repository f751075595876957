"""pytest-xdist keeps a recipe's tests on one worker, without rewriting the user's --dist
for other tests (the plugin against a fake server, as in test_plugin.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.fakes.fake_openai_server import FakeServer, running_fake_server
from tests.unit.test_plugin import CACHE, RECIPE, SIDE, _workload

pytest_plugins = ["pytester"]

OTHER_TESTS = "def test_one():\n    pass\n\n\ndef test_two():\n    pass\n"
# Says which scheduler the controller ended up with.
CONFTEST = (
    "def pytest_report_header(config):\n"
    "    return f\"dist={getattr(config.option, 'dist', None)}\"\n"
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.0005) as server:
        yield server


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Recipes alpha and beta, four workloads each (as test_plugin.py's project): four
    tests a recipe, which an xdist scheduler without the recipe's group spreads out."""
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.delenv("CI", raising=False)
    for name in ("alpha", "beta"):
        (pytester.path / "recipes").mkdir(exist_ok=True)
        (pytester.path / "recipes" / f"{name}.yaml").write_text(RECIPE.format(id=name))
    (pytester.path / "workloads").mkdir()
    for name, n in (("short", 4), ("long", 6), ("mid", 5), ("tiny", 3)):
        (pytester.path / "workloads" / f"{name}.jsonl").write_text(_workload(n))
        (pytester.path / "workloads" / f"{name}.yaml").write_text(SIDE)
    return pytester


def _run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    project.makepyfile(test_other=OTHER_TESTS)
    project.makeconftest(CONFTEST)
    return project.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args)


def _workers(out: str) -> dict[str, set[str]]:
    """recipe -> the xdist workers that ran its tests."""
    seen: dict[str, set[str]] = {}
    for worker, recipe in re.findall(r"\[(gw\d+)\][^\n]*? recipes/(\w+)(?:\.|::)yaml::", out):
        seen.setdefault(recipe, set()).add(worker)
    return seen


def test_each_recipe_collector_carries_its_xdist_group(project: pytest.Pytester) -> None:
    items, _ = project.inline_genitems("-p", "no:cacheprovider")
    groups = {
        item.nodeid: item.get_closest_marker("xdist_group").kwargs["name"]  # type: ignore[union-attr]
        for item in items
        if item.get_closest_marker("xdist_group") is not None
    }
    assert groups["recipes/alpha.yaml::short"] == "forge:alpha"
    assert groups["recipes/beta.yaml::tiny"] == "forge:beta"
    assert len(groups) == 8


def _same_worker_per_recipe(out: str) -> None:
    workers = _workers(out)
    assert set(workers) == {"alpha", "beta"}, out
    assert all(len(w) == 1 for w in workers.values()), workers


def test_loadgroup_keeps_each_recipe_on_one_worker(
    project: pytest.Pytester,
    fake: FakeServer,
) -> None:
    result = _run(project, f"--forge-endpoint={fake.url}", "-n", "2", "--dist", "loadgroup")
    out = result.stdout.str()
    assert result.ret == 0, out
    # Before: no group (and xdist's own grouping is void on pytest 9.2), so a recipe's
    # tests were spread over both workers: two boots, two writers.
    _same_worker_per_recipe(out)
    assert "PASSED test_other.py::test_one" in out  # other tests: distributed as ever
    assert "dist=loadgroup" in out


def test_n_alone_chooses_loadgroup_when_recipes_are_collected(
    project: pytest.Pytester,
    fake: FakeServer,
) -> None:
    result = _run(project, f"--forge-endpoint={fake.url}", "-n", "2")
    out = result.stdout.str()
    assert result.ret == 0, out
    # Before: rewritten to loadfile, which also grouped every other test file.
    assert "dist=loadgroup" in out
    _same_worker_per_recipe(out)


@pytest.mark.parametrize("dist", ["load", "worksteal"])
def test_a_scheduler_that_splits_recipes_is_refused_with_the_fix(
    project: pytest.Pytester, dist: str
) -> None:
    result = _run(project, "-n", "2", "--dist", dist)
    err = result.stderr.str()
    # Before: load was silently rewritten to loadfile; worksteal split the recipes.
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert f"--dist {dist} spreads a recipe's tests over the pytest-xdist workers" in err
    assert "Use --dist loadgroup" in err


def test_an_explicit_dist_is_left_alone_for_runs_without_recipes(
    project: pytest.Pytester,
) -> None:
    result = _run(project, "-n", "2", "--dist", "load", "test_other.py")
    out = result.stdout.str()
    assert result.ret == 0, out
    # Before: rewritten to loadfile, for tests that are not recipes at all.
    assert re.search(r"^dist=load$", out, re.MULTILINE), out
    assert "2 passed" in out


def test_each_is_refused_for_a_tune(project: pytest.Pytester) -> None:
    result = _run(project, "-n", "2", "--dist", "each", "--forge-tune", "--forge-agent=playbook")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "each worker would tune every recipe at the same time" in result.stderr.str()
