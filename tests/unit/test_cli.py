"""The `forge` command itself: its help, and the exits of its wrappers (compare, export)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_forge.cli import build_parser
from pytest_forge.cli import main as forge_main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = (
    "validate",
    "import-aim",
    "export",
    "playbook",
    "tiny-model",
    "compare",
    "merge",
    "report",
)


def _help(*args: str) -> str:
    # The console script as a user runs it: a fresh interpreter, argparse's real output.
    done = subprocess.run(
        [sys.executable, "-m", "pytest_forge.cli", *args, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "100", "PATH": ""},
    )
    return done.stdout


def test_top_level_help_is_plain_text_listing_every_command() -> None:
    text = _help()
    assert "``" not in text and ":func:" not in text  # no raw reStructuredText
    assert "examples:" in text and "forge merge --out" in text
    lines = text.splitlines()
    for name in COMMANDS:
        # Each command has its help line beside it (or on the next line for long names).
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(name))
        beside = lines[at].strip().removeprefix(name).strip() or lines[at + 1].strip()
        assert len(beside) > 15, (name, beside)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_describes_itself(name: str) -> None:
    sub = next(
        action
        for action in build_parser()._actions
        if getattr(action, "choices", None) and name in action.choices  # type: ignore[operator]
    )
    parser = sub.choices[name]  # type: ignore[index]
    assert parser.description and len(parser.description) > 30
    assert "``" not in parser.format_help()


def test_merge_help_names_the_output_files() -> None:
    text = _help("merge")
    for name in ("forge-junit.xml", "forge-benchmark.json", "forge-bench.smaller.json"):
        assert name in text  # whole, not broken at a hyphen


def _gate_run(root: Path, name: str, recipe: str) -> Path:
    run = root / name
    run.mkdir()
    row = {"recipe": recipe, "workload": "chat", "metrics": {"output_throughput": 100.0}}
    doc = {"pytest_forge": "0.1.0", "vllm_version": "0.32.0", "hardware": "cpu", "results": [row]}
    (run / "results.json").write_text(json.dumps(doc))
    return run


def test_compare_fails_when_the_runs_share_no_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = str(_gate_run(tmp_path, "a", "alpha"))
    b = str(_gate_run(tmp_path, "b", "beta"))
    # Once exit 0: a gate comparing two unrelated runs "passed" with nothing compared.
    assert forge_main(["compare", a, b, "--fail-on-regression"]) == 2
    captured = capsys.readouterr()
    assert "share no recipe × workload pair" in captured.err
    assert "only in A: alpha × chat" in captured.out
    # Without the flag it is a report, not a gate.
    assert forge_main(["compare", a, b]) == 0
    # A shared pair with no regression still passes.
    assert forge_main(["compare", a, a, "--fail-on-regression"]) == 0


def test_export_of_the_bundled_cpu_recipe_serves_a_loadable_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe = str(ROOT / "recipes" / "tiny-llama-cpu.yaml")
    assert forge_main(["export", recipe, "--format", "vllm-cmd"]) == 0
    command = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(command) == 1
    # vLLM cannot load "forge:tiny-llama": the command names the built model's directory
    # and serves it under the recipe's name.
    assert "--model forge:tiny-llama" not in command[0]
    assert "serve forge:tiny-llama" not in command[0]
    assert "--served-model-name forge:tiny-llama" in command[0]
    assert forge_main(["export", recipe, "--format", "vllm-config"]) == 0
    config = capsys.readouterr().out
    assert "model: forge:tiny-llama" not in config


def test_a_forge_error_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert forge_main(["compare", str(tmp_path / "nope"), str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("forge: ") and "no such run directory" in err
    assert "Traceback" not in err
