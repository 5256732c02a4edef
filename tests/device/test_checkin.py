"""device/checkin.py: apply state (rollback, staged), greenboot health, answer checks, back-off."""

from __future__ import annotations

import pytest

from device.checkin import (
    CheckinProtocolError,
    HostStatus,
    apply_state,
    health_of,
    next_delay,
    parse_answer,
)

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
SECRET = "fdc1.7." + "A" * 43


def test_apply_state() -> None:
    assert apply_state(None, HostStatus(), complete=False, failed=False) == ("none", False)
    assert apply_state(D2, HostStatus(booted_digest=D2), complete=True, failed=False) == ("applied", False)
    staged = HostStatus(booted_digest=D1, staged_digest=D2)
    assert apply_state(D2, staged, complete=True, failed=False) == ("staged", False)
    back = HostStatus(booted_digest=D1, rollback_digest=D2)
    assert apply_state(D2, back, complete=True, failed=False) == ("rolled-back", True)
    assert apply_state(D2, HostStatus(booted_digest=D1), complete=False, failed=True) == ("failed", False)


def test_health_from_greenboot() -> None:
    assert health_of(None) == "unknown"
    assert health_of("Boot Status is GREEN - Health Check SUCCESS\n") == "healthy"
    assert health_of("Boot Status is RED - Health Check FAILURE!\n") == "unhealthy"


def test_answer_checks() -> None:
    assert parse_answer({"action": "none", "interval": 60, "next_secret": SECRET}).desired is None
    with pytest.raises(CheckinProtocolError):
        parse_answer({"action": "none", "interval": 60, "next_secret": "admin-token"})
    with pytest.raises(CheckinProtocolError):
        parse_answer({"action": "apply", "interval": 60, "next_secret": SECRET, "desired": {"revision": 2}})


def test_delay_jitter_and_backoff() -> None:
    assert 270 <= next_delay(300, 0, 0.0) <= next_delay(300, 0, 0.999) <= 330
    assert next_delay(300, 1, 0.999) < 5.0 < next_delay(300, 3, 0.999)
    assert next_delay(300, 30, 0.999) <= 300
