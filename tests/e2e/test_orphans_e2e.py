"""No process of a server outlives its run: pytest is SIGKILLed mid-run (real vLLM).

A gate run on the tiny Llama is killed with SIGKILL while its bench is sending requests:
pytest runs no code at all then (no atexit, no signal handler, no fixture teardown), so
whatever stops the server must live outside pytest. Every process of the server, recorded
from /proc before the kill (the process pytest started, leading a session of its own, and
all its descendants and group members: the supervisor, vLLM's API server, its engine core
and workers), has to be gone within a few seconds.

In the "hung" case vLLM's API server cannot act on a signal when pytest dies (stopped
here with SIGSTOP, as a process stuck in native code would be). A parent-death signal
on that process alone (the launch before the supervisor) then stops nothing: its engine
core and workers, which only it would have shut down, live on. With the supervisor they
get SIGTERM directly and the API server SIGKILL after the orphan grace (5 s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.project import make_project, processes_with_marker

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT_S = 300
GONE_WITHIN_S = 10.0


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a live process, or None when gone (a zombie is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else (fields[0], int(fields[1]), int(fields[2]))


def _live_pids() -> dict[int, tuple[str, int, int]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = info
    return found


def _server_processes(root: int) -> set[int]:
    """``root`` (a session leader) with its process group and all its descendants."""
    table = _live_pids()
    tree = {pid for pid, (_, _, pgrp) in table.items() if pgrp == root} | {root}
    todo = list(tree)
    while todo:
        parent = todo.pop()
        for pid, (_, ppid, _) in table.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                todo.append(pid)
    return {pid for pid in tree if pid in table}


def _name(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return "?"


def _wait_for_bench(root: Path, proc: subprocess.Popen[bytes]) -> Path:
    """The server log, once the bench has started its repeats (the first cache reset)."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        for log in (root / ".forge").glob("gate/*/tiny-llama-cpu/vllm-*.log"):
            if "POST /reset_prefix_cache" in log.read_text(errors="replace"):
                return log
        time.sleep(0.5)
    pytest.fail(f"the run never reached its bench (pytest exit code {proc.poll()})")


@pytest.mark.parametrize("api_server", ["responsive", "hung"])
def test_sigkilled_pytest_leaves_no_server_process(
    tiny_model_dir: Path, tmp_path: Path, api_server: str
) -> None:
    root = make_project(tmp_path / "project")
    marker = uuid.uuid4().hex
    env = {**os.environ, "FORGE_E2E_MARKER": marker}
    env.pop("GITHUB_STEP_SUMMARY", None)
    output = tmp_path / "pytest.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", "mini-chat"],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our SIGKILL is for pytest alone, not its group
        )
    server: set[int] = set()
    try:
        _wait_for_bench(root, proc)
        roots = [pid for pid, (_, ppid, pgrp) in _live_pids().items() if ppid == proc.pid]
        roots = [pid for pid in roots if os.getsid(pid) == pid]
        assert len(roots) == 1, f"expected one server started by pytest, found {roots}"
        server = _server_processes(roots[0])
        names = {pid: _name(pid) for pid in server}
        engines = [pid for pid, name in names.items() if "EngineCor" in name]
        assert engines, names
        if api_server == "hung":
            api = _live_pids()[engines[0]][1]  # the engine core's parent
            assert api in server
            os.kill(api, signal.SIGSTOP)

        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait()
        while time.monotonic() - killed < GONE_WITHIN_S:
            if all(_stat(pid) is None for pid in server):
                break
            time.sleep(0.1)
        left = {pid: names[pid] for pid in sorted(server) if _stat(pid) is not None}
        print(f"\nserver processes {names} gone {time.monotonic() - killed:.1f}s after SIGKILL")
        assert left == {}, f"alive {GONE_WITHIN_S:g}s after pytest was SIGKILLed: {left}"
        assert processes_with_marker(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in server:  # only after a failure: never leave a vLLM behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if _stat(pid) is not None:
                    os.kill(pid, signal.SIGKILL)
