"""The run's append-only experiment log (``experiments.jsonl``): durable appends, and reads
that survive a kill mid-write.

One JSON object per line, fsync'd as it is written. A SIGKILL during an append leaves at
most a half-written last line: reads ignore it and the next append cuts it off first.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

from pytest_forge.errors import ForgeError
from pytest_forge.fileio import fsync_dir

log = logging.getLogger(__name__)

# Scanning back for the last complete line reads this much at a time: one block holds many
# records in practice, and the scan reads further when it must.
_SCAN_BLOCK = 4096


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record in the log, in order (a half-written last line is not one)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    # A final piece without its newline is a write a kill interrupted: not a record.
    complete, tail = lines[:-1], lines[-1]
    if tail.strip():
        log.warning("%s: ignoring a half-written last line (%d bytes)", path, len(tail))
    records: list[dict[str, Any]] = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ForgeError(f"{path}:{number}: not a JSON experiment record: {exc}") from None
        if not isinstance(record, dict):
            raise ForgeError(f"{path}:{number}: an experiment record must be a JSON object")
        records.append(record)
    return records


def append_line(path: Path, line: bytes) -> None:
    """Append one complete line (ending in a newline) and fsync it; on the log's creation
    the directory entry is fsync'd too. The caller holds the log's lock."""
    created = not path.exists()
    if not created:
        _drop_partial_tail(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def _last_newline_end(fh: BinaryIO, size: int) -> int:
    """The offset just past the last newline before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - _SCAN_BLOCK)
        fh.seek(start)
        chunk = fh.read(end - start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return start + idx + 1
        end = start
    return 0


def _drop_partial_tail(path: Path) -> None:
    """Cut a line left half-written by a kill, so the next append starts on a fresh line."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        keep = _last_newline_end(fh, size)
        log.warning(
            "%s: dropping a half-written last line (%d bytes) left by an interrupted run",
            path,
            size - keep,
        )
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


__all__ = ["append_line", "read_records"]
