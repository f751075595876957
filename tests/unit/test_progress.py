"""The live status line: its own terminal line, one row wide, cleared after; CI: plain."""

from __future__ import annotations

import io

import pytest

from pytest_forge.bench import Progress
from pytest_forge.progress import ProgressPrinter


class FakeReporter:
    def __init__(self) -> None:
        self.newlines = 0
        self.currentfspath: object = "recipes/x.yaml"

    def ensure_newline(self) -> None:
        self.newlines += 1


def _p(done: int, phase: str = "repeat", repeat: int = 1) -> Progress:
    return Progress(phase, repeat, 3, done, 10, output_tokens=500, elapsed_s=2.0)  # type: ignore[arg-type]


def test_live_line_has_its_own_row_fits_the_terminal_and_is_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    stream, reporter = io.StringIO(), FakeReporter()
    printer = ProgressPrinter(stream, "recipes/x.yaml::chat", True, True, None, reporter)
    printer.phase("booting")
    printer.update(_p(3))
    printer.update(_p(4))
    assert reporter.newlines == 1  # pytest's "recipes/x.yaml ." line is left intact
    rows = stream.getvalue().split("\r\x1b[2K")[1:]
    assert rows[0] == "forge recipes/x.yaml::chat: booting"
    assert all(len(row) <= 39 for row in rows)  # never wraps onto a second row
    assert rows[-1] == "forge recipes/x.yaml::chat: repeat 1 of"  # cut to 39 columns
    printer.done()
    assert stream.getvalue().endswith("\r\x1b[2K")  # cleared
    assert reporter.currentfspath is None  # pytest writes the file name again


def test_ci_lines_are_plain_one_per_phase_and_rate_limited() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, "t", False, True)
    printer.phase("booting")
    printer.update(_p(0, "warmup", 0))
    for done in range(1, 10):
        printer.update(_p(done))  # within 30 s: only the phase change is written
    printer.done()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "forge t: booting",
        "forge t: warmup, requests 0/10, 250 tok/s so far",
        "forge t: repeat 1 of 3, requests 1/10, 250 tok/s so far",
    ]
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_disabled_printer_writes_nothing() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, "t", True, False)
    printer.phase("booting")
    printer.update(_p(1))
    printer.done()
    assert stream.getvalue() == ""
