"""The pure rollout decisions (owner/rollouts.py): batches, canary, hold, budget (also
per label), update window (also device-local), thresholds, pausing and rolling back by
itself, and the report timeout; when a rollout is next due (:func:`owner.rollouts.next_due`,
what the runner sleeps until): nothing changes before it, something does at it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from owner.rollouts import (
    FAILED,
    HELD,
    PENDING,
    ROLLED_BACK,
    SUCCEEDED,
    UPDATING,
    DeviceRow,
    Member,
    Observed,
    Policy,
    PolicyError,
    Step,
    Window,
    device_result,
    in_window,
    next_due,
    plan_batches,
    step,
)

DIGEST = "sha256:" + "ab" * 32
# A Wednesday.
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def rows(n: int, size: int, **kw: object) -> list[DeviceRow]:
    return [DeviceRow(device_id=i, batch=(i - 1) // size + 1, state=PENDING, **kw) for i in range(1, n + 1)]  # type: ignore[arg-type]


def run(policy: Policy, devices: list[DeviceRow], *, batch: int = 1, now: datetime = NOW) -> Step:
    batches = max(r.batch for r in devices)
    return step(
        policy, devices, state="running", batch=batch, batches=batches, reason=None, revision=2,
        digest=DIGEST, now=now,
    )  # fmt: skip


def applied(row: DeviceRow, generation: int = 1) -> DeviceRow:
    observed = Observed(
        held_revision=2, held_generation=generation, apply_state="applied", booted_digest=DIGEST
    )
    return replace(row, state=UPDATING, started_at=NOW, generation=generation, observed=observed)


def failed(row: DeviceRow, generation: int = 1) -> DeviceRow:
    observed = Observed(
        held_revision=2, held_generation=generation, apply_state="failed",
        error_step="000-bootc-switch", error="manifest unknown",
    )  # fmt: skip
    return replace(row, state=UPDATING, started_at=NOW, generation=generation, observed=observed)


def apply_step(devices: list[DeviceRow], result: Step) -> list[DeviceRow]:
    return [result.devices.get(r.device_id, r) for r in devices]


# ---------------------------------------------------------------------------- batches


def test_batches_by_count_and_percent_each_device_once_in_id_order() -> None:
    members = [Member(i) for i in (9, 3, 7, 1, 5, 2, 8, 4, 6, 10, 11)]
    batches = plan_batches(Policy(batch_size=5), members)
    assert batches == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11]]
    assert plan_batches(Policy(batch_percent=25), members) == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]]
    assert plan_batches(Policy(), members) == [sorted(m.id for m in members)]
    assert plan_batches(Policy(batch_size=5), []) == []


def test_canary_batch_first_then_the_rest() -> None:
    members = [Member(i, {"ring": "canary"} if i in (4, 8, 9) else {}) for i in range(1, 11)]
    batches = plan_batches(Policy(batch_size=4, canary=("ring", "canary"), canary_size=2), members)
    assert batches == [[4, 8], [1, 2, 3, 5], [6, 7, 9, 10]]
    flat = [d for b in batches for d in b]
    assert sorted(flat) == list(range(1, 11)) and len(flat) == len(set(flat))
    # No device carries the canary label: no canary batch.
    assert plan_batches(Policy(batch_size=5, canary=("ring", "x")), members)[0] == [1, 2, 3, 4, 5]


def test_policy_validation_and_json_round_trip() -> None:
    policy = Policy(
        batch_size=5, canary=("ring", "canary"), canary_size=2, success_threshold=80, rollback_threshold=50,
        report_timeout=60, hold=(("hold", "yes"),), max_unavailable_percent=20, budget_label="site",
        window="Mon-Fri 02:00-05:00", window_tz="device",
    )  # fmt: skip
    assert Policy.from_json(policy.to_json()) == policy
    for bad in (
        {"batch_size": 1, "batch_percent": 5},
        {"batch_size": 0},
        {"success_threshold": 101},
        {"max_unavailable": 1, "max_unavailable_percent": 5},
        {"window": "someday"},
        {"window": "Mon-Fri 25:00-05:00"},
        {"window": "Mon 02:00-02:00"},
        {"unknown": 1},
    ):
        with pytest.raises(PolicyError):
            Policy.from_json(bad)


# ---------------------------------------------------------------------------- window


def test_window_days_hours_and_wrap_past_midnight() -> None:
    weekdays = Window.parse("Mon-Fri 02:00-05:00")
    assert weekdays.contains(datetime(2026, 12, 2, 2, 0))  # Wednesday
    assert not weekdays.contains(datetime(2026, 12, 2, 5, 0))
    assert not weekdays.contains(datetime(2026, 12, 5, 3, 0))  # Saturday
    night = Window.parse("Fri 22:00-04:00")
    assert night.contains(datetime(2026, 12, 4, 23, 0))  # Friday night
    assert night.contains(datetime(2026, 12, 5, 3, 59))  # ... into Saturday
    assert not night.contains(datetime(2026, 12, 6, 3, 0))  # Sunday early: Saturday has none
    weekend = Window.parse("Sat,Sun 10:00-11:00")
    assert weekend.contains(datetime(2026, 12, 6, 10, 30)) and not weekend.contains(
        datetime(2026, 12, 7, 10, 30)
    )
    assert Window.parse("00:00-24:00").contains(datetime(2026, 12, 7, 23, 59))
    assert Window.parse("Fri-Mon 01:00-02:00").days == frozenset({4, 5, 6, 0})


def test_window_in_utc_or_device_local_time() -> None:
    window = Window.parse("Wed 02:00-05:00")
    at = datetime(2026, 12, 2, 1, 30, tzinfo=UTC)  # Wednesday 01:30 UTC
    assert not in_window(window, "utc", at, 3600)
    assert in_window(window, "device", at, 3600)  # 02:30 for a device at UTC+1
    assert not in_window(window, "device", at, None)  # never sent an offset: UTC
    assert not in_window(window, "device", at, -3600)
    assert in_window(None, "utc", at, None)


def test_devices_start_only_inside_their_window() -> None:
    policy = Policy(batch_size=4, window="Wed 12:00-13:00", window_tz="device")
    devices = [replace(r, utc_offset=off) for r, off in zip(rows(4, 4), (0, 3600, -7200, None), strict=True)]
    assert run(policy, devices).start == [1, 4]  # 12:00 and 12:00 (no offset) are inside


# ---------------------------------------------------------------------------- budget, hold


def test_disruption_budget_count_percent_and_per_label() -> None:
    devices = rows(10, 10)
    assert run(Policy(max_unavailable=3), devices).start == [1, 2, 3]
    assert run(Policy(max_unavailable_percent=20), devices).start == [1, 2]
    sites = [replace(r, labels={"site": "a" if r.device_id <= 6 else "b"}) for r in devices]
    assert run(Policy(max_unavailable=2, budget_label="site"), sites).start == [1, 2, 7, 8]
    # Devices already updating use the budget.
    busy = [applied(r) if r.device_id == 1 else r for r in sites]
    busy[0] = replace(busy[0], observed=Observed())  # still on its way
    assert run(Policy(max_unavailable=2, budget_label="site"), busy).start == [2, 7, 8]


def test_hold_by_label_reevaluated_at_every_advance() -> None:
    policy = Policy(batch_size=3, hold=(("hold", "yes"),))
    devices = rows(6, 3)
    devices[1] = replace(devices[1], labels={"hold": "yes"})
    first = run(policy, devices)
    assert first.start == [1, 3] and first.devices[2].state == HELD
    devices = apply_step(devices, first)
    # Labelled later: an updating device is held; a succeeded one is not.
    devices[0] = replace(applied(devices[0]), labels={"hold": "yes"})
    devices[0] = replace(devices[0], state=SUCCEEDED)
    devices[2] = replace(devices[2], labels={"hold": "yes"})
    again = run(policy, devices)
    assert again.devices[3].state == HELD and 1 not in again.devices
    # The batch is done (1 succeeded, the others held): the next batch starts.
    assert again.batch == 2 and again.start == [4, 5, 6]
    # The label removed: the device is pending again and starts.
    devices = apply_step(devices, again)
    devices[1] = replace(devices[1], labels={})
    released = run(policy, devices, batch=2)
    assert released.devices[2].state == UPDATING and 2 in released.start
    # A device that left the group is held for good (no label to remove).
    devices = apply_step(devices, released)
    devices[4] = replace(devices[4], excluded=True)
    gone = run(policy, devices, batch=2)
    assert gone.devices[5].state == HELD and 5 not in gone.start
    assert 5 not in run(policy, apply_step(devices, gone), batch=2).devices


# ---------------------------------------------------------------------------- results


def test_device_result_success_failure_and_timeout() -> None:
    kw = {"revision": 2, "digest": DIGEST, "generation": 3, "started_at": NOW, "timeout": 60}
    ok = Observed(held_revision=2, held_generation=3, apply_state="applied", booted_digest=DIGEST)
    assert device_result(ok, now=NOW, **kw) == (SUCCEEDED, None, None)  # type: ignore[arg-type]
    # A check-in about the earlier generation (before the device got this rollout) does not count.
    stale = replace(ok, held_generation=2, apply_state="failed")
    assert device_result(stale, now=NOW, **kw) is None  # type: ignore[arg-type]
    wrong = replace(ok, booted_digest="sha256:" + "00" * 32)
    assert device_result(wrong, now=NOW, **kw) is None  # type: ignore[arg-type]
    bad = replace(ok, apply_state="failed", error_step="000-bootc-switch", error="manifest unknown")
    assert device_result(bad, now=NOW, **kw) == (FAILED, "000-bootc-switch", "manifest unknown")  # type: ignore[arg-type]
    back = replace(ok, apply_state="rolled-back")
    assert device_result(back, now=NOW, **kw)[0] == FAILED  # type: ignore[arg-type,index]
    late = NOW + timedelta(seconds=60)
    assert device_result(Observed(), now=late, **kw) == (FAILED, "report-timeout", "no report within 60 s")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- thresholds


def test_batches_advance_at_the_threshold_and_pause_when_it_cannot_be_met() -> None:
    policy = Policy(batch_size=5, success_threshold=80)
    devices = rows(15, 5)
    first = run(policy, devices)
    assert first.start == [1, 2, 3, 4, 5] and first.state == "running"
    devices = apply_step(devices, first)
    # One failure out of five: 80 % still reachable and met -> batch 2.
    devices = [failed(r) if r.device_id == 1 else applied(r) if r.batch == 1 else r for r in devices]
    second = run(policy, devices)
    assert second.batch == 2 and second.start == [6, 7, 8, 9, 10] and second.devices[1].state == FAILED
    devices = apply_step(devices, second)
    # Batch 2: the first failure keeps it running, the second pauses it at once,
    # although three devices have not reported yet.
    devices = [failed(r) if r.device_id == 6 else r for r in devices]
    assert run(policy, devices, batch=2).state == "running"
    devices = [failed(r) if r.device_id in (6, 8) else r for r in devices]
    paused = run(policy, devices, batch=2)
    assert paused.state == "paused" and paused.batch == 2 and paused.start == []
    assert "2 of 5 failed (6, 8)" in (paused.reason or "")


def test_completed_after_the_last_batch_and_nothing_when_not_running() -> None:
    policy = Policy(batch_size=2)
    devices = [applied(r) for r in rows(4, 2)]
    done = run(policy, devices, batch=2)
    assert done.state == "completed"
    assert step(policy, devices, state="paused", batch=1, batches=2, reason="x", revision=2, digest=DIGEST,
                now=NOW).changes("paused", 1, "x") is False  # fmt: skip


def test_rollback_threshold_rolls_the_batch_back_and_aborts() -> None:
    policy = Policy(batch_size=4, success_threshold=50, rollback_threshold=25)
    devices = rows(8, 4)
    devices = [failed(r) if r.device_id in (1, 2) else applied(r) if r.device_id == 3 else r for r in devices]
    devices[3] = replace(devices[3], state=UPDATING, started_at=NOW)  # on its way
    result = run(policy, devices)
    assert result.state == "aborted" and sorted(result.revert) == [1, 2, 3, 4]
    assert all(result.devices[i].state == ROLLED_BACK for i in (1, 2, 3, 4))
    assert "rolled back" in (result.reason or "")


def test_report_timeout_fails_a_silent_device() -> None:
    policy = Policy(batch_size=2, success_threshold=50, report_timeout=30)
    devices = [replace(r, state=UPDATING, started_at=NOW) for r in rows(2, 2)]
    assert run(policy, devices, now=NOW + timedelta(seconds=29)).devices == {}
    late = run(policy, devices, now=NOW + timedelta(seconds=30))
    assert late.state == "paused" and late.devices[1].error == "no report within 30 s"


# ---------------------------------------------------------------------------- next due


def test_window_next_opening() -> None:
    wed_noon = datetime(2026, 12, 2, 12, 0)
    assert Window.parse("Mon-Fri 02:00-05:00").next_opening(wed_noon) == datetime(2026, 12, 3, 2, 0)
    assert Window.parse("13:00-14:00").next_opening(wed_noon) == datetime(2026, 12, 2, 13, 0)
    weekend = Window.parse("Sat,Sun 10:00-11:00")
    assert weekend.next_opening(wed_noon) == datetime(2026, 12, 5, 10, 0)
    assert weekend.next_opening(datetime(2026, 12, 5, 10, 30)) == datetime(2026, 12, 6, 10, 0)
    night = Window.parse("Fri 22:00-04:00")
    assert night.next_opening(datetime(2026, 12, 5, 3, 0)) == datetime(2026, 12, 11, 22, 0)
    assert Window.parse("Wed 12:00-13:00").next_opening(wed_noon) == datetime(2026, 12, 9, 12, 0)


def _moves(policy: Policy, devices: list[DeviceRow], at: datetime) -> bool:
    result = run(policy, devices, now=at)
    return result.changes("running", 1, None)


def test_next_due_is_the_earliest_report_timeout() -> None:
    policy = Policy(batch_size=3, report_timeout=30)
    devices = [
        replace(r, state=UPDATING, started_at=NOW + timedelta(seconds=10 * r.device_id)) for r in rows(3, 3)
    ]
    due = next_due(policy, devices, batch=1, now=NOW)
    assert due == NOW + timedelta(seconds=40)  # device 1 started at NOW + 10 s
    assert not _moves(policy, devices, due - timedelta(microseconds=1))
    assert _moves(policy, devices, due)


def test_next_due_is_the_opening_of_a_waiting_devices_window() -> None:
    policy = Policy(batch_size=4, window="Wed 12:00-13:00", window_tz="device", report_timeout=7 * 86400)
    offsets = (0, 3600, -7200, None)  # local 12:00, 13:00, 10:00, 12:00 (UTC) at NOW
    devices = [replace(r, utc_offset=off) for r, off in zip(rows(4, 4), offsets, strict=True)]
    first = run(policy, devices)
    assert first.start == [1, 4]
    after = apply_step(devices, first)
    due = next_due(policy, after, batch=1, now=NOW)
    assert due == datetime(2026, 12, 2, 14, 0, tzinfo=UTC)  # 12:00 for the device at UTC-2
    assert not _moves(policy, after, due - timedelta(microseconds=1))
    assert run(policy, after, now=due).start == [3]
    utc = Policy(batch_size=1, window="Thu 01:00-02:00")
    assert next_due(utc, rows(1, 1), batch=1, now=NOW) == datetime(2026, 12, 3, 1, 0, tzinfo=UTC)


def test_nothing_is_due_when_only_an_event_can_move_a_rollout() -> None:
    policy = Policy(batch_size=2, window="Thu 01:00-02:00")
    waiting = [replace(r, state=SUCCEEDED) if r.batch == 1 else r for r in rows(4, 2)]
    assert next_due(policy, waiting[2:], batch=1, now=NOW) is None  # pending in a later batch
    held = [replace(r, state=HELD) for r in rows(2, 2)]
    assert next_due(policy, held, batch=1, now=NOW) is None
    assert next_due(Policy(batch_size=2), rows(2, 2), batch=1, now=NOW) is None  # the budget holds them
