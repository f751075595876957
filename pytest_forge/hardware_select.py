"""``--forge-hardware-only``: the tests of recipes this runner cannot run, deselected.

A fleet with recipes for several hardware classes (an H100 and a T4 recipe, say) gates them
as a job matrix over runner classes: each runner keeps the recipes its hardware can run and
deselects the others (pytest's "deselected", not skipped), so strict mode judges only what
this runner can. Whether a recipe can run here is decided once per recipe, at collection,
by its collector (items.RecipeFile: hardware.match_recipe_hardware and the quantization
gates, on the hardware the session detected once); this module acts on that decision. What
it deselected goes into results.json (``hardware_deselected``), where ``forge merge``
checks that another runner ran it. Under pytest-xdist the workers deselect (they collect)
and hand their lists to the controller, which writes results.json and the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_forge.forge_item import MARKER
from pytest_forge.options import forge_config

OPTION = "--forge-hardware-only"
INI = "forge_hardware_only"
# The key of config.workeroutput a pytest-xdist worker hands its deselection over in.
WORKER_OUTPUT_KEY = "forge_hardware_deselected"


@dataclass
class Deselection:
    """What ``--forge-hardware-only`` deselected in this run."""

    # recipe id -> why this runner cannot run it (every forge test of it was deselected)
    recipes: dict[str, str] = field(default_factory=dict)
    # The gate tests among them, as results.json lists them: test (node id), recipe,
    # workload, reason.
    tests: list[dict[str, str]] = field(default_factory=list)

    def add(self, other: Deselection) -> None:
        """Take in another's (a worker's): every pytest-xdist worker collects, and so
        deselects, the same tests, so each test is kept once."""
        self.recipes.update(other.recipes)
        seen = {t["test"] for t in self.tests}
        self.tests += [t for t in other.tests if t["test"] not in seen]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for a pytest-xdist worker's output."""
        return {"recipes": dict(self.recipes), "tests": [dict(t) for t in self.tests]}

    @classmethod
    def from_dict(cls, data: Any) -> Deselection:
        """What :meth:`to_dict` wrote (anything else: nothing)."""
        if not isinstance(data, dict):
            return cls()
        recipes = data.get("recipes")
        tests = [t for t in data.get("tests") or [] if isinstance(t, dict)]
        if not isinstance(recipes, dict):
            recipes = {}
        return cls({str(k): str(v) for k, v in recipes.items()}, tests)


_DESELECTION = pytest.StashKey[Deselection]()


def _recipe_file(item: pytest.Item) -> Any:
    """The recipe file collecting a forge test (None for any other test)."""
    if item.get_closest_marker(MARKER) is None:
        return None
    return item.parent


def deselect_other_hardware(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest_collection_modifyitems: with --forge-hardware-only, deselect the forge tests
    of recipes whose hardware (or quantization) this machine lacks."""
    if not forge_config(config).hardware_only:
        return
    found = config.stash.setdefault(_DESELECTION, Deselection())
    keep, drop = [], []
    for item in items:
        parent = _recipe_file(item)
        reason = getattr(parent, "other_hardware", None)
        if not reason:
            keep.append(item)
            continue
        drop.append(item)
        recipe_id = parent.recipe.id
        found.recipes[recipe_id] = reason
        if getattr(item, "forge_gate", False):  # results.json tracks gate tests, not tune slots
            entry = {"test": item.nodeid, "recipe": recipe_id, "workload": item.name}
            found.tests.append({**entry, "reason": reason})
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def deselection(config: pytest.Config) -> Deselection | None:
    """What this run deselected for hardware (on the xdist controller: what its workers
    did); None when --forge-hardware-only is off."""
    if not forge_config(config).hardware_only:
        return None
    return config.stash.setdefault(_DESELECTION, Deselection())


def summary_line(config: pytest.Config) -> str | None:
    """The terminal summary's line naming the recipes deselected for hardware, if any."""
    found = deselection(config)
    if not found or not found.recipes:
        return None
    ids = ", ".join(sorted(found.recipes))
    return (
        f"forge: {len(found.recipes)} recipe(s) for other hardware deselected: {ids} "
        "(--forge-hardware-only; `forge merge` checks that another runner ran them)"
    )


class WorkerHandOver:
    """pytest-xdist: the workers' deselections reach the controller (registered only with
    --forge-hardware-only)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_sessionfinish(self) -> None:
        """On a worker: hand this worker's deselection to the controller."""
        output = getattr(self.config, "workeroutput", None)
        if output is not None:
            output[WORKER_OUTPUT_KEY] = self.config.stash.setdefault(
                _DESELECTION, Deselection()
            ).to_dict()

    @pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown without it
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """On the controller: take in a finished worker's deselection."""
        output = getattr(node, "workeroutput", None) or {}
        received = Deselection.from_dict(output.get(WORKER_OUTPUT_KEY))
        self.config.stash.setdefault(_DESELECTION, Deselection()).add(received)


__all__ = [
    "INI",
    "OPTION",
    "WORKER_OUTPUT_KEY",
    "Deselection",
    "WorkerHandOver",
    "deselect_other_hardware",
    "deselection",
    "summary_line",
]
