"""The services' clock: what time it is (aware, UTC), and the type of a clock that tests
replace with their own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
