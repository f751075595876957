"""The verdict on real vLLM: strict mode, and A/B runs against a git ref on this runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.project import make_project, processes_with_marker, run_pytest, write_tiny_recipe

pytestmark = pytest.mark.e2e


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(root), "-c", "user.email=e2e@example.com", "-c", "user.name=e2e", *args],
        check=True,
        capture_output=True,
    )


def _results(root: Path) -> dict:
    (path,) = sorted((root / ".forge" / "gate").glob("*/results.json"))[-1:]
    return json.loads(path.read_text())


def test_strict_mode_fails_a_run_without_a_baseline(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path)
    run = run_pytest(root, "--forge-strict", "-k", "mini-accuracy")
    assert run.returncode == 1, run.output[-4000:]
    assert "not judged (strict mode)" in run.output
    assert "no committed baseline" in run.output and "--forge-update-baselines" in run.output
    doc = _results(root)
    assert (doc["judged"], doc["not_judged"]) == (0, 1)
    # It measured all the same: nothing measured is lost.
    assert doc["results"][0]["metrics"]["output_throughput"] > 0
    assert processes_with_marker(run.marker) == []


def test_ab_same_recipe_passes_and_a_real_regression_fails(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = make_project(tmp_path)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "the committed recipe")

    # A/A: the working tree is the committed recipe, and side A's vLLM is started through
    # --forge-ab-python (here the same interpreter; forge-upgrade.yml gives the old pin's).
    # Throughput is judged at 25 % here: 16 requests a repeat on 2 shared cores;
    # benchmarks/verdict_power.py measures what the tolerance can be on a steady workload.
    same = run_pytest(
        root,
        "--forge-ab-ref=HEAD",
        f"--forge-ab-python={sys.executable}",
        "-k",
        "mini-chat",
        "--forge-tolerance=0.25",
    )
    assert same.returncode == 0, same.output[-4000:]
    assert f"A = recipe tiny-llama-cpu at HEAD with vLLM from {sys.executable}" in same.output
    assert "forge: 2 vLLM server boot(s)" in same.output  # A and B, both up at once
    row = _results(root)["results"][0]
    assert row["reference"] == "ab" and row["verdict"] == "pass"
    throughput = row["comparisons"]["throughput"]
    assert throughput["paired"] and throughput["outcome"] == "pass"
    assert throughput["ci_low"] >= 0.75 and throughput["n_current"] >= 4
    assert row["reference_metrics"]["output_throughput"] > 0

    # A/B: one sequence at a time instead of 16 serialises the 4 concurrent users.
    write_tiny_recipe(root, "tiny-llama-cpu", ["mini-chat", "mini-accuracy"], max_num_seqs=1)
    regressed = run_pytest(root, "--forge-ab-ref", "HEAD", "-k", "mini-chat")
    assert regressed.returncode == 1, regressed.output[-4000:]
    out = regressed.output
    assert "throughput: output_throughput B" in out and "vs A" in out
    assert "paired" in out and "CI" in out and "with confidence" in out
    row = _results(root)["results"][0]
    assert row["verdict"] == "fail"
    assert row["comparisons"]["throughput"]["ci_high"] < 0.95
    assert processes_with_marker(regressed.marker) == []
