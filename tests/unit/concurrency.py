"""Run a test helper in several Python processes at once, released together by a barrier."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_for(barrier: Path, timeout_s: float = 60.0) -> None:
    """In a child: say it is ready, then block until the parent releases every child."""
    (barrier.parent / f"{barrier.name}.ready.{os.getpid()}").touch()
    deadline = time.monotonic() + timeout_s
    while not barrier.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{barrier} never appeared")
        time.sleep(0.002)


def run_together(
    module: str, function: str, arg_sets: list[list[str]], barrier: Path, timeout_s: float = 120
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``module.function(*args)`` once per arg set, each in its own process; the
    function calls :func:`wait_for` on ``barrier``, which opens once all are ready."""
    code = (
        "import sys, importlib; "
        f"getattr(importlib.import_module({module!r}), {function!r})(*sys.argv[1:])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in arg_sets
    ]
    deadline = time.monotonic() + timeout_s
    while len(list(barrier.parent.glob(f"{barrier.name}.ready.*"))) < len(procs):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            break  # a child died before the barrier: communicate() shows why
        time.sleep(0.01)
    barrier.touch()
    results = []
    for proc, args in zip(procs, arg_sets, strict=True):
        out, err = proc.communicate(timeout=timeout_s)
        results.append(
            subprocess.CompletedProcess([module, function, *args], proc.returncode, out, err)
        )
    return results
