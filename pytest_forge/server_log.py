"""A vLLM server's log file: a new ``vllm-<n>.log`` per boot, its header, its tail.

The header names the recipe and the argv vLLM was started with, secrets hidden; the tail
goes into every ServerError, so a failed boot explains itself.
"""

from __future__ import annotations

import os
import shlex
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = ["open_log", "redact_argv", "tail"]

# Values following these flags never reach the log header.
_SECRET_FLAGS = ("--api-key", "--hf-token", "--token")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every secret-carrying flag replaced by ``***``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in _SECRET_FLAGS:
            out.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{flag}=" for flag in _SECRET_FLAGS)):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def _next_log_path(log_dir: Path) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while (log_dir / f"vllm-{n}.log").exists():
        n += 1
    return log_dir / f"vllm-{n}.log"


def open_log(log_dir: Path, title: str, argv: Sequence[str]) -> tuple[Path, IO[bytes]]:
    """A new ``vllm-<n>.log`` in ``log_dir``, open for the server's output, header written."""
    path = _next_log_path(log_dir)
    log_file = open(path, "xb")  # noqa: SIM115 - the caller closes it when the server stops
    log_file.write(f"# pytest-forge: {title}\n# argv: {shlex.join(redact_argv(argv))}\n".encode())
    log_file.flush()
    return path, log_file


def tail(path: Path | None, lines: int) -> str:
    """The last ``lines`` lines of the file at ``path`` ("" when there is none)."""
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        # Tracebacks have long lines; 256 KiB is plenty for 40 of them.
        fh.seek(max(0, size - 256 * 1024))
        data = fh.read()
    text = data.decode("utf-8", errors="replace")
    return "\n".join(deque(text.splitlines(), maxlen=lines))
