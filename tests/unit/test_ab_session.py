"""The session's A/B servers (level repeat vs boot) and the CPU placement helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pytest_forge import cpu_affinity
from pytest_forge import session as session_module
from pytest_forge.endpoint import Endpoint
from pytest_forge.recipe import Recipe
from pytest_forge.session import ForgeConfig, ForgeSession


class StubServer:
    """Stands in for VllmServer: records boots and stops, serves a made-up URL."""

    events: ClassVar[list[str]] = []

    def __init__(self, recipe: Recipe, run_dir: Path, **kwargs: Any) -> None:
        self.recipe = recipe
        self.python = kwargs.get("python")
        self.stopped = False

    def start(self) -> Endpoint:
        StubServer.events.append(f"boot {self.recipe.config['max_num_seqs']} {self.python}")
        return Endpoint(f"http://127.0.0.1:1/{id(self)}")

    def stop(self) -> None:
        if not self.stopped:
            StubServer.events.append(f"stop {self.recipe.config['max_num_seqs']}")
        self.stopped = True

    def check_alive(self) -> None:
        pass

    def wait_until_idle(self) -> float:
        return 0.0


def _recipe(tmp_path: Path, seqs: int) -> Recipe:
    path = tmp_path / f"r{seqs}.yaml"
    path.write_text(
        f"id: r{seqs}\nmodel: m\nhardware: {{vendor: cpu}}\nconfig: {{max_num_seqs: {seqs}}}\n"
    )
    return Recipe.load(path)


def _session(tmp_path: Path, level: str, python: str | None = None) -> ForgeSession:
    config = ForgeConfig(
        recipes_dir=tmp_path,
        workloads_dir=tmp_path,
        run_root=tmp_path / ".forge",
        ab_python=python,
        ab_level=level,  # type: ignore[arg-type]
    )
    return ForgeSession(config)


@pytest.fixture(autouse=True)
def stub_server(monkeypatch: pytest.MonkeyPatch) -> None:
    StubServer.events = []
    monkeypatch.setattr(session_module, "VllmServer", StubServer)


def test_repeat_level_keeps_both_sides_up(tmp_path: Path) -> None:
    session = _session(tmp_path, "repeat", python="/venv-old/bin/python")
    b, a = _recipe(tmp_path, 16), _recipe(tmp_path, 8)
    first_a = session.ab_endpoint(b, a, "A")
    first_b = session.ab_endpoint(b, a, "B")
    again_a = session.ab_endpoint(b, a, "A")
    assert first_a.fresh and first_b.fresh and not again_a.fresh
    assert first_a.endpoint.url == again_a.endpoint.url != first_b.endpoint.url
    # Side A runs the other environment's vLLM with A's recipe; B this one with B's.
    assert StubServer.events == ["boot 8 /venv-old/bin/python", f"boot 16 {sys.executable}"]
    session.stop_server(str(b.path))
    assert sorted(StubServer.events[2:]) == ["stop 16", "stop 8"]


def test_boot_level_runs_one_side_at_a_time(tmp_path: Path) -> None:
    session = _session(tmp_path, "boot")
    b, a = _recipe(tmp_path, 16), _recipe(tmp_path, 8)
    sides = ["A", "B", "B", "A"]
    fresh = [session.ab_endpoint(b, a, side).fresh for side in sides]
    assert fresh == [True, True, False, True]  # a switch is a boot (and a warmup)
    assert [e.split()[0] + " " + e.split()[1] for e in StubServer.events] == [
        "boot 8",
        "stop 8",
        "boot 16",
        "stop 16",
        "boot 8",
    ]


def test_pin_engine_core_leaves_other_process_groups_alone() -> None:
    # This test process's group has no vLLM EngineCore: nothing to pin, nothing touched.
    assert cpu_affinity.pin_engine_core(os.getpgid(0)) is None


def test_group_cpu_seconds_counts_a_busy_group_and_idle_wait_returns() -> None:
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"],
        start_new_session=True,
    )
    try:
        time.sleep(0.6)
        used = cpu_affinity.group_cpu_seconds(busy.pid)
        assert used > 0.1
        # Busy the whole time: the wait runs to its timeout; once the loop ends it is quick.
        assert cpu_affinity.wait_until_idle(busy.pid, timeout_s=0.5) >= 0.5
        busy.wait(timeout=10)
        assert cpu_affinity.wait_until_idle(busy.pid, timeout_s=2.0) < 1.0
    finally:
        busy.kill()
        busy.wait()
