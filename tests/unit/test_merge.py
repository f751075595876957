"""`forge merge` on real outputs of two shards (--forge-shard 1/2 and 2/2, against the fake
OpenAI server), checked against what one unsharded run of the same project writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.cli import main as forge_main
from pytest_forge.merge import ShardFiles, mismatches
from pytest_forge.merge_formats import merge_junit
from tests.fakes.fake_openai_server import FakeServer, running_fake_server

RECIPE = """\
id: {id}
model: fake-model
hardware:
  vendor: cpu
gates:
  accuracy_scorer: agreement
  latency_tolerance: 9
"""
SIDE = "mode: closed\nconcurrency: 2\nwarmup: 0\nrepeats: 2\n"
CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.0005) as server:
        yield server


def _project(root: Path) -> None:
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "recipes").mkdir()
    (root / "workloads").mkdir()
    for rid in ("alpha", "beta"):
        (root / "recipes" / f"{rid}.yaml").write_text(RECIPE.format(id=rid))
    # A broken recipe: a failed test that measured nothing (results.json's not_measured).
    (root / "recipes" / "broken.yaml").write_text("id: broken\nmodel: [\n")
    for name in ("short", "long"):
        lines = [
            json.dumps({"prompt": f"{name} {i}", "expected_output_tokens": 6}) for i in range(3)
        ]
        (root / "workloads" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        (root / "workloads" / f"{name}.yaml").write_text(SIDE)


def _run(root: Path, fake: FakeServer, out: str, *extra: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_STEP_SUMMARY")}
    env["FORGE_CACHE_DIR"] = CACHE
    env.pop("PYTEST_XDIST_WORKER", None)  # the inner pytest is no xdist worker
    env.pop("PYTEST_ADDOPTS", None)
    (root / out).mkdir()  # pytest-benchmark writes --benchmark-json into an existing directory
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--forge-endpoint={fake.url}",
            f"--forge-run-dir={out}/.forge",
            f"--junitxml={out}/junit.xml",
            f"--benchmark-json={out}/benchmark.json",
            f"--forge-bench-json={out}/bench.json",
            f"--forge-report={out}/report",
            *extra,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # 1 for the run holding broken.yaml
    assert done.returncode in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), (
        done.stdout + done.stderr
    )


@pytest.fixture(scope="module")
def shard_runs(tmp_path_factory: pytest.TempPathFactory, fake: FakeServer) -> Path:
    """One project, run unsharded (full/) and as shards 1/2 and 2/2 (shard-1/, shard-2/)."""
    root = tmp_path_factory.mktemp("project")
    _project(root)
    _run(root, fake, "full")
    _run(root, fake, "shard-1", "--forge-shard=1/2")
    _run(root, fake, "shard-2", "--forge-shard=2/2")
    return root


@pytest.fixture
def outputs(shard_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the runs' outputs each test may write beside."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    for name in ("full", "shard-1", "shard-2"):
        shutil.copytree(shard_runs / name, tmp_path / name)
    return tmp_path


def _results(run: Path) -> dict[str, Any]:
    (path,) = (run / ".forge").rglob("results.json")
    return json.loads(path.read_text())


def _junit(path: Path) -> tuple[ET.Element, list[tuple[str, str]]]:
    suite = next(ET.parse(path).getroot().iter("testsuite"))
    cases = [(c.get("classname", ""), c.get("name", "")) for c in suite.iter("testcase")]
    return suite, cases


def _entries(path: Path) -> Counter[str]:
    return Counter(e["name"] for e in json.loads(path.read_text()))


def test_merged_shards_report_what_one_runner_reports(
    outputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = outputs / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    full, merged = outputs / "full", outputs / "merged"
    shards = [outputs / "shard-1", outputs / "shard-2"]
    # Each shard ran a share: whole recipes, none in both.
    recipes = [{r["recipe"] for r in _results(s)["results"]} for s in shards]
    assert recipes[0] and recipes[1] and not recipes[0] & recipes[1]
    assert [_results(s).get("shard") for s in shards] == ["1/2", "2/2"]

    assert forge_main(["merge", "--out", str(merged), *map(str, shards)]) == 0
    out = capsys.readouterr().out
    assert "2 results.json, 2 JUnit, 2 pytest-benchmark" in out

    # JUnit: the same testcases, the counts adding up to the unsharded run's.
    full_suite, full_cases = _junit(full / "junit.xml")
    merged_suite, merged_cases = _junit(merged / "forge-junit.xml")
    assert sorted(merged_cases) == sorted(full_cases) and len(full_cases) == 5
    for key in ("tests", "failures", "errors", "skipped"):
        assert merged_suite.get(key) == full_suite.get(key), key
    assert merged_cases == sorted(merged_cases, key=lambda c: c[0])  # one runner's file order

    # pytest-benchmark: every benchmark once, one machine_info / commit_info.
    full_bench = json.loads((full / "benchmark.json").read_text())
    merged_bench = json.loads((merged / "forge-benchmark.json").read_text())
    names = [b["fullname"] for b in merged_bench["benchmarks"]]
    assert sorted(names) == sorted(b["fullname"] for b in full_bench["benchmarks"])
    assert len(names) == 4 and isinstance(merged_bench["machine_info"], dict)
    assert "commit_info" in merged_bench

    # github-action-benchmark: both files, the shards' entries concatenated.
    for name in ("bench.json", "bench.smaller.json"):
        merged_name = "forge-" + name
        assert _entries(merged / merged_name) == _entries(full / name)
        shard_docs = [json.loads((s / name).read_text()) for s in shards]
        merged_doc = json.loads((merged / merged_name).read_text())
        assert sorted(map(json.dumps, merged_doc)) == sorted(
            json.dumps(e) for doc in shard_docs for e in doc
        )

    # results.json: the same results and not-measured tests, the counts recomputed.
    full_doc = _results(full)
    merged_doc = json.loads((merged / "results.json").read_text())
    pairs = sorted((r["recipe"], r["workload"]) for r in merged_doc["results"])
    assert pairs == sorted((r["recipe"], r["workload"]) for r in full_doc["results"])
    assert len(pairs) == 4
    for key in ("judged", "recorded", "not_judged", "vllm_version", "hardware"):
        assert merged_doc[key] == full_doc[key], key
    assert [u["test"] for u in merged_doc["not_measured"]] == ["recipes/broken.yaml::recipe"]
    assert merged_doc["shard"] == "1/2+2/2" and full_doc["shard"] is None

    # The HTML report rebuilt, and the Markdown summary appended.
    index = (merged / "forge-report" / "index.html").read_text()
    assert "alpha" in index and "beta" in index and "broken.yaml" in index
    text = summary.read_text()
    assert "| alpha | long |" in text and "| beta | short |" in text
    # forge compare reads the merged results.json like any run's.
    (full_results,) = (full / ".forge").rglob("results.json")
    assert forge_main(["compare", str(full_results), str(merged)]) == 0
    assert "across 4 pairs" in capsys.readouterr().out


def test_a_test_in_two_shards_stops_the_merge(
    outputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged = outputs / "merged"
    code = forge_main(
        ["merge", "--out", str(merged), str(outputs / "full"), str(outputs / "shard-1")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "ran in more than one shard" in err
    assert "JUnit testcase recipes.alpha.yaml::long in" in err or "alpha" in err
    assert not merged.exists()  # nothing written


def test_shards_of_other_vllm_versions_or_a_missing_shard_are_named(
    outputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = outputs / "shard-2-old"
    shutil.copytree(outputs / "shard-2", other)
    (path,) = (other / ".forge").rglob("results.json")
    doc = json.loads(path.read_text())
    doc["vllm_version"] = "0.31.0"
    path.write_text(json.dumps(doc))
    assert (
        forge_main(["merge", "--out", str(outputs / "m"), str(outputs / "shard-1"), str(other)])
        == 0
    )
    err = capsys.readouterr().err
    assert "different vLLM versions" in err and "vLLM 0.31.0" in err and str(path) in err

    assert forge_main(["merge", "--out", str(outputs / "m1"), str(outputs / "shard-1")]) == 0
    assert "shard 2/2 missing" in capsys.readouterr().err


def test_nothing_to_merge_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert forge_main(["merge", "--out", str(tmp_path / "out"), str(tmp_path / "empty")]) == 1
    assert "no shard outputs" in capsys.readouterr().err
    same = str(tmp_path / "empty")
    assert forge_main(["merge", "--out", same, same]) == 1
    assert "is also an input" in capsys.readouterr().err


def test_junit_counts_add_up() -> None:
    def suite(tests: int, failures: int, name: str) -> ET.Element:
        root = ET.Element("testsuites", {"name": "pytest tests"})
        s = ET.SubElement(
            root,
            "testsuite",
            {
                "name": "pytest",
                "tests": str(tests),
                "failures": str(failures),
                "errors": "0",
                "skipped": "1",
                "time": "1.5",
                "timestamp": f"2026-01-0{tests}T00:00:00",
            },
        )
        for i in range(tests):
            ET.SubElement(s, "testcase", {"classname": name, "name": f"t{i}"})
        return root

    merged = merge_junit([suite(3, 1, "recipes.b.yaml"), suite(2, 0, "recipes.a.yaml")])
    (s,) = merged.iter("testsuite")
    assert (s.get("tests"), s.get("failures"), s.get("skipped")) == ("5", "1", "2")
    assert s.get("time") == "3.000" and s.get("timestamp") == "2026-01-02T00:00:00"
    assert [c.get("classname") for c in s.iter("testcase")][:2] == ["recipes.a.yaml"] * 2


# ------------------------------------------------------------------ completeness (hardware)


def _deselect(run: Path, tests: list[tuple[str, str]], host: str) -> None:
    """Make ``run`` a --forge-hardware-only shard that deselected ``tests`` on ``host``."""
    (path,) = (run / ".forge").rglob("results.json")
    doc = json.loads(path.read_text())
    doc["hardware_deselected"] = [
        {
            "test": f"recipes/{recipe}.yaml::{workload}",
            "recipe": recipe,
            "workload": workload,
            "reason": f"recipe {recipe} needs other hardware: this host has {host}",
        }
        for recipe, workload in tests
    ]
    path.write_text(json.dumps(doc))


def _pairs(recipe: str) -> list[tuple[str, str]]:
    return [(recipe, "short"), (recipe, "long")]


def test_a_recipe_no_runner_ran_is_named_and_fails_the_strict_merge(
    outputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = outputs / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    shards = [outputs / "shard-1", outputs / "shard-2"]
    (ran_on_2,) = {r["recipe"] for r in _results(shards[1])["results"]}
    # Shard 1 deselected what shard 2 ran (fine); both deselected a T4 recipe (no runner).
    _deselect(shards[0], _pairs(ran_on_2) + _pairs("t4-recipe"), "H100 (first runner)")
    _deselect(shards[1], _pairs("t4-recipe"), "H100 (second runner)")
    merged = outputs / "merged"
    args = ["merge", "--strict", "--out", str(merged), *map(str, shards)]
    assert forge_main(args) == 1
    err = capsys.readouterr().err
    assert "forge merge: error: 2 gate test(s) of 1 recipe(s) ran on no runner" in err
    assert "t4-recipe (short, long): recipe t4-recipe needs other hardware" in err
    # Every runner's reason, each once.
    assert "(first runner); recipe t4-recipe" in err and err.count("(second runner)") == 1
    assert "fix: add a runner class" in err and ran_on_2 not in err
    # Everything is written all the same; the merged report counts them as not judged.
    doc = json.loads((merged / "results.json").read_text())
    assert [d["test"] for d in doc["hardware_deselected"]] == [
        "recipes/t4-recipe.yaml::short",
        "recipes/t4-recipe.yaml::long",
    ]
    unrun = [u for u in doc["not_measured"] if "t4-recipe" in u["test"]]
    assert [u["outcome"] for u in unrun] == ["failed", "failed"]
    assert "every runner deselected it for other hardware" in unrun[0]["reason"]
    assert doc["not_judged"] == _results(outputs / "full")["not_judged"] + 2
    assert "recipes/t4-recipe.yaml::short" in summary.read_text()

    # --no-strict: a warning, exit 0, reported as skipped.
    again = outputs / "merged-again"
    assert forge_main(["merge", "--no-strict", "--out", str(again), *map(str, shards)]) == 0
    assert "forge merge: warning: 2 gate test(s) of 1 recipe(s)" in capsys.readouterr().err
    doc = json.loads((again / "results.json").read_text())
    assert {u["outcome"] for u in doc["not_measured"] if "t4-recipe" in u["test"]} == {"skipped"}

    # Neither given: strict when CI is set, as the gate is.
    monkeypatch.setenv("CI", "true")
    assert forge_main(["merge", "--out", str(outputs / "m-ci"), *map(str, shards)]) == 1
    monkeypatch.setenv("CI", "")
    assert forge_main(["merge", "--out", str(outputs / "m-local"), *map(str, shards)]) == 0


def test_a_recipe_deselected_on_one_shard_and_run_on_another_is_complete(
    outputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = [outputs / "shard-1", outputs / "shard-2"]
    (ran_on_2,) = {r["recipe"] for r in _results(shards[1])["results"]}
    _deselect(shards[0], _pairs(ran_on_2), "H100")
    _deselect(shards[1], [], "H100")
    merged = outputs / "merged"
    assert forge_main(["merge", "--strict", "--out", str(merged), *map(str, shards)]) == 0
    assert "ran on no runner" not in capsys.readouterr().err
    doc = json.loads((merged / "results.json").read_text())
    assert doc["hardware_deselected"] == []  # the option was on; nothing left unrun
    assert doc["not_judged"] == _results(outputs / "full")["not_judged"]


def test_without_the_option_the_merged_file_says_null(outputs: Path) -> None:
    merged = outputs / "merged"
    shards = [str(outputs / "shard-1"), str(outputs / "shard-2")]
    assert forge_main(["merge", "--strict", "--out", str(merged), *shards]) == 0
    assert json.loads((merged / "results.json").read_text())["hardware_deselected"] is None


def test_shards_are_counted_per_runner_class() -> None:
    h100 = "NVIDIA H100 80GB HBM3 x1 (driver 550.54.15, sm 9.0)"
    t4 = "Tesla T4 x1 (driver 535.104.05, sm 7.5)"

    def doc(shard: str, hardware: str, deselected: list[Any] | None) -> dict[str, Any]:
        return {
            "pytest_forge": "0",
            "results": [],
            "shard": shard,
            "hardware": hardware,
            "hardware_deselected": deselected,
        }

    def warnings(*docs: dict[str, Any]) -> list[str]:
        paths = [Path(f"shard-{i}/results.json") for i in range(len(docs))]
        return mismatches(ShardFiles(results=paths, results_docs=list(docs)))

    # Two H100 runners (another driver is the same class) split their recipes 1/2, 2/2;
    # the T4 runner runs its own 1/1.
    h100_other_driver = h100.replace("550.54.15", "550.90.07")
    assert (
        warnings(doc("1/2", h100, []), doc("2/2", h100_other_driver, []), doc("1/1", t4, [])) == []
    )
    assert warnings(doc("1/2", h100, []), doc("1/1", t4, [])) == [
        "shard 2/2 on NVIDIA H100 80GB HBM3 (sm 9.0) missing: its recipes are not in the merge"
    ]
    # Without --forge-hardware-only, one split over every runner, as before.
    (mixed,) = warnings(doc("1/2", h100, None), doc("1/1", t4, None))
    assert mixed.startswith("shards of different splits (1/1, 1/2)")
