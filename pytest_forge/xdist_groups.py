"""pytest-xdist: a recipe's tests stay on one worker, under every scheduler.

A recipe's tests share one vLLM server, booted by the first of them, and write the recipe
file back (baselines, a tune's winner): split over two workers they boot it twice, measure
while competing for the machine, and write back concurrently. Each recipe's collector
carries ``xdist_group("forge:<id>")``, the public way to keep tests together, honoured by
``--dist loadgroup`` (and, since xdist's own grouping silently fails on pytest 9.2 —
pytest-xdist #1386 — pytest-forge's loadgroup scheduler puts a recipe's tests in that group
from their node ids). For the other schedulers:

- ``loadfile`` and ``loadscope`` keep a file's (a recipe's) tests together already;
- ``-n N`` without ``--dist`` (xdist's implicit ``load``) becomes ``loadgroup`` when recipes
  are collected: xdist distributes tests without a group as under ``load``, so other tests
  are spread as before;
- ``--dist load`` or ``worksteal`` chosen explicitly would split recipes and honour no
  group (xdist has no groups in ``worksteal``): rather than rewrite the user's choice for
  every test, the run is refused with the fix, when it collects recipes;
- ``--dist each`` runs every test on every worker, as asked; but a tune there would tune
  each recipe once per worker at the same time, so ``--forge-tune`` is refused with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_forge.recipe_files import covers_recipes, in_recipes_dir

if TYPE_CHECKING:
    from pytest_forge.options import ForgeConfig

GROUP_PREFIX = "forge:"
_SPLITTING = ("load", "worksteal")


def add_group_mark(node: pytest.Collector, recipe_id: str) -> None:
    """Mark a recipe's collector: its every test (marks are inherited) joins one group."""
    if node.config.pluginmanager.has_plugin("xdist"):  # which registers the mark
        node.add_marker(pytest.mark.xdist_group(name=f"{GROUP_PREFIX}{recipe_id}"))


def keep_recipes_together(config: pytest.Config, forge: ForgeConfig) -> None:
    """On the xdist controller: choose ``loadgroup`` for ``-n N`` alone, refuse a
    scheduler that would split a recipe (see the module docstring)."""
    dist = getattr(config.option, "dist", "no")
    if dist == "no" or not covers_recipes(config, forge.recipes_dir):
        return
    known = config.known_args_namespace
    chosen = getattr(known, "dist", "no")
    if chosen == "no" and getattr(known, "distload", False):
        chosen = "load"  # -d, the old spelling of --dist load
    if chosen == "no" and dist == "load":
        config.option.dist = dist = "loadgroup"
    if dist == "loadgroup":
        config.pluginmanager.register(_RecipeScheduler(forge.recipes_dir), "forge-xdist-scheduler")
        return
    if dist in _SPLITTING:
        raise pytest.UsageError(
            f"--dist {dist} spreads a recipe's tests over the pytest-xdist workers: each "
            "would boot the recipe's vLLM server (measuring while they compete for the "
            "machine) and write its file back at the same time. Use --dist loadgroup "
            "(pytest-forge groups each recipe's tests; every other test is still "
            "distributed as under load), or --dist loadfile / loadscope"
        )
    if dist == "each" and forge.tune:
        raise pytest.UsageError(
            "--dist each runs every test on every worker: with --forge-tune each worker "
            "would tune every recipe at the same time. Use --dist loadgroup"
        )


def recipe_group(nodeid: str, root: Path, recipes_dir: Path) -> str | None:
    """``forge:<id>`` for a test of recipe file ``<recipes_dir>/<id>.yaml``, else None."""
    path = (root / nodeid.split("::", 1)[0]).resolve()
    if in_recipes_dir(path, recipes_dir.resolve()):
        return f"{GROUP_PREFIX}{path.stem}"
    return None


class _RecipeScheduler:
    """Plugin: ``--dist loadgroup`` with each recipe's tests in its group."""

    def __init__(self, recipes_dir: Path) -> None:
        self.recipes_dir = recipes_dir

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "loadgroup":
            return None
        from pytest_forge.xdist_scheduler import RecipeGroupScheduling

        root = Path(config.rootpath)
        return RecipeGroupScheduling(
            config, log, group_of=lambda nodeid: recipe_group(nodeid, root, self.recipes_dir)
        )


__all__ = ["GROUP_PREFIX", "add_group_mark", "keep_recipes_together", "recipe_group"]
