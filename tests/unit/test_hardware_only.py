"""``--forge-hardware-only``: a runner deselects the recipes its hardware cannot run, so
strict mode judges what it can.

The runner here is an H100 host: a fake ``nvidia-smi`` on PATH answers the real detection
(hardware.detect_hardware), and the recipes' matching is the real one. No vLLM boots: the
project's conftest.py hands every "booted" recipe the fake OpenAI-compatible server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_openai_server import FakeServer, running_fake_server

pytest_plugins = ["pytester"]

CACHE = os.environ.get("FORGE_CACHE_DIR") or str(Path.home() / ".cache" / "pytest-forge")
H100_SMI = "NVIDIA H100 80GB HBM3, 81559, 550.54.15, 9.0"
RECIPE = """\
id: {id}
model: fake-model
hardware:
{hardware}
gates:
  accuracy_scorer: agreement
  latency_tolerance: 9
"""
HARDWARE = {
    "cpu": "  vendor: cpu",
    "h100": "  vendor: nvidia\n  gpu_type: H100\n  count: 1",
    "t4": "  vendor: nvidia\n  gpu_type: Tesla T4\n  count: 1",
}
SIDE = "mode: closed\nconcurrency: 2\nwarmup: 0\nrepeats: 2\n"
# A booted recipe's server is the fake: the plugin's boot path without vLLM.
CONFTEST = """\
import os

from pytest_forge.endpoint import Endpoint
from pytest_forge.session import ForgeSession


def _fake_boot(self, recipe):
    return Endpoint(os.environ["FORGE_TEST_FAKE_URL"]), None


ForgeSession.endpoint_for = _fake_boot
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with running_fake_server(token_delay_s=0.0005) as server:
        yield server


def write_recipe(root: Path, rid: str, hardware: str) -> None:
    (root / "recipes" / f"{rid}.yaml").write_text(
        RECIPE.format(id=rid, hardware=HARDWARE[hardware])
    )


@pytest.fixture
def h100_runner(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fake: FakeServer
) -> pytest.Pytester:
    """A project with a CPU, an H100 and a T4 recipe, on a (fake) H100 host."""
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.setenv("FORGE_TEST_FAKE_URL", fake.url)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    bin_dir = pytester.path / "fake-bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{H100_SMI}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = pytester.path
    (root / "conftest.py").write_text(CONFTEST)
    (root / "recipes").mkdir()
    (root / "workloads").mkdir()
    for rid in ("cpu", "h100", "t4"):
        write_recipe(root, rid, rid)
    for name in ("short", "long"):
        lines = [
            json.dumps({"prompt": f"{name} {i}", "expected_output_tokens": 6}) for i in range(3)
        ]
        (root / "workloads" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        (root / "workloads" / f"{name}.yaml").write_text(SIDE)
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def results_json(project: pytest.Pytester) -> dict[str, Any]:
    (path,) = (project.path / ".forge" / "gate").glob("*/results.json")
    return json.loads(path.read_text())


def collected(result: pytest.RunResult) -> list[str]:
    return sorted(line for line in result.outlines if "::" in line)


def test_without_the_option_strict_mode_fails_other_hardware(h100_runner: pytest.Pytester) -> None:
    # The problem the option solves: on an H100 runner the T4 recipe is not judged.
    result = run(h100_runner, "--forge-strict", "-k", "t4")
    result.assert_outcomes(failed=2)
    assert "not judged (strict mode): recipe t4 needs other hardware" in result.stdout.str()


def test_other_hardware_is_deselected_and_strict_mode_passes_what_remains(
    h100_runner: pytest.Pytester,
) -> None:
    result = run(h100_runner, "--forge-hardware-only", "--forge-strict", "--forge-update-baselines")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    # Deselected (pytest's count), not skipped: nothing for strict mode to fail.
    result.assert_outcomes(passed=2, deselected=4)
    out = result.stdout.str()
    assert "SKIPPED" not in out and "not judged" not in out
    assert "forge: 2 recipe(s) for other hardware deselected: cpu, t4" in out
    # results.json says what this runner left to others, for `forge merge`.
    doc = results_json(h100_runner)
    assert {r["recipe"] for r in doc["results"]} == {"h100"}
    deselected = doc["hardware_deselected"]
    assert sorted((d["recipe"], d["workload"]) for d in deselected) == [
        ("cpu", "long"),
        ("cpu", "short"),
        ("t4", "long"),
        ("t4", "short"),
    ]
    (t4,) = [d for d in deselected if d["test"] == "recipes/t4.yaml::short"]
    assert "gpu_type 'Tesla T4'" in t4["reason"] and "H100" in t4["reason"]
    (cpu,) = [d for d in deselected if d["test"] == "recipes/cpu.yaml::short"]
    assert "vendor cpu" in cpu["reason"]


def test_the_ini_key_deselects_too_and_without_it_nothing_is(h100_runner: pytest.Pytester) -> None:
    plain = run(h100_runner, "--collect-only", "-q")
    assert len(collected(plain)) == 6 and "deselected" not in plain.stdout.str()
    (h100_runner.path / "pytest.ini").write_text("[pytest]\nforge_hardware_only = true\n")
    result = run(h100_runner, "--collect-only", "-q")
    assert collected(result) == ["recipes/h100.yaml::long", "recipes/h100.yaml::short"]
    assert "2/6 tests collected (4 deselected)" in result.stdout.str()


def test_a_running_endpoint_is_not_this_machine_so_nothing_is_deselected(
    h100_runner: pytest.Pytester,
) -> None:
    # --forge-endpoint never checks this machine's hardware (the server runs elsewhere).
    result = run(
        h100_runner,
        "--collect-only",
        "-q",
        "--forge-hardware-only",
        "--forge-endpoint=http://127.0.0.1:9",
    )
    assert len(collected(result)) == 6 and "deselected" not in result.stdout.str()


def test_runners_of_one_class_split_that_class_s_recipes(h100_runner: pytest.Pytester) -> None:
    # Hardware first, then the shard: each of two H100 runners gets an H100 recipe. (Split
    # first, these five files would put both H100 recipes in shard 2/2 and leave 1/2 empty.)
    write_recipe(h100_runner.path, "ht4", "t4")
    write_recipe(h100_runner.path, "hz100", "h100")
    shares = []
    for i in (1, 2):
        args = ("--collect-only", "-q", "--forge-hardware-only", f"--forge-shard={i}/2")
        result = run(h100_runner, *args)
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()
        shares.append({n.split("::")[0] for n in collected(result)})
    assert shares == [{"recipes/h100.yaml"}, {"recipes/hz100.yaml"}]


def test_under_xdist_the_controller_reports_what_the_workers_deselected(
    h100_runner: pytest.Pytester,
) -> None:
    pytest.importorskip("xdist")
    result = run(
        h100_runner,
        "-n",
        "2",
        "--forge-hardware-only",
        "--forge-strict",
        "--forge-update-baselines",
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "forge: 2 recipe(s) for other hardware deselected: cpu, t4" in result.stdout.str()
    deselected = results_json(h100_runner)["hardware_deselected"]
    assert sorted(d["test"] for d in deselected) == [
        "recipes/cpu.yaml::long",
        "recipes/cpu.yaml::short",
        "recipes/t4.yaml::long",
        "recipes/t4.yaml::short",
    ]


def test_results_json_says_null_when_the_option_is_off(h100_runner: pytest.Pytester) -> None:
    result = run(h100_runner, "-k", "h100 and short", "--forge-no-strict")
    result.assert_outcomes(passed=1, deselected=5)
    assert results_json(h100_runner)["hardware_deselected"] is None
