"""The ``--dist loadgroup`` scheduler, with each recipe file's tests in one group.

Imported only on a pytest-xdist controller (it subclasses xdist's scheduler). xdist groups
``xdist_group``-marked tests by a suffix it appends to their node ids on the workers; on
pytest 9.2 that append silently no longer takes effect (pytest-xdist issue #1386), and the
groups fall apart. A recipe's group is known from its node id alone
(``recipes/<id>.yaml::<test>``), so this scheduler derives it there.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadGroupScheduling


class RecipeGroupScheduling(LoadGroupScheduling):
    """loadgroup, where a recipe's tests are one work unit: one worker, one boot."""

    def __init__(
        self,
        config: pytest.Config,
        log: Producer | None = None,
        *,
        group_of: Callable[[str], str | None],
    ) -> None:
        super().__init__(config, log)
        self._group_of = group_of  # a node id's recipe group, None for other tests

    def _split_scope(self, nodeid: str) -> str:
        group = self._group_of(nodeid)
        return group if group is not None else super()._split_scope(nodeid)


__all__ = ["RecipeGroupScheduling"]
