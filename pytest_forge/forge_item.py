"""The base of every pytest-forge test item: marked ``forge``, failures shown as messages.

Every item a recipe file yields (a gate test, a tune slot, a recipe or workload that could
not be loaded) carries the ``forge`` marker, so ``-m "not forge"`` deselects them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_forge.errors import ForgeError

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr, TracebackStyle

MARKER = "forge"
MARKER_HELP = (
    "forge: a pytest-forge test (recipe x workload gate, tune slot, or a recipe or workload "
    "that could not be loaded); deselect them with -m 'not forge'"
)


class ForgeFailure(Exception):
    """A test outcome to show as a plain message, without a Python traceback."""


class ForgeItem(pytest.Item):
    """A pytest-forge test: marked ``forge``; a ForgeFailure or ForgeError is shown as its
    message, any other exception (a bug) with pytest's traceback."""

    # Whether a report of this item is a gate test's (results.json lists those that
    # measured nothing).
    forge_gate = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker(MARKER)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: TracebackStyle | None = None,
    ) -> str | TerminalRepr:
        """The message of a forge failure, pytest's traceback for anything else."""
        if isinstance(excinfo.value, ForgeFailure | ForgeError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """``<recipe file>::<name>`` as pytest shows the test's location."""
        parent = self.parent.name if self.parent is not None else ""
        return self.path, 0, f"{parent}::{self.name}"


__all__ = ["MARKER", "MARKER_HELP", "ForgeFailure", "ForgeItem"]
