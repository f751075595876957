"""The run store: ``<root>/<NNN>_<timestamp>/``, one directory per tune run.

    config.json        every option of the run (secrets redacted)
    experiments.jsonl  append-only, one JSON line per experiment, fsync'd as each one ends
    experiments.tsv    the same as a table for people   (regenerated after every append)
    experiments.json   the same as a JSON list for tools (regenerated after every append)
    best_recipe.yaml   the best recipe so far
    exp0-outputs/      experiment 0's greedy outputs per workload (tune/reference_outputs.py)
    front/             objective pareto: one ready-to-commit recipe per point of the Pareto
                       front, ``<recipe_id>-<hash>.yaml`` (rewritten as the front changes)
    front.json         the front those files belong to: each point's metrics and its file
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

import datetime as _dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_forge.errors import ForgeError
from pytest_forge.fileio import Claim, LockTimeout, atomic_write, fsync_dir, locked
from pytest_forge.tune.experiment_log import append_line, read_records
from pytest_forge.tune.redact import redact
from pytest_forge.tune.table import tsv

if TYPE_CHECKING:
    from pytest_forge.recipe import Recipe

CONFIG = "config.json"
EXPERIMENTS = "experiments.jsonl"
TSV = "experiments.tsv"
TABLE_JSON = "experiments.json"
BEST_RECIPE = "best_recipe.yaml"
COMPLETED = "completed.json"
LOGS = "logs"
FRONT = "front"
FRONT_JSON = "front.json"
CLAIM = "run"  # the run's owner holds the lock of <run>/run (the sidecar .run.lock)

_RUN_NAME = re.compile(r"^(\d{3,})_")


def run_number(path: Path) -> int | None:
    """The NNN of a run directory ``<NNN>_<timestamp>`` (None: not a run's name)."""
    match = _RUN_NAME.match(path.name)
    return int(match.group(1)) if match else None


def runs_under(root: Path) -> list[Path]:
    """The run directories under ``root``, newest (highest-numbered) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if run_number(p) is not None and p.is_dir()),
        key=lambda p: (run_number(p), p.name),
        reverse=True,
    )


def front_file_name(recipe_id: str, content_hash: str) -> str:
    """A front recipe's file name under ``front/``: ``<recipe_id>-<hash>.yaml``."""
    return f"{recipe_id}-{content_hash}.yaml"


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# -- the store -------------------------------------------------------------------------
class RunStore:
    """One tune run's directory. Build with :meth:`create`, :meth:`open` or
    :meth:`latest_unfinished`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._claim: Claim | None = None

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

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
        number = max((n for n in map(run_number, root.iterdir()) if n is not None), default=0)
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
        """An existing run; ForgeError when ``path`` holds no run's config.json."""
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
        for path in runs_under(root):
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
        """The run's config.json (every option it was started with, secrets redacted)."""
        try:
            data = json.loads((self.path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ForgeError(f"{self.path / CONFIG}: cannot read the run's config: {exc}") from None
        if not isinstance(data, dict):
            raise ForgeError(f"{self.path / CONFIG}: expected a JSON object")
        return data

    def experiments(self) -> list[dict[str, Any]]:
        """Every stored experiment in order (a half-written last line is not one)."""
        return read_records(self.path / EXPERIMENTS)

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
            append_line(path, line)
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
        """Give up the claim taken by :meth:`claim` (a no-op without one)."""
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _write_tables(self) -> None:
        records = self.experiments()
        atomic_write(self.path / TSV, tsv(records))
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

    def write_front(
        self, recipes: Sequence[tuple[Recipe, str]], summary: Mapping[str, Any]
    ) -> list[Path]:
        """The Pareto front's recipes as ``front/<recipe_id>-<hash>.yaml``, then ``front.json``.

        Each ``(recipe, header)`` becomes a full recipe file (the user's recipe file with the
        recipe's values, so its comments carry over; loadable by ``Recipe.load``) under
        ``header``, comment lines naming its measured metrics. ``Recipe.load`` wants
        ``<id>.yaml``, so each file's id is ``<recipe_id>-<hash>``: commit it as a recipe of
        its own, or over the original with the original's id. Files of recipes no longer on
        the front are removed; ``summary`` (JSON) describes the front as written.
        """
        folder = self.path / FRONT
        folder.mkdir(exist_ok=True)
        written: list[Path] = []
        for original, header in recipes:
            target = folder / front_file_name(original.id, original.content_hash)
            recipe = original.model_copy(update={"id": target.stem})
            # Composed in a scratch file then renamed: a kill never leaves a front file
            # whose header describes one recipe and whose body holds another.
            scratch = folder / ".writing.yaml"
            source = recipe.path
            body = source.read_text(encoding="utf-8") if source and source.is_file() else ""
            atomic_write(scratch, header + body)
            recipe.save(scratch)  # a copy: the tune's recipe keeps its path
            os.replace(scratch, target)
            written.append(target)
        keep = {p.name for p in written}
        for stale in folder.glob("*.yaml"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
        fsync_dir(folder)
        atomic_write(self.path / FRONT_JSON, _dump(dict(summary)))
        return written

    def front(self) -> dict[str, Any] | None:
        """``front.json`` (objective pareto); None when the run has none or it is unreadable."""
        try:
            data = json.loads((self.path / FRONT_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def best_recipe_path(self) -> Path:
        """Where the best recipe so far is kept (``best_recipe.yaml``)."""
        return self.path / BEST_RECIPE

    @property
    def server_log_dir(self) -> Path:
        """The run's directory for vLLM server logs (created on first use)."""
        path = self.path / LOGS
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mark_completed(self, summary: Mapping[str, Any]) -> None:
        """Write completed.json (``summary``, redacted): the run finished and is not resumed."""
        data = {
            "completed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **redact(dict(summary), "summary"),
        }
        atomic_write(self.path / COMPLETED, _dump(data))

    @property
    def is_completed(self) -> bool:
        """Whether the run finished cleanly (it has completed.json)."""
        return (self.path / COMPLETED).is_file()

    def completed(self) -> dict[str, Any] | None:
        """completed.json's summary; None when the run is unfinished or the file unreadable."""
        if not self.is_completed:
            return None
        try:
            data = json.loads((self.path / COMPLETED).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


__all__ = [
    "CONFIG",
    "EXPERIMENTS",
    "FRONT",
    "FRONT_JSON",
    "RunStore",
    "front_file_name",
    "run_number",
    "runs_under",
]
