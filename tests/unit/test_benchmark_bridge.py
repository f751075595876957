"""pytest-benchmark and forge tests: rounds per repeat, also under pytest-xdist, and
--benchmark-only / --benchmark-disable / --benchmark-skip (see benchmark_bridge.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.benchmark_bridge import _round_options
from tests.fakes.fake_openai_server import FakeServer, running_fake_server
from tests.unit.test_plugin import CACHE, RECIPE, SIDE, _run, _workload

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.0005) as server:
        yield server


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.delenv("CI", raising=False)
    # Run inside an xdist worker, the inner pytest would act as a worker itself.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    (pytester.path / "recipes").mkdir()
    (pytester.path / "workloads").mkdir()
    for recipe in ("alpha", "beta"):
        (pytester.path / "recipes" / f"{recipe}.yaml").write_text(RECIPE.format(id=recipe))
    (pytester.path / "workloads" / "short.jsonl").write_text(_workload(4))
    (pytester.path / "workloads" / "short.yaml").write_text(SIDE)
    return pytester


def _bench(project: pytest.Pytester) -> dict[str, Any]:
    return json.loads((project.path / "bench.json").read_text())


def test_each_gate_test_is_a_benchmark_with_one_round_per_repeat(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    result = _run(project, fake, "-k", "alpha", f"--benchmark-json={project.path / 'bench.json'}")
    result.assert_outcomes(passed=1)
    (entry,) = _bench(project)["benchmarks"]
    assert entry["fullname"] == "recipes/alpha.yaml::short"
    assert entry["name"] == "short"
    assert entry["group"] == "forge:alpha"
    assert entry["stats"]["rounds"] == 2  # SIDE: repeats 2
    assert entry["stats"]["min"] > 0
    assert entry["extra_info"]["recipe"] == "alpha"
    assert entry["extra_info"]["verdict"] == "no-baseline"
    assert entry["extra_info"]["repeats"] == 2
    # The options pytest-benchmark's own fixture records, as before.
    assert entry["options"]["timer"] == "perf_counter"
    assert entry["options"]["min_rounds"] == 5


def test_under_xdist_the_controller_writes_the_benchmark_json(
    project: pytest.Pytester, fake: FakeServer
) -> None:
    # pytest-benchmark disables itself under xdist: before, --benchmark-json wrote nothing.
    result = _run(project, fake, "-n", "2", f"--benchmark-json={project.path / 'bench.json'}")
    result.assert_outcomes(passed=2)
    entries = _bench(project)["benchmarks"]
    assert sorted(e["fullname"] for e in entries) == [
        "recipes/alpha.yaml::short",
        "recipes/beta.yaml::short",
    ]
    assert all(e["stats"]["rounds"] == 2 for e in entries)
    assert all(e["extra_info"]["output_throughput"] > 0 for e in entries)


def test_benchmark_only_runs_the_forge_tests(project: pytest.Pytester, fake: FakeServer) -> None:
    result = _run(project, fake, "--benchmark-only", "-rs")
    result.assert_outcomes(passed=2)
    assert "Skipping non-benchmark" not in result.stdout.str()


def test_benchmark_only_still_skips_other_tests(project: pytest.Pytester, fake: FakeServer) -> None:
    project.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = _run(project, fake, "--benchmark-only", "-k", "alpha or plain")
    result.assert_outcomes(passed=1, skipped=1)


@pytest.mark.parametrize("flag", ["--benchmark-disable", "--benchmark-skip"])
def test_disabled_or_skipped_benchmarks_record_nothing(
    project: pytest.Pytester, fake: FakeServer, flag: str
) -> None:
    result = _run(
        project, fake, "-k", "alpha", flag, f"--benchmark-json={project.path / 'bench.json'}"
    )
    result.assert_outcomes(passed=1)  # the forge test itself still runs
    path = project.path / "bench.json"
    # pytest-benchmark 5.3 writes no file; before it, the option created an empty one.
    assert not path.exists() or not path.read_text().strip()


def test_round_options_match_each_pytest_benchmark_release() -> None:
    class Timer:
        target = staticmethod(len)

    common: dict[str, Any] = {
        "disable_gc": False,
        "timer": Timer(),
        "min_rounds": 5,
        "max_time": "1.0",
        "min_time": "0.000005",
        "warmup": False,
        "warmup_iterations": 100000,
    }
    # 5.0 - 5.2: no precision / confidence.
    assert list(_round_options(common)) == [
        "disable_gc",
        "timer",
        "min_rounds",
        "max_time",
        "min_time",
        "warmup",
    ]
    newer = _round_options({**common, "precision": 0.01, "confidence": 0.95, "warmup": True})
    assert newer["precision"] == 0.01 and newer["confidence"] == 0.95
    assert newer["timer"] is len and newer["max_time"] == 1.0
    assert newer["warmup"] == 100000  # warmup and its iterations, as the fixture records
    assert _round_options({**common, "precision": 0.01, "confidence": None})["precision"] is None


def test_pytest_benchmark_is_pinned_to_the_verified_range() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    # 5.0.0 raises a TypeError on every test that is not a Python function (forge's).
    assert '"pytest-benchmark>=5.0.1,<6"' in pyproject
