"""Which files in the recipes directory are recipes (and so tests), and which to leave alone.

A repository may keep other YAML under ``recipes/`` (a ``pancakes.yaml`` with ``flour:
200g``). A YAML file directly in the recipes directory is a recipe when its top level is
a mapping with a ``model`` or a ``hardware`` key: every recipe has both (pytest-forge's,
aevyra Forge's, a ``forge import-aim`` result), so a typo in one still makes a recipe that
fails, naming the file and field. A file that cannot be read as YAML at all (a syntax
error, not UTF-8, too big, nested too deep, an alias bomb, unreadable) may be a recipe
gone wrong: its intent is unknown, so it is collected and fails with its cause. Anything
else (another mapping, a list, an empty file) is not pytest-forge's and is left alone.

Imported when pytest loads the plugin: the YAML reader is imported only when a YAML file
in the recipes directory is looked at.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

RECIPE_SUFFIXES = (".yaml", ".yml")
# Top-level keys every recipe has: one of them makes a file a recipe.
RECIPE_KEYS = ("model", "hardware")


def in_recipes_dir(path: Path, recipes_dir: Path) -> bool:
    """Whether ``path`` is a YAML file directly in ``recipes_dir`` (a recipe candidate)."""
    return path.suffix in RECIPE_SUFFIXES and path.parent == recipes_dir


def is_recipe_file(path: Path) -> bool:
    """Whether the YAML file ``path`` is meant as a recipe (see the module docstring)."""
    from pytest_forge.yaml_io import load, read_text

    try:
        tree = load(read_text(path))
    except Exception:
        return True  # not readable as YAML: it fails as a recipe, with its cause
    return isinstance(tree, Mapping) and any(key in tree for key in RECIPE_KEYS)


def holds_recipes(recipes_dir: Path) -> bool:
    """Whether ``recipes_dir`` holds at least one recipe file."""
    if not recipes_dir.is_dir():
        return False
    return any(
        in_recipes_dir(path, recipes_dir) and path.is_file() and is_recipe_file(path)
        for path in sorted(recipes_dir.iterdir())
    )


def covers_recipes(config: pytest.Config, recipes_dir: Path) -> bool:
    """Whether the paths this run collects include ``recipes_dir`` and it holds recipes
    (a conservative guess: ``-k`` or ``-m`` may still deselect them)."""
    if not recipes_dir.is_dir():
        return False
    recipes = recipes_dir.resolve()
    here = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (here / arg.split("::", 1)[0]).resolve()
        if path == recipes or path.is_relative_to(recipes) or recipes.is_relative_to(path):
            return holds_recipes(recipes_dir)
    return False


__all__ = ["covers_recipes", "holds_recipes", "in_recipes_dir", "is_recipe_file"]
