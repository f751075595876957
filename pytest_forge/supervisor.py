"""The process between pytest and vLLM: every process of a server ends when the run ends.

pytest starts `python -I supervisor.py --lifeline FD --grace S -- VLLM_ARGV...` in a
session of its own; the supervisor starts vLLM and stays its parent. Why a process of its
own, rather than flags on vLLM's process:

- A parent-death signal (`PR_SET_PDEATHSIG`) reaches only the process that asked for it.
  Set on vLLM's API server, a SIGKILLed pytest left the engine core and the workers to
  vLLM's own shutdown, which does not finish when the API server dies before it has
  installed its handlers, and which nobody supervises.
- Killing pytest with SIGKILL runs none of pytest's code, so someone else has to do the
  killing. The supervisor learns that pytest is gone from the *lifeline*: a pipe whose
  write end only pytest holds. The kernel closes it when pytest dies, by any signal
  including SIGKILL, on any POSIX system; the supervisor sees EOF. It also watches
  `getppid()`, in case a process forked from pytest still holds the write end.
- As a child subreaper (`PR_SET_CHILD_SUBREAPER`, Linux) the supervisor adopts every
  orphaned descendant, even one that left the process group (vLLM's data-parallel
  launcher calls `setpgrp`), so its tree is the whole server and nothing escapes it.

On a stop request (SIGTERM/SIGINT/SIGHUP, which is how pytest stops a server), on
pytest's death, or when vLLM's own process exits, the supervisor sends SIGTERM to every
process of its tree (its process group and all its descendants), waits `--grace`
seconds, sends SIGKILL to what is left, and exits with vLLM's exit status (a vLLM killed
by signal N makes the supervisor die by signal N too, so callers see the same code).

Only the standard library is imported: pytest runs this file with `-I` (no script
directory, user site or `PYTHON*` variables on `sys.path`), so it works in any
environment and cannot import, or be shadowed by, the project under test. server.py and
cpu_affinity.py import the `/proc` helpers below.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = [
    "PR_SET_CHILD_SUBREAPER",
    "descendants",
    "group_members",
    "is_gone",
    "main",
    "proc_table",
    "server_tree",
]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# How long SIGKILL gets to empty the tree before the supervisor gives up and says so.
KILL_WAIT_S = 5.0
# The grace once pytest is gone: nobody waits for an orderly exit any more, vLLM's own
# SIGTERM shutdown takes under a second (measured on the tiny Llama mid-bench), and a
# server that cannot act on SIGTERM (hung) should not outlive the run by long.
ORPHAN_GRACE_S = 5.0
# How often the supervisor checks getppid() (the lifeline's EOF wakes it at once).
PARENT_POLL_S = 0.5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PREFIX = "pytest-forge supervisor"


# -- /proc: who belongs to a server ------------------------------------------------------


def proc_table() -> dict[int, tuple[int, int, str]]:
    """`pid -> (ppid, pgrp, state)` of every process, from /proc (empty without it)."""
    table: dict[int, tuple[int, int, str]] = {}
    try:
        entries = os.scandir("/proc")
    except OSError:
        return table
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as fh:
                    stat = fh.read()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) >= 3:
                table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _alive(state: str) -> bool:
    # Zombies and dead entries are not running: an orphan's zombie may wait for a PID 1
    # that never reaps it.
    return state not in ("Z", "X", "x")


def group_members(pgid: int, table: dict[int, tuple[int, int, str]] | None = None) -> list[int]:
    """Live pids in process group `pgid`."""
    table = proc_table() if table is None else table
    return sorted(pid for pid, (_, pgrp, state) in table.items() if pgrp == pgid and _alive(state))


def descendants(root: int, table: dict[int, tuple[int, int, str]] | None = None) -> list[int]:
    """Live descendants of `root` (children, their children, ...), without `root`."""
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = list(children.get(root, []))
    seen = {root}
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if _alive(table[pid][2]):
            found.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def server_tree(root: int, table: dict[int, tuple[int, int, str]] | None = None) -> list[int]:
    """Every live process of the server rooted at `root`, root included while it lives.

    `root` is the supervisor, which leads its own session and process group: the server
    is that group and all the supervisor's descendants.
    """
    table = proc_table() if table is None else table
    pids = set(group_members(root, table)) | set(descendants(root, table))
    if root in table and _alive(table[root][2]):
        pids.add(root)
    return sorted(pids)


def is_gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        if Path("/proc/self/stat").exists():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return not _alive(stat[stat.rfind(")") + 2 :].split()[0])


# -- the supervisor process ----------------------------------------------------------------


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _readable(fds: Sequence[int], timeout: float) -> list[int]:
    """The fds that are readable (or at EOF) within `timeout` seconds.

    poll() rather than select(): the lifeline keeps pytest's fd number, which may be above
    select's FD_SETSIZE (1024) in a run with many open files.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(max(0.0, timeout) * 1000)]


def _say(message: str) -> None:
    # stderr is the server's log file: these lines sit beside vLLM's own.
    with contextlib.suppress(OSError, ValueError):
        print(f"{_PREFIX}: {message}", file=sys.stderr, flush=True)


def _child_preexec(prctl: Callable[..., int] | None) -> Callable[[], None] | None:
    """vLLM's main process gets SIGTERM should the supervisor itself be SIGKILLed.

    The supervisor is single-threaded, so the kernel's per-thread tie of this signal is
    not a concern here, unlike in pytest.
    """
    if prctl is None:
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # we died between fork and prctl
            os.kill(os.getpid(), sigterm)

    return preexec


class _Supervisor:
    def __init__(self, lifeline: int | None, grace_s: float, parent: int) -> None:
        self.lifeline = lifeline
        self.grace_s = grace_s
        self.parent = parent
        self.me = os.getpid()
        self.stop_signal: int | None = None
        self.status: int | None = None  # vLLM's exit status, as Popen.returncode says it
        self.child_pid: int | None = None

    def others(self) -> list[int]:
        """Our group and every descendant (adopted orphans included), without us."""
        table = proc_table()
        if not table:  # no /proc: all we know is our own child
            if self.child_pid is not None and self.status is None:
                return [self.child_pid]
            return []
        return [pid for pid in server_tree(self.me, table) if pid != self.me]

    def signal_all(self, sig: signal.Signals, pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def reap(self) -> None:
        """Collect every exited child (ours and adopted ones); note vLLM's status."""
        while True:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            if pid == self.child_pid:
                self.status = os.waitstatus_to_exitcode(raw)

    def parent_gone(self) -> bool:
        """True once pytest has died: we were reparented, or the lifeline is at EOF."""
        if os.getppid() != self.parent:
            return True
        if self.lifeline is None:
            return False
        try:
            if not _readable([self.lifeline], 0.0):
                return False
            return os.read(self.lifeline, 1) == b""
        except (OSError, ValueError):
            return True

    def stop_reason(self) -> tuple[str, float] | None:
        """Why to stop the tree now, and the grace SIGTERM gets; None: keep serving."""
        if self.stop_signal is not None:
            return f"stopping on {signal.Signals(self.stop_signal).name}", self.grace_s
        if self.parent_gone():
            return "pytest is gone: stopping the server", min(self.grace_s, ORPHAN_GRACE_S)
        if self.status is not None:
            return f"vLLM exited with {self.status}", self.grace_s
        return None

    def wait(self, timeout: float, wake: int, *, lifeline: bool) -> None:
        # Once stopping, the lifeline is left out: at EOF it would be readable forever.
        fds = [wake] + ([self.lifeline] if lifeline and self.lifeline is not None else [])
        with contextlib.suppress(InterruptedError, OSError, ValueError):
            if wake in _readable(fds, timeout):
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake, 512):
                        pass

    def run(self, argv: Sequence[str], wake: int) -> int | None:
        """Start vLLM, serve until a stop reason, empty the tree; vLLM's exit status."""
        preexec = _child_preexec(_prctl())
        try:
            child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, preexec_fn=preexec)
        except OSError as exc:
            _say(f"could not start {argv[0]}: {exc}")
            return 127
        self.child_pid = child.pid
        reason: str | None = None
        deadline = 0.0
        killed = False
        while True:
            self.reap()
            now = time.monotonic()
            if reason is None:
                found = self.stop_reason()
                if found is None:
                    self.wait(PARENT_POLL_S, wake, lifeline=True)
                    continue
                reason, grace = found
                if self.status is None:
                    _say(reason)
                self.signal_all(signal.SIGTERM, self.others())
                deadline = now + grace
            left = self.others()
            if self.status is not None and not left:
                break
            if now >= deadline:
                if killed:
                    _say(f"processes {left} survived SIGKILL")
                    break
                _say(f"{reason}: processes {left} outlived SIGTERM, sending SIGKILL")
                self.signal_all(signal.SIGKILL, left)
                killed = True
                deadline = now + KILL_WAIT_S
            self.wait(min(0.05, max(0.0, deadline - now)), wake, lifeline=False)
        child.returncode = self.status  # we reaped it: keep Popen from waiting again
        return self.status


def _die_like(status: int | None) -> NoReturn:
    """Exit now with vLLM's status; by signal N when vLLM died by signal N.

    A stop request arriving from here on must not change the status: the stop signals are
    blocked, and the process ends with `os._exit`, as interpreter shutdown would first
    restore SIGTERM's default action (death by SIGTERM, not vLLM's code).
    """
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    if status is None:
        os._exit(1)
    if status >= 0:
        os._exit(status)
    sig = -status
    with contextlib.suppress(Exception):
        import resource  # POSIX only; no core file for a signal we merely pass on

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, ValueError):
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(128 + sig)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    args = list(argv)
    if "--" not in args:
        raise SystemExit(f"{_PREFIX}: usage: --lifeline FD --grace S -- COMMAND...")
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="pytest_forge.supervisor")
    parser.add_argument("--lifeline", type=int, default=None)
    parser.add_argument("--grace", type=float, default=15.0)
    options = parser.parse_args(args[:split])
    command = args[split + 1 :]
    if not command:
        raise SystemExit(f"{_PREFIX}: no command after --")
    return options, command


def main(argv: Sequence[str] | None = None) -> int:
    """Run the supervisor: start vLLM, stop its whole tree when asked, exit as vLLM did."""
    options, command = _parse(sys.argv[1:] if argv is None else argv)
    parent = os.getppid()
    prctl = _prctl()
    if prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _say(f"PR_SET_CHILD_SUBREAPER failed (errno {errno.errorcode.get(ctypes.get_errno())})")
    if options.lifeline is not None:
        os.set_inheritable(options.lifeline, False)  # vLLM must not hold our lifeline
    supervisor = _Supervisor(options.lifeline, options.grace, parent)
    if options.lifeline is not None and supervisor.parent_gone():
        return 1  # pytest died before we were running: start nothing

    def on_stop(signum: int, _frame: object) -> None:
        if supervisor.stop_signal is None:
            supervisor.stop_signal = signum

    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    # A Python-level handler so that a child's exit wakes the poll() through wake_r.
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    _die_like(supervisor.run(command, wake_r))


if __name__ == "__main__":
    raise SystemExit(main())
