"""The vLLM servers this process has started and not stopped, and the hooks that stop them.

``stop_all()`` runs at interpreter exit (atexit) and on SIGTERM/SIGHUP, before the signal's
previous handler or default action; the supervisor (supervisor.py) covers the deaths no
hook sees, SIGKILL included.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

__all__ = ["LiveServer", "install_hooks", "live_servers", "register", "stop_all", "unregister"]

log = logging.getLogger(__name__)


class LiveServer(Protocol):
    """What the registry needs of a server: its recipe id and a stop()."""

    recipe_id: str

    def stop(self) -> None:
        """Stop every process of the server; safe to call any number of times."""


_registry_lock = threading.RLock()
_live: dict[int, LiveServer] = {}
_hooks_installed = False


def register(server: LiveServer) -> None:
    """Note a server whose processes now run."""
    with _registry_lock:
        _live[id(server)] = server


def unregister(server: LiveServer) -> None:
    """Forget a stopped server (no error if it was not registered)."""
    with _registry_lock:
        _live.pop(id(server), None)


def live_servers() -> list[LiveServer]:
    """The servers started and not stopped yet."""
    with _registry_lock:
        return list(_live.values())


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    for server in live_servers():
        try:
            server.stop()
        except Exception:  # teardown must reach every server
            log.exception("pytest-forge: stopping vLLM for recipe %s failed", server.recipe_id)


def _make_signal_handler(
    previous: Callable[[int, FrameType | None], Any] | int | None,
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop_all()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:
            # Default action (terminate): restore it and deliver the signal again so the
            # exit status still says "killed by SIGTERM" to whoever is waiting on us.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


def install_hooks() -> None:
    """Register stop_all with atexit and SIGTERM/SIGHUP, once per process."""
    global _hooks_installed
    with _registry_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
    atexit.register(stop_all)
    # signal.signal only works in the main thread; elsewhere atexit and the supervisor
    # (which sees pytest die) remain.
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        previous = signal.getsignal(sig)
        signal.signal(sig, _make_signal_handler(previous))
