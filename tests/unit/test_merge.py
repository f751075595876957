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
