"""forge-gate.yml's file plumbing, run: the shard steps' own commands write every report,
the upload paths pick them all up, and the merge step's own command combines them.

The gate's pytest steps run as written in the workflow, for shards 1/2 and 2/2 in two
checkouts (as two runners would), against a fake OpenAI-compatible server instead of vLLM;
what each shard's upload step names is copied into shards/<artifact>/ as
actions/download-artifact lays it out; then the merge step runs `forge merge`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_openai_server import FakeServer, running_fake_server
from tests.unit.test_workflows import load, steps, uses

RECIPE = """\
id: {id}
model: fake-model
hardware: {{vendor: cpu}}
config: {{max_num_seqs: 8}}
gates: {{accuracy_scorer: agreement}}
"""
SIDE = "mode: closed\nconcurrency: 2\nwarmup: 1\nrepeats: 2\n"
WORKLOAD = "".join(
    json.dumps({"id": f"r{i}", "prompt": f"prompt {i}", "expected_output_tokens": 8}) + "\n"
    for i in range(4)
)
RECIPES = ("alpha", "beta", "gamma")
# pytest's HOME moves in some set-ups; keep vLLM's argument list cached once per machine.
CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.0005) as server:
        yield server


def checkout(root: Path, fake: FakeServer) -> Path:
    """A runner's fresh checkout: recipes, workloads, and .venv/bin/pytest pointing at the
    fake server (the only difference from the workflow's real command)."""
    root.mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = recipes\n")
    (root / "recipes").mkdir()
    (root / "workloads").mkdir()
    for recipe in RECIPES:
        (root / "recipes" / f"{recipe}.yaml").write_text(RECIPE.format(id=recipe))
    (root / "workloads" / "short.jsonl").write_text(WORKLOAD)
    (root / "workloads" / "short.yaml").write_text(SIDE)
    shim = root / ".venv" / "bin" / "pytest"
    shim.parent.mkdir(parents=True)
    shim.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m pytest -p no:cacheprovider -p no:randomly '
        f'--forge-endpoint={fake.url} "$@"\n'
    )
    shim.chmod(0o755)
    return root


def run_script(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A step's script as Actions runs it (bash -eo pipefail), without CI's strict mode:
    the fake recipes have no baselines, and this test is about the files."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CI"))}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, "FORGE_CACHE_DIR": CACHE, **env},
    )


def absolute_gate_step(gate: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in steps(gate) if s.get("if") == "needs.commit.outputs.ab != 'true'"]
    return step


def download(upload: dict[str, Any], workspace: Path, into: Path) -> list[str]:
    """Copy what an upload step names, relative to the workspace, as the artifact holds it.
    Returns the listed paths that did not exist."""
    missing = []
    for item in upload["with"]["path"].split():
        source = workspace / item
        if not source.exists():
            missing.append(item)
        elif source.is_dir():
            shutil.copytree(source, into / item.rstrip("/"))
        else:
            (into / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / item)
    return missing


def test_shards_write_every_uploaded_report_and_the_merge_step_combines_them(
    tmp_path: Path, fake: FakeServer
) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    pytest.importorskip("matplotlib")  # the HTML report's plots
    data = load("forge-gate.yml")
    gate, merge = data["jobs"]["gate"], data["jobs"]["merge"]
    (shard_upload,) = uses(gate, "actions/upload-artifact")
    (fetch,) = uses(merge, "actions/download-artifact")
    merge_ws = tmp_path / "merge"
    shards_dir = merge_ws / fetch["with"]["path"]
    shards = gate["strategy"]["matrix"]["shard"]
    for shard in shards:
        workspace = checkout(tmp_path / f"runner-{shard}", fake)
        env = {"FORGE_SHARD": f"{shard}/{len(shards)}"}
        proc = run_script(absolute_gate_step(gate)["run"], workspace, env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        name = shard_upload["with"]["name"].replace("${{ matrix.shard }}", str(shard))
        missing = download(shard_upload, workspace, shards_dir / name)
        assert missing == [], f"shard {shard} did not write {missing}"
        assert list((workspace / ".forge" / "gate").glob("*/results.json"))
        # And the other way round: everything the shard wrote is uploaded
        # (forge-bench.smaller.json too). .benchmarks is pytest-benchmark's empty store.
        checked_out = {".venv", "recipes", "workloads", "pytest.ini", ".benchmarks"}
        written = {p.name for p in workspace.iterdir()} - checked_out
        listed = {item.split("/")[0] for item in shard_upload["with"]["path"].split()}
        assert written <= listed, f"shard {shard} wrote {sorted(written - listed)}"

    merge_ws.mkdir(exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    forge = bin_dir / "forge"  # what `pip install ".[report]"` puts on PATH
    forge.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pytest_forge.cli "$@"\n')
    forge.chmod(0o755)
    summary = tmp_path / "step_summary.md"
    (merge_run,) = [s for s in steps(merge) if "forge merge" in s.get("run", "")]
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    proc = run_script(merge_run["run"], merge_ws, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    (merged_upload,) = uses(merge, "actions/upload-artifact")
    assert download(merged_upload, merge_ws, tmp_path / "merged-artifact") == []
    out = merge_ws / merge_run["run"].split("--out", 1)[1].split()[0]
    # One set, as if one runner had run every recipe.
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["recipe"] for r in results["results"]) == sorted(RECIPES)
    markdown = summary.read_text()
    for recipe in RECIPES:
        assert f"| {recipe} | short |" in markdown
