"""The run store: ``<root>/<NNN>_<timestamp>/``, one directory per tune run.

    config.json        every option of the run (secrets redacted)
    experiments.jsonl  append-only, one JSON line per experiment, fsync'd as each one ends
    experiments.tsv    the same as a table for people   (regenerated after every append)
    experiments.json   the same as a JSON list for tools (regenerated after every append)
    best_recipe.yaml   the best recipe so far
    logs/              vLLM server logs of the run
    completed.json     written on a clean finish; absent = interrupted, resumable

``experiments.jsonl`` is the source of truth: the tables are derived from it and a SIGKILL at
any moment costs at most the experiment in flight (its half-written line is dropped).

One process at a time: the tune that creates or resumes a run claims it (a lock held for the
session, see :meth:`RunStore.claim`), and each append happens under the log's lock and refuses
an experiment number another writer took, so two resumes of one run cannot both store
"experiment 1" and leave the run unresumable.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import ForgeError
from pytest_forge.fileio import Claim, LockTimeout, atomic_write, fsync_dir, locked

if TYPE_CHECKING:
    from pytest_forge.recipe import Recipe

log = logging.getLogger(__name__)

CONFIG = "config.json"
EXPERIMENTS = "experiments.jsonl"
TSV = "experiments.tsv"
TABLE_JSON = "experiments.json"
BEST_RECIPE = "best_recipe.yaml"
COMPLETED = "completed.json"
LOGS = "logs"
CLAIM = "run"  # the run's owner holds the lock of <run>/run (the sidecar .run.lock)

REDACTED = "***redacted***"
# Matched against each word of a key, so "api_key", "HF_TOKEN", "apiKey" and
# "Authorization" are redacted while "max_num_batched_tokens" or "input_tokens" are not.
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "authorization")
# Credentials by their shape, wherever they appear (an error text, a log tail, a note).
_SECRET_VALUE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,})|\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
)
# A mapping holding these is an environment dump, which may hold any secret under any name.
_ENV_MARKERS = frozenset({"PATH", "HOME"})

_RUN_NAME = re.compile(r"^(\d{3,})_")
_KEPT_MARK = {"baseline": "✓", "kept": "✓", "rejected": "✗"}


# -- redaction -------------------------------------------------------------------------
def _is_secret_key(key: str) -> bool:
    words = [
        w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()) if w
    ]
    # The last word names what the value is: HF_TOKEN, api_key, client_secret are secrets;
    # total_token_throughput and max_num_batched_tokens are not.
    return bool(words) and words[-1].endswith(_SECRET_WORDS)


def redact(value: Any, where: str = "config") -> Any:
    """A JSON-ready copy of ``value`` with every secret-looking key or value replaced.

    Non-finite floats become None (JSON has no NaN). An environment dump is refused, not
    filtered: nothing that may hold a secret under an unrecognisable name is written.
    """
    if isinstance(value, os._Environ) or (
        isinstance(value, Mapping) and {str(k) for k in value} >= _ENV_MARKERS
    ):
        raise ForgeError(
            f"{where}: looks like an environment dump (has {', '.join(sorted(_ENV_MARKERS))}); "
            "the run store records options, never the environment"
        )
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED
            if _is_secret_key(str(k)) and isinstance(v, str)
            else redact(v, f"{where}.{k}")
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [redact(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Path):
        return str(value)
    return redact(str(value), where)


# -- durable files ---------------------------------------------------------------------
def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _drop_partial_tail(path: Path) -> None:
    """Cut a line left half-written by a kill, so the next append starts on a fresh line."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # Scan back for the last complete line; the records are small, a block suffices
        # in practice but read further when needed.
        block = 4096
        end = size
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            end = start
        else:
            keep = 0
        log.warning(
            "%s: dropping a half-written last line (%d bytes) left by an interrupted run",
            path,
            size - keep,
        )
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


def _read_experiments(path: Path) -> list[dict[str, Any]]:
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


# -- the table -------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _headline_values(record: Mapping[str, Any], key: str) -> list[float]:
    metrics = record.get("metrics") or {}
    return [v for head in metrics.values() if (v := _num((head or {}).get(key))) is not None]


def record_summary(record: Mapping[str, Any]) -> dict[str, float | None]:
    """Across workloads: mean tok/s, the worst E2E p99 and the worst accuracy."""
    tok = _headline_values(record, "output_throughput")
    p99 = _headline_values(record, "e2el_p99_ms")
    acc = [v for v in (record.get("accuracy") or {}).values() if _num(v) is not None]
    return {
        "tok_s": sum(tok) / len(tok) if tok else None,
        "p99_ms": max(p99) if p99 else None,
        "accuracy": min(acc) if acc else None,
    }


def kept_mark(status: str | None) -> str:
    """✓ baseline or kept, ✗ measured and rejected, - never scored (invalid, crashed)."""
    return _KEPT_MARK.get(status or "", "-")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


TSV_COLUMNS = (
    "exp",
    "slot",
    "status",
    "kept",
    "recipe_id",
    "generation",
    "parent_id",
    "score",
    "tok_s",
    "p99_ms",
    "accuracy",
    "duration_s",
    "agent_cost_usd",
    "changes",
    "rationale",
    "reason",
)


def _tsv(records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    for r in records:
        s = record_summary(r)
        usage = r.get("usage") or {}
        writer.writerow(
            [
                r.get("exp"),
                "" if r.get("slot") is None else r.get("slot"),
                r.get("status"),
                kept_mark(r.get("status")),
                r.get("recipe_id") or "",
                "" if r.get("generation") is None else r.get("generation"),
                r.get("parent_id") or "",
                _fmt(_num(r.get("score")), ".4f"),
                _fmt(s["tok_s"], ".1f"),
                _fmt(s["p99_ms"], ".1f"),
                _fmt(s["accuracy"], ".3f"),
                _fmt(_num(r.get("duration_s")), ".1f"),
                _fmt(_num(usage.get("cost_usd")), ".4f"),
                json.dumps(r.get("changes") or {}, ensure_ascii=False, sort_keys=True),
                _one_line(r.get("rationale")),
                _one_line(r.get("reason")),
            ]
        )
    return out.getvalue()


# -- the store -------------------------------------------------------------------------
class RunStore:
    """One tune run's directory. Build with :meth:`create`, :meth:`open` or
    :meth:`latest_unfinished`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._claim: Claim | None = None

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # construction
    @classmethod
    def create(cls, root: Path, config: Mapping[str, Any], *, claim: bool = False) -> RunStore:
        """A new run ``<root>/<NNN>_<timestamp>/`` whose config.json records ``config``.

        ``claim``: claimed before config.json exists, so no resume can pick it up first.
        """
        root = Path(root)
        safe = redact(dict(config))  # refuse an env dump before touching the disk
        root.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
        number = max((n for n in map(_run_number, root.iterdir()) if n is not None), default=0)
        while True:
            number += 1
            path = root / f"{number:03d}_{stamp}"
            try:
                # exist_ok=False: two runs started at once each get their own number.
                path.mkdir()
                break
            except FileExistsError:
                continue
        fsync_dir(root)
        store = cls(path)
        if claim:
            store.claim()
        data = {
            "run": path.name,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **safe,
        }
        atomic_write(path / CONFIG, _dump(data))
        return store

    @classmethod
    def open(cls, path: Path) -> RunStore:
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise ForgeError(f"{path}: not a tune run (no {CONFIG})")
        return cls(path)

    @classmethod
    def latest_unfinished(
        cls, root: Path, where: Mapping[str, Any] | None = None
    ) -> RunStore | None:
        """The highest-numbered run under ``root`` with config.json and no completed.json
        (and whose config matches every item of ``where``, e.g. ``{"recipe_id": "x"}``)."""
        root = Path(root)
        if not root.is_dir():
            return None
        runs = sorted(
            (p for p in root.iterdir() if _run_number(p) is not None and p.is_dir()),
            key=lambda p: (_run_number(p), p.name),
            reverse=True,
        )
        for path in runs:
            store = cls(path)
            if not (path / CONFIG).is_file() or store.is_completed:
                continue
            if where:
                try:
                    config = store.config
                except ForgeError:
                    continue
                if any(config.get(k) != v for k, v in where.items()):
                    continue
            return store
        return None

    # contents
    @property
    def config(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ForgeError(f"{self.path / CONFIG}: cannot read the run's config: {exc}") from None
        if not isinstance(data, dict):
            raise ForgeError(f"{self.path / CONFIG}: expected a JSON object")
        return data

    def experiments(self) -> list[dict[str, Any]]:
        """Every stored experiment in order (a half-written last line is not one)."""
        return _read_experiments(self.path / EXPERIMENTS)

    def append_experiment(self, record: Mapping[str, Any]) -> None:
        """Durably append one experiment, then regenerate the derived tables.

        Under the log's lock: a record numbered ``exp`` must be the run's next experiment,
        else another process stored that number meanwhile, and this one is refused (the
        run stays as it was, and resumable).
        """
        safe = redact(dict(record), "experiment")
        line = (json.dumps(safe, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        path = self.path / EXPERIMENTS
        with locked(path, what="the experiment log's lock"):
            exp = safe.get("exp")
            if isinstance(exp, int) and not isinstance(exp, bool):
                stored = len(self.experiments())
                if exp != stored:
                    raise ForgeError(
                        f"{path}: experiment {exp} cannot be stored: the run already holds "
                        f"{stored} experiment(s), so another process wrote to this run since "
                        "this tune read it (two --forge-resume of one run at once?). This "
                        "result is not stored and the run is unchanged: resume it once the "
                        "other process has finished"
                    )
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
                fsync_dir(self.path)
            self._write_tables()

    # ownership
    def claim(self) -> None:
        """Own this run until :meth:`release` (or this process ends): another process's
        claim fails at once, naming this one's pid. Claiming twice is a no-op."""
        if self._claim is not None and not self._claim.released:
            return
        try:
            self._claim = Claim(self.path / CLAIM, timeout=0)
        except LockTimeout as exc:
            raise ForgeError(
                f"tune run {self.path} is in use by {exc.holder}: another pytest-forge "
                "process is tuning or resuming it. Wait for it to finish (then "
                "--forge-resume continues the run), or start a new run (without "
                "--forge-resume)"
            ) from None

    def release(self) -> None:
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _write_tables(self) -> None:
        records = self.experiments()
        atomic_write(self.path / TSV, _tsv(records))
        atomic_write(self.path / TABLE_JSON, _dump(records))

    def write_best_recipe(self, recipe: Recipe) -> Path:
        """``best_recipe.yaml``: the best recipe so far (Recipe.save writes atomically)."""
        target = self.path / BEST_RECIPE
        source = recipe.path
        if not target.exists() and source is not None and source.is_file():
            # Start from the user's file so its comments carry over (save edits in place).
            atomic_write(target, source.read_text(encoding="utf-8"))
        # Save a copy: save() re-points the recipe at the file it wrote, and the tune's
        # recipes must keep pointing at recipes/ (recorded outputs are found beside it).
        return recipe.model_copy().save(target)

    @property
    def best_recipe_path(self) -> Path:
        return self.path / BEST_RECIPE

    @property
    def server_log_dir(self) -> Path:
        path = self.path / LOGS
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mark_completed(self, summary: Mapping[str, Any]) -> None:
        data = {
            "completed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **redact(dict(summary), "summary"),
        }
        atomic_write(self.path / COMPLETED, _dump(data))

    @property
    def is_completed(self) -> bool:
        return (self.path / COMPLETED).is_file()

    def completed(self) -> dict[str, Any] | None:
        if not self.is_completed:
            return None
        try:
            data = json.loads((self.path / COMPLETED).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def _run_number(path: Path) -> int | None:
    match = _RUN_NAME.match(path.name)
    return int(match.group(1)) if match else None


__all__ = [
    "REDACTED",
    "RunStore",
    "kept_mark",
    "record_summary",
    "redact",
]
