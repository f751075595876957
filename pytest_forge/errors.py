"""Errors a user sees. Each names the file, line, field or cause it is about."""

from __future__ import annotations

from pathlib import Path


class ForgeError(Exception):
    """Base of every user-facing pytest-forge error; `str()` is the whole message."""


class RecipeError(ForgeError):
    """A recipe is invalid; the message names its file and, when known, the field."""

    def __init__(self, path: Path | str | None, field: str | None, message: str) -> None:
        self.path = Path(path) if path is not None else None
        self.field = field
        self.message = message
        where = str(self.path) if self.path is not None else "<recipe>"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class WorkloadError(ForgeError):
    """A workload is invalid; the message names its file and, when known, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.field = field
        self.message = message
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class ServerError(ForgeError):
    """vLLM failed to boot, timed out, or died; carries the tail of its log."""

    def __init__(self, message: str, log_tail: str = "", log_path: Path | None = None) -> None:
        self.message = message
        self.log_tail = log_tail
        self.log_path = log_path
        text = message
        if log_path is not None:
            text += f"\nfull log: {log_path}"
        if log_tail:
            text += f"\n--- last lines of the vLLM log ---\n{log_tail}"
        super().__init__(text)


class BenchError(ForgeError):
    """The benchmark client could not run the workload (not a failed request: those are counted)."""


class AgentError(ForgeError):
    """The tuning agent failed or answered something unusable."""
