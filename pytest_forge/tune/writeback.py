"""A tune's winner into ``recipes/``: only what the tune changed, onto the file as it is now.

A tune runs for hours; meanwhile someone may edit the recipe (a gate, a comment, another
workload's baseline) or another writer may record baselines into it. So the write-back
re-reads the file under its lock and applies the tune's change set alone — the serving
fields it changed (``Recipe.diff`` of the winner against the recipe the tune started
from), the winner's lineage and the baselines it measured. A serving edit made meanwhile
is never reverted: the same field edited is a conflict, and so is any other serving field,
since the winner's baselines were measured without that edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_forge.errors import ForgeError
from pytest_forge.fileio import locked
from pytest_forge.recipe import Baseline, Recipe


class WriteBackConflict(ForgeError):
    """The recipe file's serving setup changed while the tune ran; nothing was written."""


def write_back(
    started: Recipe, winner: Recipe, baselines: Mapping[str, Baseline]
) -> tuple[Recipe, Path]:
    """Apply the tune's changes (``started`` -> ``winner``: serving fields and lineage) and
    ``baselines`` to ``started``'s file as it is now; returns the recipe as written."""
    path = started.path
    if path is None:
        raise ForgeError(f"recipe {started.id} has no file to write the tune's winner to")
    changes = started.diff(winner)
    with locked(path, what="the recipe's lock"):
        current = Recipe.load(path)
        drift = started.diff(current)
        if drift:
            raise WriteBackConflict(_conflict_message(path, drift, changes))
        updated = current.with_changes({key: change["to"] for key, change in changes.items()})
        updated = updated.model_copy(update={"lineage": winner.lineage})
        updated = updated.with_baselines(baselines)
        if updated.content_hash != winner.content_hash:  # pragma: no cover - a bug, not input
            raise ForgeError(
                f"{path}: applying the tune's changes gives recipe {updated.content_hash}, "
                f"not the winner {winner.content_hash}; nothing written"
            )
        return updated, updated.save(path)


def _conflict_message(
    path: Path, drift: Mapping[str, Mapping[str, Any]], changes: Mapping[str, Mapping[str, Any]]
) -> str:
    parts = []
    for key, edit in drift.items():
        then, now = edit["from"], edit["to"]
        if key in changes:
            parts.append(
                f"{key} changed in the file while the tune ran ({then!r} when it started, "
                f"{now!r} now; the winner has {changes[key]['to']!r})"
            )
        else:
            parts.append(
                f"{key} changed in the file while the tune ran ({then!r} when it started, "
                f"{now!r} now): the winner was measured without that edit, so its baselines "
                "would not describe the file"
            )
    return f"{path}: " + "; ".join(parts)


__all__ = ["WriteBackConflict", "write_back"]
