"""`--forge-resume` resumes the tune, measuring as the run began: the options come from the
run's config.json, and one given again with another value is refused, naming both."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_forge.errors import ForgeError
from pytest_forge.hardware import detect_hardware
from pytest_forge.recipe import Recipe
from pytest_forge.session import ForgeConfig
from pytest_forge.tune.options import TuneOptions
from pytest_forge.tune.settings import resumed_settings
from pytest_forge.tune.store import RunStore
from pytest_forge.tune.tuner import Tuner
from pytest_forge.vllm_args import installed_vllm_version
from tests.unit.test_plugin import CACHE, RECIPE, SIDE, _workload
from tests.unit.test_tuner import SEQS_64, Landscape, ScriptedAgent, measured_with

pytest_plugins = ["pytester"]

HERE = "cpu: test cpu (8 cores, avx2)"


def _forge_config(tmp_path: Path, **kw: object) -> ForgeConfig:
    return ForgeConfig(
        recipes_dir=tmp_path / "recipes",
        workloads_dir=tmp_path / "workloads",
        run_root=tmp_path / ".forge",
        **kw,  # type: ignore[arg-type]
    )


def _stored(tmp_path: Path) -> dict[str, object]:
    return {
        "recipe_id": "alpha",
        "agent": "playbook",
        "budget": 3,
        "max_hours": 2.0,
        "max_dollars": None,
        "min_improvement": 0.05,
        "objective": "latency",
        "playbook": None,
        "patience": 2,
        "repeats": 2,
        "accuracy_floor": 0.5,
        "workloads_dir": str(tmp_path / "old-workloads"),
        "workloads": ["chat"],
        "boot_timeout_s": 60.0,
        "hardware": HERE,
        "vllm": "0.32.0",
    }


def test_a_resumed_tune_takes_every_setting_from_the_run(tmp_path: Path) -> None:
    # This command line sets other values, but none explicitly: the run's are used.
    config = _forge_config(tmp_path, repeats=7, accuracy_floor=0.9, boot_timeout_s=900.0)
    s = resumed_settings(config, _stored(tmp_path), tmp_path / "001_x", "playbook", HERE, "0.32.0")
    assert s.options == TuneOptions(
        budget=3, max_hours=2.0, min_improvement=0.05, objective="latency", patience=2
    )
    assert (s.repeats, s.accuracy_floor, s.boot_timeout_s) == (2, 0.5, 60.0)
    assert s.workloads_dir == tmp_path / "old-workloads"
    assert s.workloads == ("chat",)


def test_a_conflicting_value_given_again_is_refused_naming_both(tmp_path: Path) -> None:
    config = _forge_config(
        tmp_path,
        repeats=5,
        accuracy_floor=0.5,  # the same as stored: no conflict
        objective="throughput",
        explicit=frozenset({"forge_repeats", "forge_accuracy_floor", "forge_objective"}),
    )
    with pytest.raises(ForgeError) as err:
        resumed_settings(config, _stored(tmp_path), tmp_path / "001_x", "playbook", HERE, "0.32.0")
    message = str(err.value)
    where = tmp_path / "001_x" / "config.json"
    assert f"--forge-repeats 5 on this command line, repeats 2 in {where}" in message
    assert f"--forge-objective throughput on this command line, objective latency in {where}" in (
        message
    )
    assert "accuracy" not in message
    assert "start a new run (without --forge-resume)" in message


def test_other_hardware_or_vllm_is_refused(tmp_path: Path) -> None:
    config = _forge_config(tmp_path)
    stored = _stored(tmp_path)
    with pytest.raises(ForgeError, match="the run measured on 'cpu: test cpu"):
        resumed_settings(
            config, stored, tmp_path / "r", "playbook", "cpu: other (2 cores)", "0.32.0"
        )
    with pytest.raises(
        ForgeError, match=r"the run measured vLLM 0\.32\.0, this environment has 0\.33"
    ):
        resumed_settings(config, stored, tmp_path / "r", "playbook", HERE, "0.33.0")


# -- end to end: `pytest --forge-resume` ---------------------------------------------------
@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """One recipe (alpha) and its unfinished tune run: the baseline and one rejected
    experiment of a budget of 1 stored, so resuming it measures nothing (no vLLM here)."""
    monkeypatch.setenv("FORGE_CACHE_DIR", CACHE)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)  # the default agent: playbook
    (pytester.path / "recipes").mkdir()
    (pytester.path / "workloads").mkdir()
    recipe_path = pytester.path / "recipes" / "alpha.yaml"
    recipe_path.write_text(RECIPE.format(id="alpha"))
    (pytester.path / "workloads" / "short.jsonl").write_text(_workload(4))
    (pytester.path / "workloads" / "short.yaml").write_text(SIDE)
    found = installed_vllm_version()
    store = RunStore.create(
        pytester.path / ".forge" / "runs",
        {
            **_stored(pytester.path),
            "budget": 1,
            "objective": "throughput",
            "workloads_dir": str(pytester.path / "workloads"),
            "workloads": ["short"],
            "hardware": detect_hardware().describe(),
            "vllm": found[1] if found else None,
        },
    )
    tuner = Tuner(
        Recipe.load(recipe_path),
        ScriptedAgent([SEQS_64]),
        store,
        TuneOptions(budget=1),
        hardware=None,
        hardware_class="CPU",
        search_space=None,
        evaluate=Landscape(),
        measured_with=measured_with,
    )
    tuner.run_baseline()
    assert tuner.run_slot(1).status == "rejected"
    return pytester


def _run_dir(project: pytest.Pytester) -> Path:
    (run,) = (project.path / ".forge" / "runs").iterdir()
    return run


def test_resume_alone_resumes_the_tune_with_the_stored_options(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--forge-resume")
    out = result.stdout.str()
    # Before: --forge-resume without --forge-tune ran the gate (and booted vLLM).
    assert "tune[baseline] PASSED" in out, out
    assert "tune[01] REJECTED" in out  # the stored, rejected experiment
    assert "tune[02]" not in out  # the run's budget (1), not the default (8)
    assert "tune[winner] PASSED" in out
    assert "alpha: no candidate beat the committed baseline" in out
    assert result.ret == 0
    run = _run_dir(project)  # resumed, not a new run
    assert (run / "completed.json").is_file()
    assert [r["exp"] for r in RunStore.open(run).experiments()] == [0, 1]


@pytest.mark.parametrize("where", ["command line", "ini file"])
def test_resume_refuses_an_option_that_differs_from_the_run(
    project: pytest.Pytester, where: str
) -> None:
    args = ["-p", "no:cacheprovider", "-v", "--forge-resume"]
    if where == "ini file":
        project.makeini("[pytest]\nforge_repeats = 5\n")
    else:
        args.append("--forge-repeats=5")
    result = project.runpytest_subprocess(*args)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    run = _run_dir(project)
    assert f"--forge-repeats 5 on this command line, repeats 2 in {run / 'config.json'}" in out
    assert "tune[winner] FAILED" in out
    assert not (run / "completed.json").exists()  # the run is left resumable
    assert json.loads((run / "config.json").read_text())["repeats"] == 2


def test_a_second_resume_of_a_run_in_use_fails_naming_the_holder(
    project: pytest.Pytester,
) -> None:
    run = _run_dir(project)
    holder = RunStore.open(run)
    holder.claim()  # as a first `pytest --forge-resume` still tuning it would
    try:
        result = project.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--forge-resume")
    finally:
        holder.release()
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert f"tune run {run} is in use by pid {os.getpid()}" in out
    assert "tune[winner] FAILED" in out
    # Before: both resumed it; now the second stored nothing and the run is as it was.
    assert [r["exp"] for r in RunStore.open(run).experiments()] == [0, 1]
    assert not (run / "completed.json").exists()
