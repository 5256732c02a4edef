"""Rollout decisions, without I/O (docs/rollouts.md).

:mod:`owner.rollout_runner` reads a rollout and its devices from the database, asks
:func:`step` what changes now, and writes that under a compare-and-set. Everything here
is a pure function of its arguments (``now`` included), so it is unit-tested alone.

* :func:`plan_batches` — batches computed once at start: the canary batch first (devices
  matching the canary label, lowest ids first), then the others by id, by count or %.
* :func:`holds` — a device whose labels match a hold selector is held (excluded).
* :class:`Window` — days and hours a device may start updating, in UTC or device-local.
* :func:`device_result` — whether an updating device succeeded or failed, from what its
  check-ins recorded (or the report timeout).
* :func:`step` — one advance: device results, holds, batch verdicts (next batch, pause,
  automatic rollback, completion) and which pending devices start, within the
  disruption budget (overall or per value of a label) and their update window.
* :func:`next_due` — when time alone would next change what :func:`step` decides (a
  report timeout, an update window opening): the runner sleeps until then.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

PENDING = "pending"
UPDATING = "updating"
SUCCEEDED = "succeeded"
FAILED = "failed"
HELD = "held"
ROLLED_BACK = "rolled-back"
DEVICE_STATES = (PENDING, UPDATING, SUCCEEDED, FAILED, HELD, ROLLED_BACK)
FINISHED = (SUCCEEDED, FAILED, ROLLED_BACK)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(?:(?P<days>[A-Za-z*,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s*$"
)


class PolicyError(ValueError):
    """A rollout option is not valid (the message says which and why)."""


# ---------------------------------------------------------------------------- window


@dataclass(frozen=True, slots=True)
class Window:
    """Days (0 = Monday) and minutes of the day ``[start, end)``; ``end <= start`` wraps
    past midnight (the window belongs to the day it starts on)."""

    days: frozenset[int]
    start: int
    end: int

    @staticmethod
    def parse(text: str) -> Window:
        """``Mon-Fri 02:00-05:00``, ``Sat,Sun 22:00-04:00``, ``02:00-05:00`` (every day)."""
        found = _WINDOW.match(text)
        if found is None:
            raise PolicyError(f"window {text!r}: expected DAYS HH:MM-HH:MM, e.g. 'Mon-Fri 02:00-05:00'")
        days = _days(found["days"] or "*", text)
        start, end = _minutes(found["start"], text), _minutes(found["end"], text)
        if start == end:
            raise PolicyError(f"window {text!r}: it starts and ends at the same time")
        return Window(days, start, end)

    def next_opening(self, local: datetime) -> datetime:
        """The first start of the window after the local time ``local`` (naive or not,
        as given; within the next eight days)."""
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        for day in range(8):
            opening = midnight + timedelta(days=day, minutes=self.start)
            if opening > local and opening.weekday() in self.days:
                return opening
        raise AssertionError("a window has at least one day")  # pragma: no cover

    def contains(self, local: datetime) -> bool:
        """Whether the local time ``local`` is inside the window."""
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        if minute >= self.start:
            return today in self.days
        return minute < self.end and (today - 1) % 7 in self.days


def _days(text: str, whole: str) -> frozenset[int]:
    if text == "*":
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise PolicyError(f"window {whole!r}: days are Mon..Sun, ranges (Mon-Fri) or lists (Sat,Sun)")
        a, b = DAYS.index(first), DAYS.index(last or first)
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def _minutes(text: str, whole: str) -> int:
    hours, minutes = (int(x) for x in text.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise PolicyError(f"window {whole!r}: {text} is not a time of day")
    return hours * 60 + minutes


def in_window(window: Window | None, tz: str, now: datetime, utc_offset: int | None) -> bool:
    """Whether a device may start updating at ``now`` (aware UTC): always without a
    window; ``tz`` ``device`` uses the device's UTC offset (None: UTC)."""
    if window is None:
        return True
    offset = (utc_offset or 0) if tz == "device" else 0
    return window.contains(now + timedelta(seconds=offset))


# ---------------------------------------------------------------------------- policy


def selector(text: str) -> tuple[str, str]:
    """``key=value`` as a pair."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise PolicyError(f"selector {text!r}: expected KEY=VALUE")
    return key, value


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A rollout's options. Percentages are 0..100; sizes are device counts."""

    batch_size: int | None = None
    batch_percent: float | None = None
    canary: tuple[str, str] | None = None
    canary_size: int = 1
    success_threshold: float = 100.0
    rollback_threshold: float | None = None
    report_timeout: int = 1800
    hold: tuple[tuple[str, str], ...] = ()
    max_unavailable: int | None = None
    max_unavailable_percent: float | None = None
    budget_label: str | None = None
    window: str | None = None
    window_tz: Literal["utc", "device"] = "utc"
    parsed_window: Window | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_percent is not None:
            raise PolicyError("give a batch size or a batch percentage, not both")
        if self.batch_size is not None and self.batch_size < 1:
            raise PolicyError("the batch size is at least 1")
        if self.batch_percent is not None and not 0 < self.batch_percent <= 100:
            raise PolicyError("the batch percentage is above 0 and at most 100")
        if self.canary_size < 1:
            raise PolicyError("the canary size is at least 1")
        for name in ("success_threshold", "rollback_threshold", "max_unavailable_percent"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                raise PolicyError(f"{name.replace('_', ' ')} is a percentage (0 to 100)")
        if self.max_unavailable is not None and self.max_unavailable_percent is not None:
            raise PolicyError("give the disruption budget as a count or a percentage, not both")
        if self.max_unavailable is not None and self.max_unavailable < 1:
            raise PolicyError("the disruption budget is at least 1 device")
        if self.report_timeout < 1:
            raise PolicyError("the report timeout is at least 1 second")
        if self.window_tz not in ("utc", "device"):
            raise PolicyError("the window time zone is utc or device")
        if self.window is not None and self.parsed_window is None:
            object.__setattr__(self, "parsed_window", Window.parse(self.window))

    @staticmethod
    def from_json(obj: Mapping[str, Any]) -> Policy:
        """The policy stored by :meth:`to_json` (or given by the API)."""
        data = dict(obj)
        canary = data.pop("canary", None)
        hold = data.pop("hold", None) or []
        try:
            return Policy(
                **data,
                canary=None if canary is None else selector(str(canary)),
                hold=tuple(selector(str(h)) for h in hold),
            )
        except TypeError as exc:
            raise PolicyError(f"unknown rollout option: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "batch_percent": self.batch_percent,
            "canary": None if self.canary is None else "=".join(self.canary),
            "canary_size": self.canary_size,
            "success_threshold": self.success_threshold,
            "rollback_threshold": self.rollback_threshold,
            "report_timeout": self.report_timeout,
            "hold": ["=".join(h) for h in self.hold],
            "max_unavailable": self.max_unavailable,
            "max_unavailable_percent": self.max_unavailable_percent,
            "budget_label": self.budget_label,
            "window": self.window,
            "window_tz": self.window_tz,
        }


def holds(policy: Policy, labels: Mapping[str, str]) -> bool:
    """Whether a device with ``labels`` is held (any hold selector matches)."""
    return any(labels.get(k) == v for k, v in policy.hold)


# ---------------------------------------------------------------------------- batches


@dataclass(frozen=True, slots=True)
class Member:
    """A device as batching sees it."""

    id: int
    labels: Mapping[str, str] = field(default_factory=dict)


def batch_size(policy: Policy, total: int) -> int:
    """Devices per (non-canary) batch."""
    if policy.batch_size is not None:
        return policy.batch_size
    percent = 100.0 if policy.batch_percent is None else policy.batch_percent
    return max(1, math.ceil(total * percent / 100))


def plan_batches(policy: Policy, devices: Sequence[Member]) -> list[list[int]]:
    """Device ids by batch (each device in exactly one): the canary batch first when a
    canary selector matches, then the rest in id order, by the batch size."""
    ordered = sorted(devices, key=lambda d: d.id)
    batches: list[list[int]] = []
    canary: list[int] = []
    if policy.canary is not None:
        key, value = policy.canary
        canary = [d.id for d in ordered if d.labels.get(key) == value][: policy.canary_size]
        if canary:
            batches.append(canary)
    rest = [d.id for d in ordered if d.id not in set(canary)]
    size = batch_size(policy, len(rest))
    batches.extend(rest[i : i + size] for i in range(0, len(rest), size))
    return batches


def budget_limit(policy: Policy, total: int) -> int | None:
    """How many devices (per budget label value, with ``budget_label``) may be updating
    at once; None: no cap beyond the batch."""
    if policy.max_unavailable is not None:
        return policy.max_unavailable
    if policy.max_unavailable_percent is not None:
        return max(1, math.floor(total * policy.max_unavailable_percent / 100))
    return None


# ---------------------------------------------------------------------------- device results


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """What the device's latest check-in recorded (``owner_device`` columns)."""

    held_revision: int | None = None
    held_generation: int | None = None
    apply_state: str | None = None
    booted_digest: str | None = None
    error_step: str | None = None
    error: str | None = None


def device_result(
    observed: Observed,
    *,
    revision: int,
    digest: str,
    generation: int | None,
    started_at: datetime | None,
    now: datetime,
    timeout: int,
) -> tuple[str, str | None, str | None] | None:
    """``(succeeded|failed, error step, error text)`` for an updating device, or None
    while it is still on its way. Only a check-in about the rollout's revision (and the
    generation the rollout sent, or later) counts."""
    current = observed.held_revision == revision and (observed.held_generation or 0) >= (generation or 0)
    if current and observed.apply_state == "applied" and observed.booted_digest == digest:
        return SUCCEEDED, None, None
    if current and observed.apply_state in ("failed", "rolled-back"):
        text = observed.error or (
            "rolled back after the reboot" if observed.apply_state == "rolled-back" else "apply failed"
        )
        return FAILED, observed.error_step or observed.apply_state, text
    if started_at is not None and now - started_at >= timedelta(seconds=timeout):
        return FAILED, "report-timeout", f"no report within {timeout} s"
    return None


# ---------------------------------------------------------------------------- one advance


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRow:
    """A device of the rollout as :func:`step` sees it."""

    device_id: int
    batch: int
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)
    utc_offset: int | None = None
    started_at: datetime | None = None
    generation: int | None = None
    error_step: str | None = None
    error: str | None = None
    observed: Observed = field(default_factory=Observed)
    name: str = ""
    #: The device left the rollout's group: held like a device with a hold label.
    excluded: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    """What one advance changes: device rows (by device id), devices to tell the new
    revision (``start``) or to send back to their from-revision (``revert``), and the
    rollout's new state, batch and reason (None: unchanged)."""

    devices: dict[int, DeviceRow]
    start: list[int]
    revert: list[int]
    state: str
    batch: int
    reason: str | None

    def changes(self, before_state: str, before_batch: int, before_reason: str | None) -> bool:
        return bool(self.devices or self.start or self.revert) or (
            (self.state, self.batch, self.reason) != (before_state, before_batch, before_reason)
        )


def _pct(part: int, whole: int) -> float:
    return 100.0 if whole == 0 else 100.0 * part / whole


def step(
    policy: Policy,
    rows: Sequence[DeviceRow],
    *,
    state: str,
    batch: int,
    batches: int,
    reason: str | None,
    revision: int,
    digest: str,
    now: datetime,
) -> Step:
    """One advance of a ``running`` rollout (other states: nothing changes)."""
    if state != "running":
        return Step({}, [], [], state, batch, reason)
    current = {r.device_id: r for r in rows}
    changed: dict[int, DeviceRow] = {}

    def put(row: DeviceRow) -> None:
        current[row.device_id] = row
        changed[row.device_id] = row

    for row in rows:  # holds (a label added since), releases, results
        if row.state not in (SUCCEEDED, ROLLED_BACK) and (row.excluded or holds(policy, row.labels)):
            if row.state != HELD:
                put(replace(row, state=HELD))
            continue
        if row.state == HELD:
            put(replace(row, state=PENDING, started_at=None))
        elif row.state == UPDATING:
            found = device_result(
                row.observed,
                revision=revision,
                digest=digest,
                generation=row.generation,
                started_at=row.started_at,
                now=now,
                timeout=policy.report_timeout,
            )
            if found is not None:
                put(replace(row, state=found[0], error_step=found[1], error=found[2]))
    revert: list[int] = []
    while True:
        members = [r for r in current.values() if r.batch == batch and r.state != HELD]
        failed = [r for r in members if r.state in (FAILED, ROLLED_BACK)]
        done = [r for r in members if r.state in FINISHED]
        names = ", ".join(r.name or str(r.device_id) for r in sorted(failed, key=lambda r: r.device_id))
        limit = policy.rollback_threshold
        if limit is not None and _pct(len(failed), len(members)) > limit:
            for r in members:
                if r.state in (UPDATING, SUCCEEDED, FAILED):
                    revert.append(r.device_id)
                    put(replace(r, state=ROLLED_BACK))
            why = (
                f"batch {batch}: {len(failed)} of {len(members)} failed ({names}), above the rollback"
                f" threshold of {limit:g} %; the batch was rolled back"
            )
            return Step(changed, [], revert, "aborted", batch, why)
        if _pct(len(members) - len(failed), len(members)) < policy.success_threshold:
            why = (
                f"batch {batch}: {len(failed)} of {len(members)} failed ({names}); the success"
                f" threshold of {policy.success_threshold:g} % cannot be met"
            )
            return Step(changed, [], [], "paused", batch, why)
        if len(done) < len(members):
            break
        if batch >= batches:
            if any(r.state in (PENDING, UPDATING) for r in current.values()):
                break  # released devices of earlier batches are still on their way
            return Step(changed, [], [], "completed", batch, None)
        batch += 1
    start = _starts(policy, list(current.values()), batch=batch, now=now)
    for device_id in start:
        put(replace(current[device_id], state=UPDATING, started_at=now))
    return Step(changed, start, [], "running", batch, None)


def _starts(policy: Policy, rows: list[DeviceRow], *, batch: int, now: datetime) -> list[int]:
    """Pending devices of the current batch (or an earlier one: released from a hold)
    that may start now: inside their window and within the disruption budget."""
    limit = budget_limit(policy, len(rows))
    label = policy.budget_label

    def bucket(row: DeviceRow) -> str:
        return "" if label is None else row.labels.get(label, "")

    busy: dict[str, int] = {}
    for row in rows:
        if row.state == UPDATING:
            busy[bucket(row)] = busy.get(bucket(row), 0) + 1
    out: list[int] = []
    for row in sorted(rows, key=lambda r: (r.batch, r.device_id)):
        if row.state != PENDING or row.batch > batch:
            continue
        if not in_window(policy.parsed_window, policy.window_tz, now, row.utc_offset):
            continue
        key = bucket(row)
        if limit is not None and busy.get(key, 0) >= limit:
            continue
        busy[key] = busy.get(key, 0) + 1
        out.append(row.device_id)
    return out


def next_due(policy: Policy, rows: Sequence[DeviceRow], *, batch: int, now: datetime) -> datetime | None:
    """The earliest time after ``now`` at which :func:`step` of a running rollout in
    batch ``batch`` with ``rows`` (as the last step left them) may decide something new
    with nothing else happening: an updating device's report timeout, or the opening of
    the update window of a pending device that may start but is outside it. None when
    only an event can move it (a check-in, an operator action, a label change)."""
    due: datetime | None = None
    timeout = timedelta(seconds=policy.report_timeout)
    window = policy.parsed_window
    for row in rows:
        at: datetime | None = None
        if row.state == UPDATING and row.started_at is not None:
            at = row.started_at + timeout
        elif row.state == PENDING and row.batch <= batch and window is not None:
            if not in_window(window, policy.window_tz, now, row.utc_offset):
                offset = timedelta(seconds=(row.utc_offset or 0) if policy.window_tz == "device" else 0)
                at = window.next_opening(now + offset) - offset
        if at is not None and (due is None or at < due):
            due = at
    return due
