"""The device's onboarding driver: DI, then TO1 and TO2 following the rendezvous directives.

A thin adapter around the core machines (reference §3, §5.2, §5.3), driven over HTTP by
:class:`transport.client.FdoHttpClient`:

* :func:`run_di` generates the device key (unless given one), runs DI against the
  manufacturer and returns the new :class:`~fdo.credential.DeviceCredential`.
* :func:`onboard` walks ``credential.rv_info.for_device()`` in order. For each directive
  it builds the base URLs (http or https from RVProtocol, RVDns then RVIPAddress,
  RVDevPort or the protocol's default port). With RVBypass the address is the owner's:
  TO2 runs there without a to1d. Otherwise TO1 is tried at each URL until one answers;
  then TO2 at each URL of each RVTO2Addr entry from the to1d. When a directive fails,
  its RVDelaysec is waited out before the next one. When a whole round fails, the
  driver backs off exponentially (capped, with jitter) and starts over, until
  ``max_attempts`` rounds or the ``deadline`` are spent; the error then lists every
  attempt of the last round.

Failures that can go away by themselves are *retryable*: transport errors (the network,
a server that is down or restarting), a peer's ResourceNotFound (6: at TO1 the owner has
not registered yet; at TO2 the rendezvous named an owner that no longer holds the
voucher, as after a resale before the next owner's TO0), InvalidJwtToken (1: a session
that expired, or another TO2 of this device completed first) and InternalServerError
(500). Anything else cannot heal by itself and is *permanent*: a voucher, signature or
hash that does not verify (a wrong or tampered owner), a peer's MessageBodyError (100),
InvalidMessageError (101), InvalidOwnershipVoucher (2), InvalidOwnerSignBody (3),
InvalidIPAddress (4), InvalidGuid (5) or CredReuseError (102), a suite the owner does
not accept. The walk still moves on to the next address in the round, but when a round
saw only permanent failures, retrying would only repeat them, so the driver stops and
says so.

Time, sleeping and randomness are injected so tests run with a fake clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.modules import default_devmod
from fdo.cipher import CipherSuite
from fdo.cose import CoseSign1
from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, generate_key
from fdo.di.device import DIDevice
from fdo.errors import ErrorCode, FdoError, InternalError, PeerError
from fdo.kex import KexSuite
from fdo.machine import ClientMachine
from fdo.rvinfo import RendezvousDirective
from fdo.serviceinfo import DeviceModule, DeviceServiceInfoDriver, Devmod
from fdo.to1.device import TO1Device
from fdo.to2.device import TO2Device
from transport.client import FdoHttpClient, TransportError

#: Peer error codes worth retrying later.
RETRYABLE_PEER_CODES = frozenset(
    {ErrorCode.INVALID_JWT_TOKEN, ErrorCode.RESOURCE_NOT_FOUND, ErrorCode.INTERNAL_SERVER_ERROR}
)

ClientFactory = Callable[[str], FdoHttpClient]
"""Builds the HTTP client for one base URL (tests inject TestClient-backed ones)."""


class DeviceClientError(Exception):
    """DI or onboarding failed; the text is one line and never holds secrets."""


class OnboardError(DeviceClientError):
    """Onboarding gave up; :attr:`attempts` lists everything that was tried."""

    def __init__(self, message: str, attempts: Sequence[Attempt], *, reason: str | None = None) -> None:
        super().__init__(message)
        self.attempts = list(attempts)
        #: The message without the list of attempts (for a caller that showed them already).
        self.reason = reason or message


@dataclass(frozen=True, slots=True)
class Attempt:
    """One protocol run against one URL."""

    round: int
    phase: str  # "TO1" or "TO2"
    url: str
    error: str | None = None  # None: it succeeded
    retryable: bool = False

    def __str__(self) -> str:
        return f"{self.phase} {self.url}: {self.error or 'ok'}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to keep trying.

    ``max_attempts`` counts full rounds over the directives (None: no limit);
    ``deadline`` is in seconds from the start (None: no limit). Between rounds the wait
    is ``initial * factor**(round-1)`` capped at ``maximum``, then scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` (and capped again).
    """

    max_attempts: int | None = 5
    deadline: float | None = None
    initial: float = 5.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.2

    def backoff(self, completed_rounds: int, rand: Callable[[], float]) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, completed_rounds - 1))
        spread = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return max(0.0, min(self.maximum, base * spread))


@dataclass(frozen=True, slots=True)
class OnboardResult:
    """A finished onboarding: the replacement credential (the caller writes it)."""

    credential: DeviceCredential
    previous_guid: str
    reused: bool
    owner_url: str
    rv_url: str | None  # None when the directive bypassed TO1
    rounds: int
    attempts: tuple[Attempt, ...] = field(default=())
    active_modules: frozenset[str] = frozenset()


def default_client_factory(*, verify: bool | str = True, timeout: float = 30.0) -> ClientFactory:
    """Real HTTP clients; ``verify`` is True, False or a CA bundle path (PEM)."""

    def make(url: str) -> FdoHttpClient:
        return FdoHttpClient(url, verify=verify, timeout=timeout)

    return make


def _run(factory: ClientFactory, url: str, machine: ClientMachine[Any]) -> None:
    client = factory(url)
    try:
        client.run(machine)
    finally:
        client.close()


# ---------------------------------------------------------------------------- DI


def run_di(
    url: str,
    *,
    key_type: str = "ec256",
    serial: str,
    model: str,
    key: PrivateKeyT | None = None,
    http_client_factory: ClientFactory | None = None,
) -> DeviceCredential:
    """Run DI at the manufacturer ``url`` and return the device's new credential."""
    device_key = key if key is not None else generate_key(key_type)
    factory = http_client_factory or default_client_factory()
    machine = DIDevice(key=device_key, serial=serial, model=model)
    try:
        _run(factory, url, machine)
    except (FdoError, TransportError, OSError) as exc:
        raise DeviceClientError(f"DI at {url} failed: {_describe(exc)}") from None
    if machine.credential is None or not machine.done:
        raise DeviceClientError(f"DI at {url} ended without a credential")
    return machine.credential


# ---------------------------------------------------------------------------- onboarding


def directive_urls(directive: RendezvousDirective) -> list[str]:
    """Base URLs a device uses for ``directive`` (empty for unsupported protocols)."""
    try:
        return directive.urls()
    except FdoError:
        return []  # a malformed value: this directive is unusable, try the next


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PeerError):  # its message already reads "peer error N: ..."
        return exc.message[:300]
    if isinstance(exc, FdoError):
        return f"{type(exc).__name__} (code {int(exc.code)}): {exc.message}"[:300]
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again later may give a different answer."""
    if isinstance(exc, PeerError):
        return exc.peer_code in RETRYABLE_PEER_CODES
    if isinstance(exc, TransportError | OSError):
        return True
    # Our own InternalError (a command that failed, a file that could not be read) may pass.
    return isinstance(exc, InternalError)


class _Deadline(Exception):
    pass


class _Walker:
    """One onboarding run's state: clock, attempts, the TO2 settings."""

    def __init__(
        self,
        credential: DeviceCredential,
        *,
        factory: ClientFactory,
        make_driver: Callable[[], DeviceServiceInfoDriver],
        kex: KexSuite | None,
        cipher: CipherSuite,
        allow_credential_reuse: bool,
        policy: RetryPolicy,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        rand: Callable[[], float],
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.credential = credential
        self.progress = progress
        self.factory = factory
        self.make_driver = make_driver
        self.kex = kex
        self.cipher = cipher
        self.allow_credential_reuse = allow_credential_reuse
        self.policy = policy
        self.sleep = sleep
        self.clock = clock
        self.rand = rand
        self.start = clock()
        self.attempts: list[Attempt] = []
        self.round = 0

    # -------------------------------------------------------------- time

    def remaining(self) -> float | None:
        if self.policy.deadline is None:
            return None
        return self.policy.deadline - (self.clock() - self.start)

    def check_deadline(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise _Deadline

    def wait(self, seconds: float) -> None:
        left = self.remaining()
        if left is not None:
            if left <= seconds:
                raise _Deadline  # waiting would run past the deadline
        if seconds > 0:
            self.sleep(seconds)

    # -------------------------------------------------------------- attempts

    def _record(self, phase: str, url: str, exc: BaseException | None) -> None:
        if exc is None:
            self.attempts.append(Attempt(self.round, phase, url))
        else:
            attempt = Attempt(self.round, phase, url, _describe(exc), is_retryable(exc))
            self.attempts.append(attempt)
            if self.progress is not None:
                self.progress(f"round {self.round}: {attempt}")

    def to1(self, url: str) -> TO1Device | None:
        self.check_deadline()
        machine = TO1Device(self.credential)
        try:
            _run(self.factory, url, machine)
        except (FdoError, TransportError, OSError) as exc:
            self._record("TO1", url, exc)
            return None
        self._record("TO1", url, None)
        return machine

    def to2(self, url: str, to1d: CoseSign1 | None) -> TO2Device | None:
        self.check_deadline()
        machine = TO2Device(
            self.credential,
            service_info=self.make_driver(),
            to1d=to1d,
            kex_suite=self.kex,
            cipher=self.cipher,
            allow_credential_reuse=self.allow_credential_reuse,
        )
        try:
            _run(self.factory, url, machine)
        except (FdoError, TransportError, OSError) as exc:
            self._record("TO2", url, exc)
            return None
        if machine.new_credential is None:
            self._record("TO2", url, InternalError("TO2 ended without a credential"))
            return None
        self._record("TO2", url, None)
        return machine

    def directive(self, directive: RendezvousDirective) -> OnboardResult | None:
        urls = directive_urls(directive)
        if directive.bypass:
            for url in urls:
                done = self.to2(url, None)
                if done is not None:
                    return self._result(done, url, None)
            return None
        for rv_url in urls:
            to1 = self.to1(rv_url)
            if to1 is None or to1.rv_to2_addr is None:
                continue
            for entry in to1.rv_to2_addr.entries:
                for owner_url in entry.urls():
                    done = self.to2(owner_url, to1.to1d)
                    if done is not None:
                        return self._result(done, owner_url, rv_url)
            return None  # the rendezvous answered: another one would give the same to1d
        return None

    def _result(self, machine: TO2Device, owner_url: str, rv_url: str | None) -> OnboardResult:
        if machine.new_credential is None:  # to2() only returns finished machines
            raise OnboardError("TO2 ended without a credential", self.attempts)
        return OnboardResult(
            credential=machine.new_credential,
            previous_guid=str(self.credential.guid),
            reused=machine.reused,
            owner_url=owner_url,
            rv_url=rv_url,
            rounds=self.round,
            attempts=tuple(self.attempts),
            active_modules=machine.service_info.active_modules,
        )

    def run(self) -> OnboardResult:
        directives = self.credential.rv_info.for_device()
        if not any(directive_urls(d) for d in directives):
            raise OnboardError("the credential has no usable rendezvous directive (http/https)", [])
        try:
            while True:
                self.round += 1
                first = len(self.attempts)
                for directive in directives:
                    result = self.directive(directive)
                    if result is not None:
                        return result
                    delay = directive.delay
                    if delay and directive_urls(directive):
                        self.wait(float(delay))
                this_round = self.attempts[first:]
                if not any(a.retryable for a in this_round):
                    raise self._give_up("stopped: every attempt failed with an error retrying cannot fix")
                if self.policy.max_attempts is not None and self.round >= self.policy.max_attempts:
                    raise self._give_up(f"failed after {self.round} round(s)")
                pause = self.policy.backoff(self.round, self.rand)
                if self.progress is not None:
                    self.progress(f"round {self.round} failed; retrying in {pause:.0f} s")
                self.wait(pause)
        except _Deadline:
            raise self._give_up(
                f"deadline of {self.policy.deadline:g}s reached in round {self.round}"
            ) from None

    def _give_up(self, why: str) -> OnboardError:
        last = [a for a in self.attempts if a.round == self.round] or self.attempts
        tried = "; ".join(str(a) for a in last) or "nothing"
        return OnboardError(f"onboarding {why}; tried: {tried}", self.attempts, reason=f"onboarding {why}")


def onboard(
    credential: DeviceCredential,
    *,
    kex: KexSuite | None = None,
    cipher: CipherSuite = CipherSuite.A128GCM,
    devmod: Devmod | None = None,
    modules: Callable[[], Sequence[DeviceModule]] = lambda: (),
    allow_credential_reuse: bool = True,
    verify: bool | str = True,
    max_attempts: int | None = 5,
    deadline: float | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
    rand: Callable[[], float] = random.random,
    http_client_factory: ClientFactory | None = None,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> OnboardResult:
    """Run TO1 and TO2 until one owner onboards the device; see the module docstring.

    ``modules`` builds fresh device ServiceInfo modules for each TO2 attempt
    (:func:`device.modules.standard_modules` gives the real ones). ``verify`` is for the
    default HTTP client: True, False or a CA bundle path. ``policy`` overrides
    ``max_attempts`` and ``deadline``. ``sleep`` and ``clock`` default to
    :func:`time.sleep` and :func:`time.monotonic`. ``progress`` (optional) gets one line
    for each failed attempt and each wait between rounds. Raises :class:`OnboardError`.
    """
    if not credential.active:
        raise OnboardError("the credential is not active (DCActive is false)", [])
    if not credential.is_fdo11:
        raise OnboardError(f"the credential is for protocol version {credential.prot_ver}, not 101", [])
    policy = policy or RetryPolicy(max_attempts=max_attempts, deadline=deadline)
    info = devmod or default_devmod(credential.device_info, serial=credential.serial, root=root)

    def make_driver() -> DeviceServiceInfoDriver:
        return DeviceServiceInfoDriver(info, list(modules()))

    walker = _Walker(
        credential,
        factory=http_client_factory or default_client_factory(verify=verify),
        make_driver=make_driver,
        kex=kex,
        cipher=cipher,
        allow_credential_reuse=allow_credential_reuse,
        policy=policy,
        sleep=sleep or time.sleep,
        clock=clock or time.monotonic,
        rand=rand,
        progress=progress,
    )
    return walker.run()


__all__ = [
    "Attempt",
    "ClientFactory",
    "DeviceClientError",
    "OnboardError",
    "OnboardResult",
    "RetryPolicy",
    "default_client_factory",
    "directive_urls",
    "is_retryable",
    "onboard",
    "run_di",
]
