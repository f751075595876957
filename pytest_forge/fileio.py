"""The one place pytest-forge writes files atomically and locks them against other writers.

`atomic_write(path, data)`: readers see the old or the new file, never half of one (temp
file in the same directory, fsync, rename, fsync of the directory).

`locked(path)`: an exclusive `fcntl.flock` on a sidecar `.<name>.lock` beside `path`,
for a read-modify-write that must not lose another process's update. A second writer waits
up to `timeout` seconds, then fails naming the file and the pid that holds it. The lock is
re-entrant within a process (`Recipe.save` locks, and so may its caller), and the sidecar
is deleted on release, so no lock file is left in a user's `recipes/`. A lock dies with
its process: a kill never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pytest_forge.errors import ForgeError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: locks are per process only
    fcntl = None  # type: ignore[assignment]

# A recipe or run-store read-modify-write takes milliseconds; waiting this long means the
# holder is stuck, and saying so beats waiting forever.
DEFAULT_LOCK_TIMEOUT_S = 120.0
_POLL_S = 0.05


class LockTimeout(ForgeError):
    """Another process held a file's lock for longer than the caller would wait."""

    def __init__(self, message: str, *, holder: str, lock_file: Path) -> None:
        super().__init__(message)
        self.holder = holder  # "pid 1234", or "another process" when it is not known
        self.lock_file = lock_file


# -- atomic writes -----------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Make a new or renamed directory entry durable.

    Some filesystems refuse to sync a directory; that is ignored, as the data itself is
    already synced by then.
    """
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path | str, data: str | bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` so readers see the old or the new file, never half of one.

    Text is written as UTF-8 without newline translation. The file keeps the permissions
    of the file it replaces (a new file gets `mode`, default 0o644). Returns `path`.
    """
    target = Path(path)
    directory = target.resolve().parent
    directory.mkdir(parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return target


# -- locks -------------------------------------------------------------------------------
def lock_path(path: Path | str) -> Path:
    """The sidecar lock file of `path`: `.<name>.lock` in the same directory."""
    # Resolved: a relative path, or a symlink to the file, finds the same lock.
    target = Path(path).resolve()
    return target.with_name(f".{target.name}.lock")


@dataclass
class _Held:
    """A lock this process holds: the flock'd descriptor, and how deep the nesting is."""

    guard: threading.RLock = field(default_factory=threading.RLock)
    fd: int | None = None
    depth: int = 0


_registry_guard = threading.Lock()
_registry: dict[Path, _Held] = {}


def _reset_after_fork() -> None:
    # A forked child holds none of its parent's locks (it must wait for them like anyone).
    global _registry_guard, _registry
    _registry_guard = threading.Lock()
    _registry = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _holder(sidecar: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = sidecar.read_text(encoding="utf-8").strip()
        if text:
            return f"pid {text}"
    return "another process"


def _timeout_error(path: Path, sidecar: Path, timeout: float, what: str) -> LockTimeout:
    holder = _holder(sidecar)
    return LockTimeout(
        f"{path}: {what} is held by {holder} (lock file {sidecar}); waited {timeout:g} s. "
        "Another pytest-forge process is writing it: wait for that run to finish, or stop "
        "it, and try again",
        holder=holder,
        lock_file=sidecar,
    )


def _flock(path: Path, sidecar: Path, deadline: float, timeout: float, what: str) -> int:
    """An exclusive flock on the sidecar that is still the file at its path."""
    while True:
        fd = os.open(sidecar, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise _timeout_error(path, sidecar, timeout, what) from None
            time.sleep(_POLL_S)
            continue
        except BaseException:
            os.close(fd)
            raise
        # The holder before us deletes the sidecar on release: a lock on a deleted (or
        # replaced) file excludes nobody, so start again on the file now at that path.
        try:
            current = os.stat(sidecar)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is None or (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _release(sidecar: Path, fd: int) -> None:
    # Delete while still holding it, so nobody can take a lock on a file about to vanish.
    with contextlib.suppress(OSError):
        os.unlink(sidecar)
    os.close(fd)


@contextlib.contextmanager
def locked(
    path: Path | str, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S, what: str = "its lock"
) -> Iterator[Path]:
    """Hold the exclusive lock of `path` (which need not exist) for the `with` block.

    Waits up to `timeout` seconds (0: fail at once) for another process to release it,
    then raises LockTimeout naming the file and the holder's pid. Re-entrant in
    this process. Yields the lock file's path.
    """
    sidecar = lock_path(path)
    deadline = time.monotonic() + max(0.0, timeout)
    with _registry_guard:
        held = _registry.setdefault(sidecar, _Held())
    # Threads of this process queue on the guard; the flock orders processes.
    waits = timeout > 0
    if not held.guard.acquire(blocking=waits, timeout=timeout if waits else -1):
        raise _timeout_error(Path(path), sidecar, timeout, what)
    try:
        if held.depth == 0:
            held.fd = _flock(Path(path), sidecar, deadline, timeout, what)
        held.depth += 1
        try:
            yield sidecar
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                fd, held.fd = held.fd, None
                _release(sidecar, fd)
    finally:
        held.guard.release()


class Claim:
    """A lock held beyond one `with` block (e.g. a tune run owned for a whole session).

    Fails at once, or after `timeout` seconds, when another process holds it.
    """

    def __init__(self, path: Path | str, *, timeout: float = 0.0, what: str = "its lock") -> None:
        self._context = locked(path, timeout=timeout, what=what)
        self.lock_file = self._context.__enter__()
        self._released = False

    def release(self) -> None:
        """Give the lock up; releasing it again does nothing."""
        if not self._released:
            self._released = True
            self._context.__exit__(None, None, None)

    @property
    def released(self) -> bool:
        """True once the lock has been given up."""
        return self._released


__all__ = [
    "DEFAULT_LOCK_TIMEOUT_S",
    "Claim",
    "LockTimeout",
    "atomic_write",
    "fsync_dir",
    "lock_path",
    "locked",
]
