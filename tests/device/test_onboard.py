"""The onboarding driver: DI, TO1 and TO2 over HTTP, directive walking, delays and back-off.

The services are FastAPI apps reached through TestClient (see ``world.py``); time is a
fake clock whose ``sleep`` only records and advances.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from device.modules import standard_modules
from device.onboard import (
    DeviceClientError,
    OnboardError,
    OnboardResult,
    RetryPolicy,
    is_retryable,
    onboard,
    run_di,
)
from fdo.credential import DeviceCredential
from fdo.errors import InvalidMessageError, PeerError
from fdo.rvinfo import RendezvousDirective, RendezvousInfo, RVProtocol
from fdo.serviceinfo import CommandOwner, DeviceModule, DownloadOwner
from tests.conftest import KeyPool
from tests.device.world import MFR_URL, OWNER_URL, RV_URL, World, device_after_di, make_world
from tests.fdo.flow import sample_devmod
from transport.client import TransportError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: list[object] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def with_rv(cred: DeviceCredential, *directives: RendezvousDirective) -> DeviceCredential:
    return dataclasses.replace(cred, rv_info=RendezvousInfo.of(directives))


def run(world: World, cred: DeviceCredential, clock: FakeClock, **kw: object) -> OnboardResult:
    return onboard(
        cred,
        devmod=sample_devmod(),
        http_client_factory=world.factory,
        sleep=clock.sleep,
        clock=clock,
        rand=lambda: 0.5,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def world(key_pool: KeyPool) -> World:
    return make_world(key_pool)


# ---------------------------------------------------------------------------- the real path


def test_di_to1_to2_over_http(world: World, key_pool: KeyPool, tmp_path: Path) -> None:
    cred = device_after_di(world, key_pool)
    assert cred.device_info == "kiosk-v2" and cred.guid == world.vouchers[0].guid
    assert world.owner is not None
    world.owner.modules = lambda guid, devmod: [
        DownloadOwner("/etc/app/config.toml", b"colour = 'blue'\n"),
        CommandOwner("echo", ["hello"]),
    ]
    ran: list[list[str]] = []

    def record(argv: list[str]) -> tuple[int, bytes, bytes]:
        ran.append(argv)
        return 0, b"hello\n", b""

    root = tmp_path / "root"
    clock = FakeClock()
    result = onboard(
        cred,
        devmod=sample_devmod(),
        modules=lambda: standard_modules(root, run=record),
        http_client_factory=world.factory,
        sleep=clock.sleep,
        clock=clock,
    )
    assert result.rv_url == RV_URL and result.owner_url == OWNER_URL and result.rounds == 1
    assert not result.reused and result.previous_guid == str(cred.guid)
    assert result.credential.guid != cred.guid
    assert result.credential.hmac_secret == cred.hmac_secret
    assert result.credential.guid in world.owner.vouchers  # the owner's replacement voucher
    assert (root / "etc/app/config.toml").read_bytes() == b"colour = 'blue'\n"
    assert ran == [["echo", "hello"]]
    assert {"fdo.command", "fdo.download"} <= result.active_modules
    assert world.owner.seen_devmod[0].modules[0] == "devmod"
    assert world.asked == [MFR_URL, RV_URL, OWNER_URL]
    assert clock.sleeps == []


@pytest.mark.parametrize("kept", [True, False], ids=["serial-kept", "credential-from-before"])
def test_serial_given_at_di_is_sent_as_devmod_sn(world: World, key_pool: KeyPool, kept: bool) -> None:
    cred = device_after_di(world, key_pool)
    assert cred.serial == "SN-1"  # DI keeps the serial it sent in the credential
    if not kept:
        cred = dataclasses.replace(cred, serial=None)  # as read from an 8-element file
    assert world.owner is not None
    clock = FakeClock()
    result = onboard(cred, http_client_factory=world.factory, sleep=clock.sleep, clock=clock)
    assert world.owner.seen_devmod[0].sn == ("SN-1" if kept else None)
    assert result.credential.serial == cred.serial  # the replacement credential keeps it


def test_di_failure_is_one_clear_error(world: World) -> None:
    with pytest.raises(DeviceClientError, match=r"DI at http://nowhere.example:1 failed: TransportError"):
        run_di("http://nowhere.example:1", serial="S", model="M", http_client_factory=world.factory)


# ---------------------------------------------------------------------------- directive walking


def test_walk_order_and_delay(world: World, key_pool: KeyPool) -> None:
    cred = with_rv(
        device_after_di(world, key_pool),
        RendezvousDirective.build(dns="down.example", ip="10.0.0.1", port=8041, delay=7),
        RendezvousDirective.build(dns="rv.example", port=9999, owner_only=True),  # not for devices
        RendezvousDirective.build(dns="coap.example", protocol=RVProtocol.COAP_UDP, delay=3),  # unusable
        RendezvousDirective.build(dns="rv.example", port=8041, protocol=RVProtocol.HTTP),
    )
    clock = FakeClock()
    result = run(world, cred, clock)
    assert world.asked[1:] == [
        "http://down.example:8041",
        "http://10.0.0.1:8041",
        RV_URL,
        OWNER_URL,
    ]
    assert clock.sleeps == [7.0]  # the failed directive's RVDelaysec; none for the skipped ones
    assert [(a.phase, a.url, a.error is None) for a in result.attempts] == [
        ("TO1", "http://down.example:8041", False),
        ("TO1", "http://10.0.0.1:8041", False),
        ("TO1", RV_URL, True),
        ("TO2", OWNER_URL, True),
    ]


def test_https_and_default_ports(world: World, key_pool: KeyPool) -> None:
    cred = with_rv(
        device_after_di(world, key_pool),
        RendezvousDirective.build(dns="secure.example", protocol=RVProtocol.HTTPS),
        RendezvousDirective.build(ip="192.0.2.1", protocol=RVProtocol.HTTP),
        RendezvousDirective.build(dns="rv.example", port=8041),
    )
    run(world, cred, FakeClock())
    assert world.asked[1:4] == ["https://secure.example:443", "http://192.0.2.1:80", RV_URL]


def test_bypass_skips_to1(world: World, key_pool: KeyPool) -> None:
    cred = with_rv(
        device_after_di(world, key_pool, register=False),
        RendezvousDirective.build(dns="owner.example", port=8043, bypass=True),
    )
    result = run(world, cred, FakeClock())
    assert result.rv_url is None and result.owner_url == OWNER_URL
    assert world.asked[1:] == [OWNER_URL]


def test_owner_not_registered_yet_is_retried(world: World, key_pool: KeyPool) -> None:
    cred = device_after_di(world, key_pool, register=False)
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        world.register()  # the owner runs TO0 while the device waits

    result = onboard(
        cred,
        devmod=sample_devmod(),
        http_client_factory=world.factory,
        sleep=sleep,
        clock=clock,
        rand=lambda: 0.5,
        policy=RetryPolicy(max_attempts=3, initial=5.0),
    )
    assert result.rounds == 2 and clock.sleeps == [5.0]
    first = result.attempts[0]
    assert (
        first.phase == "TO1" and first.retryable and first.error is not None and "peer error 6" in first.error
    )


def test_backoff_is_bounded_and_gives_up(world: World, key_pool: KeyPool) -> None:
    cred = device_after_di(world, key_pool)
    world.fail[RV_URL] = TransportError("POST x: ConnectError: refused")
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=6, initial=1.0, factor=2.0, maximum=10.0, jitter=0.5)
    with pytest.raises(OnboardError) as info:
        onboard(
            cred,
            devmod=sample_devmod(),
            http_client_factory=world.factory,
            sleep=clock.sleep,
            clock=clock,
            rand=lambda: 1.0,  # the most jitter: +50%
            policy=policy,
        )
    assert clock.sleeps == [1.5, 3.0, 6.0, 10.0, 10.0]
    assert len(info.value.attempts) == 6
    text = str(info.value)
    assert "after 6 round(s)" in text and f"TO1 {RV_URL}: TransportError" in text and "\n" not in text


def test_jitter_spreads_below_too() -> None:
    policy = RetryPolicy(initial=10.0, jitter=0.2, maximum=100.0)
    assert policy.backoff(1, lambda: 0.0) == pytest.approx(8.0)
    assert policy.backoff(3, lambda: 0.5) == pytest.approx(40.0)
    assert policy.backoff(30, lambda: 0.99) == 100.0


def test_deadline(world: World, key_pool: KeyPool) -> None:
    cred = device_after_di(world, key_pool)
    world.fail[RV_URL] = TransportError("down")
    clock = FakeClock()
    with pytest.raises(OnboardError, match="deadline of 20s"):
        onboard(
            cred,
            devmod=sample_devmod(),
            http_client_factory=world.factory,
            sleep=clock.sleep,
            clock=clock,
            rand=lambda: 0.5,
            policy=RetryPolicy(max_attempts=None, deadline=20.0, initial=4.0, factor=1.0),
        )
    assert clock.sleeps == [4.0, 4.0, 4.0, 4.0]  # a fifth wait would end at the deadline
    assert clock.now - 1000.0 < 20.0


def test_permanent_failures_stop_early(world: World, key_pool: KeyPool) -> None:
    cred = device_after_di(world, key_pool)
    world.fail[RV_URL] = PeerError("peer error 100: bad body", peer_code=100, prev_msg_type=30)
    clock = FakeClock()
    with pytest.raises(OnboardError, match="stopped: every attempt failed with an error retrying cannot fix"):
        run(world, cred, clock, max_attempts=5)
    assert clock.sleeps == []


def test_to2_failure_moves_to_next_address(world: World, key_pool: KeyPool) -> None:
    cred = with_rv(
        device_after_di(world, key_pool),
        RendezvousDirective.build(dns="owner-old.example", port=8043, bypass=True, delay=2),
        RendezvousDirective.build(dns="rv.example", port=8041),
    )
    result = run(world, cred, FakeClock())
    assert result.owner_url == OWNER_URL and result.rv_url == RV_URL
    assert world.asked[1:] == ["http://owner-old.example:8043", RV_URL, OWNER_URL]


def test_inactive_or_empty_credential(world: World, key_pool: KeyPool) -> None:
    cred = device_after_di(world, key_pool)
    with pytest.raises(OnboardError, match="not active"):
        run(world, dataclasses.replace(cred, active=False), FakeClock())
    with pytest.raises(OnboardError, match="no usable rendezvous"):
        run(world, with_rv(cred), FakeClock())
    assert world.asked == [MFR_URL]


def test_retryable_classification() -> None:
    assert is_retryable(TransportError("x"))
    assert is_retryable(PeerError("p", peer_code=6, prev_msg_type=30))
    assert not is_retryable(PeerError("p", peer_code=101, prev_msg_type=60))
    assert not is_retryable(InvalidMessageError("bad signature"))


def test_fresh_modules_each_to2_attempt(world: World, key_pool: KeyPool) -> None:
    cred = with_rv(
        device_after_di(world, key_pool),
        RendezvousDirective.build(dns="owner-old.example", port=8043, bypass=True),
        RendezvousDirective.build(dns="rv.example", port=8041),
    )
    built: list[Sequence[DeviceModule]] = []

    def modules() -> Sequence[DeviceModule]:
        mods = standard_modules(None, run=None)
        built.append(mods)
        return mods

    world.fail["http://owner-old.example:8043"] = TransportError("down")
    run(world, cred, FakeClock(), modules=modules)
    assert len(built) == 2  # one per TO2 attempt, never shared
