"""The order in which ``make test``'s pytest-xdist workers take the test files.

``--dist loadfile`` hands out one test file at a time, largest file (by number of tests)
first. The longest files have few tests: the owner crash test (twenty restarts of ``fdo
owner serve`` per database) and the rollout test (device agents checking in on a timer)
run for one to two minutes each with two tests, so they were handed out last, where
one worker could be left running them alone after the other had run out of files.
:class:`LongPolesFirst` starts them first, and hands each database's half of them out
as a unit of its own (their module fixtures are made per database, so nothing is made
twice), so the two workers run them side by side. Everything else keeps xdist's order.
"""

from __future__ import annotations

import re
from typing import Any

from xdist.scheduler import LoadFileScheduling

LONG_POLES = (
    "tests/e2e/test_owner_crash.py",
    "tests/e2e/test_rollouts.py",
)
"""Files that run longest, longest first. Each one's tests are parametrized by database
with module fixtures made per database, so its databases may run on different workers."""

_POSTGRESQL = re.compile(r"\[(?:.*-)?postgresql(?:-.*)?\]$")


def scope_of(nodeid: str) -> str:
    """The unit a worker takes: the file, or for a long pole the file and its database."""
    path = nodeid.split("::", 1)[0]
    if path in LONG_POLES:
        return f"{path}::{'postgresql' if _POSTGRESQL.search(nodeid) else 'sqlite'}"
    return path


def rank(scope: str) -> int:
    """Long poles first (in :data:`LONG_POLES` order), then the rest as xdist ordered them."""
    path = scope.split("::", 1)[0]
    return LONG_POLES.index(path) if path in LONG_POLES else len(LONG_POLES)


class LongPolesFirst(LoadFileScheduling):  # type: ignore[misc]  # xdist is untyped
    """``--dist loadfile`` with the long poles split by database and handed out first."""

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self._ordered = False

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)

    def _assign_work_unit(self, node: Any) -> None:
        if not self._ordered:  # the queue is complete before the first unit is handed out
            self._ordered = True
            units = sorted(self.workqueue.items(), key=lambda item: rank(item[0]))  # stable
            self.workqueue.clear()
            self.workqueue.update(units)
        super()._assign_work_unit(node)
