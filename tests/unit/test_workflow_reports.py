"""forge-gate.yml's file plumbing, run: the shard steps' own commands write every report,
the upload paths pick them all up, and the merge step's own command combines them.

The gate's pytest steps run as written in the workflow, once per matrix entry in its own
checkout (as each runner would), on the class its runner label names: for a GPU class a
fake ``nvidia-smi`` answers pytest-forge's real hardware detection, the cpu class's runner
has none (and sees no GPU), and a conftest.py hands each "booted" recipe a fake
OpenAI-compatible server instead of vLLM. Every checkout holds the recipes of every class,
the bundled recipes' ids among them, so each runner deselects the other classes'
(--forge-hardware-only).
What each job's upload step names is copied into shards/<artifact>/ as
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
from tests.unit.test_workflows import load, recipe_classes, steps, uses

RECIPE = """\
id: {id}
model: fake-model
hardware: {hardware}
config: {{max_num_seqs: 8}}
gates: {{accuracy_scorer: agreement}}
"""
# What a runner of each class's nvidia-smi says (None: a CPU runner has no nvidia-smi),
# and the hardware its recipes name.
RUNNERS: dict[str, tuple[str | None, str]] = {
    "h100": (
        "NVIDIA H100 80GB HBM3, 81559, 550.54.15, 9.0",
        "{vendor: nvidia, gpu_type: H100, count: 1}",
    ),
    "t4": ("Tesla T4, 15360, 535.104.05, 7.5", "{vendor: nvidia, gpu_type: Tesla T4, count: 1}"),
    "cpu": (None, "{vendor: cpu, count: 1}"),
}
# The only difference from a real runner: the recipes' servers are the fake, not vLLM.
CONFTEST = """\
import os

from pytest_forge.endpoint import Endpoint
from pytest_forge.session import ForgeSession


def _fake_boot(self, recipe):
    return Endpoint(os.environ["FORGE_TEST_FAKE_URL"]), None


ForgeSession.endpoint_for = _fake_boot
"""
SIDE = "mode: closed\nconcurrency: 2\nwarmup: 1\nrepeats: 2\n"
WORKLOAD = "".join(
    json.dumps({"id": f"r{i}", "prompt": f"prompt {i}", "expected_output_tokens": 8}) + "\n"
    for i in range(4)
)
# pytest's HOME moves in some set-ups; keep vLLM's argument list cached once per machine.
CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.0005) as server:
        yield server


def recipes_of(matrix: list[dict[str, Any]]) -> dict[str, str]:
    """Recipe id -> its runner class: the bundled recipes (recipes/, by id and class),
    and more, so that each class has one more recipe than it has shards."""
    shards: dict[str, int] = {}
    for entry in matrix:
        shards[entry["runner-label"]] = entry["shards"]
    recipes = recipe_classes()
    for label, n in shards.items():
        recipes |= {f"{label}-{i}": label for i in range(n + 1)}
    return recipes


def checkout(root: Path, fake: FakeServer, label: str, recipes: dict[str, str]) -> Path:
    """A fresh checkout on a runner of class ``label``: every class's recipes, workloads,
    and .venv/bin/pytest seeing that class's GPU (or none: cpu) and serving from the fake
    server."""
    assert label in RUNNERS, f"how a runner of class {label} looks is needed here"
    root.mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = recipes\n")
    (root / "conftest.py").write_text(CONFTEST)
    (root / "recipes").mkdir()
    (root / "workloads").mkdir()
    for recipe, cls in recipes.items():
        text = RECIPE.format(id=recipe, hardware=RUNNERS[cls][1])
        (root / "recipes" / f"{recipe}.yaml").write_text(text)
    (root / "workloads" / "short.jsonl").write_text(WORKLOAD)
    (root / "workloads" / "short.yaml").write_text(SIDE)
    smi = RUNNERS[label][0]
    if smi is None:
        # A CPU runner: no fake nvidia-smi, and no GPU of the machine running this test
        # is visible (an empty device list hides every one).
        devices = "export CUDA_VISIBLE_DEVICES= ROCR_VISIBLE_DEVICES=\n"
    else:
        gpu = root.parent / f"{root.name}-gpu"  # outside the workspace, as the driver is
        gpu.mkdir()
        (gpu / "nvidia-smi").write_text(f"#!/bin/sh\necho '{smi}'\n")
        (gpu / "nvidia-smi").chmod(0o755)
        devices = f'unset CUDA_VISIBLE_DEVICES\nexport PATH="{gpu}:$PATH"\n'
    shim = root / ".venv" / "bin" / "pytest"
    shim.parent.mkdir(parents=True)
    shim.write_text(
        f"#!/bin/sh\n{devices}"
        f"export FORGE_TEST_FAKE_URL={fake.url}\n"
        f'exec "{sys.executable}" -m pytest -p no:cacheprovider -p no:randomly "$@"\n'
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


def forge_on_path(tmp_path: Path) -> dict[str, str]:
    """The environment of a step that runs `forge` (what `pip install ".[report]"` puts on
    PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    forge = bin_dir / "forge"
    forge.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pytest_forge.cli "$@"\n')
    forge.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


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
    matrix = gate["strategy"]["matrix"]["include"]
    recipes = recipes_of(matrix)
    artifacts: dict[str, str] = {}  # artifact name -> runner class
    ran_on: dict[str, str] = {}  # recipe -> the runner class whose shard ran it
    for entry in matrix:
        label, shard = entry["runner-label"], entry["shard"]
        workspace = checkout(tmp_path / f"runner-{label}-{shard}", fake, label, recipes)
        env = {"FORGE_SHARD": f"{shard}/{entry['shards']}"}
        proc = run_script(absolute_gate_step(gate)["run"], workspace, env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # Only its class's recipes ran; the others were deselected, not failed or skipped.
        others = sorted(r for r, cls in recipes.items() if cls != label)
        assert f"for other hardware deselected: {', '.join(others)}" in proc.stdout
        name = shard_upload["with"]["name"].replace("${{ matrix.runner-label }}", label)
        name = name.replace("${{ matrix.shard }}", str(shard))
        artifacts[name] = label
        missing = download(shard_upload, workspace, shards_dir / name)
        assert missing == [], f"{name} did not write {missing}"
        (results,) = (workspace / ".forge" / "gate").glob("*/results.json")
        ran = {r["recipe"] for r in json.loads(results.read_text())["results"]}
        assert ran and {recipes[r] for r in ran} == {label}
        ran_on |= dict.fromkeys(ran, label)
        # And the other way round: everything the shard wrote is uploaded
        # (forge-bench.smaller.json too). .benchmarks is pytest-benchmark's empty store.
        checked_out = {".venv", "recipes", "workloads", "pytest.ini", "conftest.py"}
        written = {p.name for p in workspace.iterdir()} - checked_out - {".benchmarks"}
        written -= {"__pycache__"}  # conftest.py's, a stand-in's by-product
        listed = {item.split("/")[0] for item in shard_upload["with"]["path"].split()}
        assert written <= listed, f"{name} wrote {sorted(written - listed)}"
    assert len(artifacts) == len(matrix)  # no job's artifact replaces another's
    # Every recipe ran on its own class's runner: the bundled CPU recipe on the cpu one.
    assert ran_on == recipes
    assert ran_on["tiny-llama-cpu"] == "cpu"

    merge_ws.mkdir(exist_ok=True)
    summary = tmp_path / "step_summary.md"
    (merge_run,) = [s for s in steps(merge) if "forge merge" in s.get("run", "")]
    forge_env = forge_on_path(tmp_path)
    env = {**forge_env, "GITHUB_STEP_SUMMARY": str(summary)}
    proc = run_script(merge_run["run"], merge_ws, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every class had its runner: no recipe (the CPU one included) is named as unrun.
    assert "ran on no runner" not in proc.stdout + proc.stderr

    (merged_upload,) = uses(merge, "actions/upload-artifact")
    assert download(merged_upload, merge_ws, tmp_path / "merged-artifact") == []
    out = merge_ws / merge_run["run"].split("--out", 1)[1].split()[0]
    # One set, as if one runner had run every recipe.
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["recipe"] for r in results["results"]) == sorted(recipes)
    assert results["hardware_deselected"] == []
    markdown = summary.read_text()
    for recipe in recipes:
        assert f"| {recipe} | short |" in markdown

    # A class without its runners' artifacts (no runner with that label, or no entry),
    # whichever class it is: the merge step fails, naming that class's recipes (and only
    # those), after writing the rest.
    for missing_class in sorted(set(artifacts.values())):
        partial = tmp_path / f"merge-without-{missing_class}"
        for name, label in artifacts.items():
            if label != missing_class:
                shutil.copytree(shards_dir / name, partial / fetch["with"]["path"] / name)
        proc = run_script(merge_run["run"], partial, forge_env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "ran on no runner" in proc.stderr
        for recipe, cls in recipes.items():
            named = f"  {recipe} (short): recipe {recipe} needs other hardware" in proc.stderr
            assert named is (cls == missing_class), (missing_class, recipe)
        assert (partial / out.name / "results.json").is_file()
