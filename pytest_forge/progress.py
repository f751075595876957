"""The live progress line of a running test: a status line on a terminal, plain
rate-limited lines in CI logs, or nothing."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_forge.bench import Progress


class ProgressPrinter:
    """A live status line on a terminal; plain, rate-limited lines in CI logs; or nothing."""

    def __init__(
        self,
        stream: Any,
        label: str,
        live: bool,
        enabled: bool,
        capman: Any = None,
        reporter: Any = None,
    ) -> None:
        self.stream = stream
        self.capman = capman
        self.reporter = reporter
        self.label = label
        self.live = live
        self.enabled = enabled
        self._last = 0.0
        self._last_phase = ""
        self._start = time.monotonic()
        self._shown = False

    def _write(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        if self.capman is not None:
            # pytest captures the test's output; the status line must reach the terminal.
            with self.capman.global_and_fixture_disabled():
                self._emit(text, force)
        else:
            self._emit(text, force)

    def _emit(self, text: str, force: bool) -> None:
        # Looked up now: while pytest captures, sys.stderr is its buffer, not the terminal.
        stream = self.stream or sys.stderr
        now = time.monotonic()
        if self.live:
            if not self._shown and self.reporter is not None:
                # A line of its own: never erase the "recipes/x.yaml .." pytest is writing.
                self.reporter.ensure_newline()
            self._shown = True
            width = shutil.get_terminal_size().columns - 1  # one row: no stale wrapped rows
            stream.write("\r\x1b[2K" + text[:width])
            stream.flush()
        elif force or now - self._last >= 30:
            # CI logs: one line per phase change, and at most one every 30 s otherwise.
            stream.write(text + "\n")
            stream.flush()
            self._last = now

    def phase(self, name: str) -> None:
        """A new phase (booting, warmup, ...): always shown."""
        self._write(f"forge {self.label}: {name}", force=True)
        self._last_phase = name

    def update(self, p: Progress) -> None:
        """The benchmark's progress: requests done and output tokens per second so far."""
        phase = "warmup" if p.phase == "warmup" else f"repeat {p.repeat} of {p.repeats}"
        rate = p.output_tokens / p.elapsed_s if p.elapsed_s > 0 else 0.0
        text = f"forge {self.label}: {phase}, requests {p.done}/{p.total}, {rate:.0f} tok/s so far"
        self._write(text, force=phase != self._last_phase)
        self._last_phase = phase

    def done(self) -> None:
        """Clear the live line and give pytest its line back."""
        if self.enabled and self.live and self._shown:
            self._write("")
            self._shown = False
            if self.reporter is not None:
                # The status line took pytest's line: make it write the file name again.
                self.reporter.currentfspath = None


def progress_printer(config: pytest.Config, label: str) -> ProgressPrinter:
    """The printer this session wants: live on a terminal, plain in CI, off when quiet."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    quiet = config.get_verbosity() < 0
    is_ci = bool(os.environ.get("CI"))
    live = sys.__stderr__ is not None and sys.__stderr__.isatty() and not is_ci
    enabled = reporter is not None and not quiet and (live or is_ci or config.get_verbosity() > 0)
    if hasattr(config, "workerinput"):
        enabled = False  # pytest-xdist workers share one terminal: status lines would clash
    capman = config.pluginmanager.get_plugin("capturemanager")
    return ProgressPrinter(None, label, live, enabled, capman, reporter)
