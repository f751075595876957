"""Nothing is lost to a concurrent writer: two processes recording baselines into one recipe
file, and the file lock they share."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_forge.errors import ForgeError
from pytest_forge.fileio import LockTimeout, atomic_write, lock_path, locked
from pytest_forge.pipeline import record_baseline
from pytest_forge.recipe import MeasuredWith, Recipe
from pytest_forge.results import CaseResult
from pytest_forge.verdict import Verdict
from tests.unit.concurrency import run_together, wait_for
from tests.unit.test_tuner import RECIPE_YAML, fake_measurement

WITH = MeasuredWith(
    vllm="0.32.0", pytest_forge="0.1.0", hardware="test cpu", backend="vllm", date="2026-11-22"
)


def _record_loop(recipe_path: str, barrier: str, prefix: str, count: str) -> None:
    """In a child process: record one new workload's baseline per step, as
    ``--forge-update-baselines`` does after each passing test."""
    path = Path(recipe_path)
    wait_for(Path(barrier))
    for i in range(int(count)):
        workload = f"{prefix}{i}"
        m = fake_measurement(workload, [100.0 + i, 101.0 + i, 102.0 + i])
        result = CaseResult("tiny", workload, m, None, Verdict("tiny", workload))
        record_baseline(path, result, WITH)


def test_two_baseline_writers_on_one_recipe_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE_YAML)
    barrier = tmp_path / "go"
    results = run_together(
        "tests.unit.test_concurrent_writers",
        "_record_loop",
        [[str(path), str(barrier), "a", "12"], [str(path), str(barrier), "b", "12"]],
        barrier,
    )
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    recipe = Recipe.load(path)
    # Without the lock each writer re-read the file, then saved over the other's update.
    expected = {f"{p}{i}" for p in "ab" for i in range(12)}
    assert set(recipe.baselines) == expected
    assert recipe.baselines["b11"].output_throughput == pytest.approx(112.0)
    assert path.read_text().startswith("# The CPU recipe CI gates on.")
    assert not lock_path(path).exists()


# -- the lock itself ---------------------------------------------------------------------------
_HOLD = (
    "import sys, time; from pytest_forge.fileio import locked\n"
    "with locked(sys.argv[1]):\n"
    "    print('locked', flush=True); time.sleep(float(sys.argv[2]))\n"
)


def _hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_waits_for_the_lock(tmp_path: Path) -> None:
    target = tmp_path / "r.yaml"
    holder = _hold(target, 0.8)
    try:
        start = time.monotonic()
        with locked(target, timeout=30):
            waited = time.monotonic() - start
            assert holder.poll() is not None or waited > 0.3  # it waited for the holder
    finally:
        holder.wait(timeout=30)
    assert waited > 0.3
    assert not lock_path(target).exists()


def test_a_lock_held_too_long_fails_naming_the_file_and_the_holder(tmp_path: Path) -> None:
    target = tmp_path / "r.yaml"
    holder = _hold(target, 30)
    try:
        with pytest.raises(LockTimeout) as err, locked(target, timeout=0.2):
            pass
        message = str(err.value)
        assert str(target) in message and f"pid {holder.pid}" in message
        assert "waited 0.2 s" in message
        assert isinstance(err.value, ForgeError)
    finally:
        holder.kill()
        holder.wait()
    with locked(target, timeout=5):  # a killed holder's lock died with it
        pass


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    target = tmp_path / "r.yaml"
    with locked(target), locked(target, timeout=0):
        assert lock_path(target).read_text().strip() == str(__import__("os").getpid())
    assert not lock_path(target).exists()


def test_atomic_write_keeps_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write(target, "one\r\n")
    assert target.read_bytes() == b"one\r\n"  # no newline translation
    assert target.stat().st_mode & 0o777 == 0o644
    target.chmod(0o600)
    atomic_write(target, b"\x89PNG")
    assert target.read_bytes() == b"\x89PNG" and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
