"""The TO0 scheduler (spec §5.3): keep every voucher registered with its rendezvous servers.

Work lives in :class:`~owner.tables.To0Work`. :func:`run_due` claims due rows one at a
time with a conditional UPDATE (``WHERE claimed_by IS NULL OR claim_expires_at < now``)
and checks the row count, which is atomic on SQLite and PostgreSQL alike, so two
replicas (or threads) never both take a row. The claim is committed before any network
call and no transaction is held across one. A work row whose voucher has left the usable
states (:mod:`owner.lifecycle`: replaced, superseded) is *retired*: registered once more
for :data:`RETIRE_WAIT_SECONDS`, so the rendezvous stops sending devices to a voucher
that is gone, then deleted. Per voucher, every owner-usable directive
of its RendezvousInfo is tried (each URL until one works); registration succeeds when
at least one rendezvous accepted it. Success schedules a renewal when
``to0_renew_fraction`` of the granted lifetime is left; failure retries with an
exponential back-off capped at ``to0_max_backoff_seconds``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col, select

from fdo.crypto import PrivateKeyT, spki_der
from fdo.errors import FdoError
from fdo.to0.owner import TO0Owner
from fdo.voucher import OwnershipVoucher
from fdo_server.db import unit_of_work
from owner.settings import OwnerConfig
from owner.tables import REPLACED, SUPERSEDED, USABLE, OwnerVoucher, To0Work, utc
from transport.client import FdoHttpClient, TransportError

log = logging.getLogger(__name__)

HttpFactory = Callable[[str], FdoHttpClient]
"""Builds the FDO HTTP client for a rendezvous base URL."""

BATCH = 50


def default_http_factory(url: str) -> FdoHttpClient:
    return FdoHttpClient(url, timeout=30.0)


def http_factory_for(config: OwnerConfig) -> HttpFactory:
    """Clients that verify https rendezvous servers with ``FDO_OWNER_TLS_CA`` when it is set.

    Without it they use the system CAs (httpx also honours ``SSL_CERT_FILE``).
    """
    ca = config.settings.tls_ca
    if ca is None:
        return default_http_factory

    def make(url: str) -> FdoHttpClient:
        return FdoHttpClient(url, timeout=30.0, verify=str(ca))

    return make


#: Vouchers the scheduler works on: usable ones are kept registered, replaced and
#: superseded ones have their registration retired. (A voucher handed on to another
#: owner is left alone: the next owner's TO0 takes its place at the rendezvous.)
TO0_STATES = (*USABLE, REPLACED, SUPERSEDED)
#: The lifetime asked for when retiring a registration (TO0 has no "unregister": the
#: entry is overwritten with one that expires at once).
RETIRE_WAIT_SECONDS = 1


@dataclass(frozen=True, slots=True)
class _Claimed:
    work_id: int
    raw: bytes
    #: The voucher left the usable states: retire its registration instead of renewing it.
    retire: bool
    registered_until: datetime | None


def _candidates(engine: Engine, now: datetime) -> list[int]:
    with unit_of_work(engine) as db:
        query = (
            select(To0Work.id)
            .join(OwnerVoucher, col(OwnerVoucher.id) == col(To0Work.voucher_id))
            .where(col(OwnerVoucher.state).in_(TO0_STATES))
            .where(col(To0Work.next_attempt_at) <= now)
            .where(or_(col(To0Work.claimed_by).is_(None), col(To0Work.claim_expires_at) < now))
            .order_by(col(To0Work.next_attempt_at))
            .limit(BATCH)
        )
        return [i for i in db.exec(query).all() if i is not None]


def _claim(engine: Engine, work_id: int, worker_id: str, now: datetime, hold: timedelta) -> _Claimed | None:
    with unit_of_work(engine) as db:
        result = db.execute(
            update(To0Work)
            .where(col(To0Work.id) == work_id)
            .where(col(To0Work.next_attempt_at) <= now)
            .where(or_(col(To0Work.claimed_by).is_(None), col(To0Work.claim_expires_at) < now))
            .values(claimed_by=worker_id, claim_expires_at=now + hold)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        work = db.get(To0Work, work_id)
        voucher = db.get(OwnerVoucher, work.voucher_id) if work is not None else None
        if work is None or voucher is None:
            return None
        until = None if work.registered_until is None else utc(work.registered_until)
        return _Claimed(work_id, voucher.raw, voucher.state not in USABLE, until)


def register(
    voucher: OwnershipVoucher,
    config: OwnerConfig,
    http_factory: HttpFactory,
    *,
    wait_seconds: int | None = None,
) -> tuple[int | None, list[str]]:
    """Run TO0 with each rendezvous; returns (shortest granted lifetime or None, errors).

    ``wait_seconds`` is the lifetime asked for (default ``to0_wait_seconds``)."""
    if config.to2_addr is None:
        return None, ["FDO_OWNER_TO2_URLS is empty: nowhere to tell devices to go"]
    key: PrivateKeyT | None = None
    wanted = spki_der(voucher.owner_public_key.key)
    for candidate in config.keys.values():
        if spki_der(candidate.public_key()) == wanted:
            key = candidate
    if key is None:
        return None, ["the owner no longer holds this voucher's owner key"]
    granted: list[int] = []
    errors: list[str] = []
    directives = voucher.header.rv_info.for_owner()
    if not directives:
        return None, ["the voucher names no rendezvous server usable by the owner"]
    for directive in directives:
        for url in directive.urls(for_owner=True):
            machine = TO0Owner(
                voucher=voucher,
                owner_key=key,
                rv_to2_addr=config.to2_addr,
                wait_seconds=config.settings.to0_wait_seconds if wait_seconds is None else wait_seconds,
            )
            client = http_factory(url)
            try:
                client.run(machine)
            except (FdoError, TransportError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            finally:
                client.close()
            if machine.accepted_wait_seconds is not None:
                granted.append(machine.accepted_wait_seconds)
                break  # this directive's rendezvous has it; the next directive is another one
    return (min(granted) if granted else None), errors


def backoff(config: OwnerConfig, attempts: int) -> timedelta:
    """Delay before retry number ``attempts`` (1 after the first failure)."""
    s = config.settings
    seconds = min(s.to0_max_backoff_seconds, s.to0_retry_seconds * 2 ** min(attempts - 1, 30))
    return timedelta(seconds=seconds)


def _finish(
    engine: Engine,
    claimed: _Claimed,
    worker_id: str,
    now: datetime,
    granted: int | None,
    errors: list[str],
    config: OwnerConfig,
) -> None:
    with unit_of_work(engine) as db:
        work = db.get(To0Work, claimed.work_id)
        if work is None or work.claimed_by != worker_id:
            return  # our claim expired and someone else has it now
        if claimed.retire and granted is not None:
            db.delete(work)  # the rendezvous forgets the GUID within RETIRE_WAIT_SECONDS
            return
        voucher = db.get(OwnerVoucher, work.voucher_id)
        if granted is not None and (voucher is None or voucher.state not in USABLE):
            # Left the usable states while we registered it: retire it next pass.
            work.registered_until = now + timedelta(seconds=granted)
            work.next_attempt_at = now
            work.attempts = 0
            work.last_error = None
        elif granted is not None:
            work.registered_until = now + timedelta(seconds=granted)
            keep = timedelta(seconds=granted * (1 - config.settings.to0_renew_fraction))
            work.next_attempt_at = now + max(keep, timedelta(seconds=1))
            work.attempts = 0
            work.last_error = "; ".join(errors)[:2000] or None
        else:
            work.attempts += 1
            work.next_attempt_at = now + backoff(config, work.attempts)
            work.last_error = ("; ".join(errors) or "registration failed")[:2000]
        work.claimed_by = None
        work.claim_expires_at = None
        db.add(work)


def run_due(
    engine: Engine,
    config: OwnerConfig,
    *,
    now: datetime | None = None,
    worker_id: str,
    http_factory: HttpFactory | None = None,
) -> int:
    """Register every due voucher this worker manages to claim; returns how many it ran."""
    now = utc(now or datetime.now(UTC))
    factory = http_factory or http_factory_for(config)
    hold = timedelta(seconds=config.settings.to0_claim_seconds)
    done = 0
    for work_id in _candidates(engine, now):
        claimed = _claim(engine, work_id, worker_id, now, hold)
        if claimed is None:
            continue
        done += 1
        if claimed.retire and (claimed.registered_until is None or claimed.registered_until <= now):
            _drop(engine, claimed, worker_id)  # no live registration to retire
            continue
        try:
            voucher = OwnershipVoucher.decode(claimed.raw)
            wait = RETIRE_WAIT_SECONDS if claimed.retire else None
            granted, errors = register(voucher, config, factory, wait_seconds=wait)
        except Exception as exc:  # one bad row must not stop the others
            log.exception("TO0 for work item %d failed", work_id)
            granted, errors = None, [f"internal error: {type(exc).__name__}"]
        _finish(engine, claimed, worker_id, now, granted, errors, config)
        if granted is None:
            log.warning("TO0 for %s failed: %s", voucher_guid(claimed.raw), "; ".join(errors))
        elif claimed.retire:
            log.info("TO0 registration of %s retired (voucher no longer usable)", voucher_guid(claimed.raw))
        else:
            log.info("TO0 for %s registered for %d s", voucher_guid(claimed.raw), granted)
    return done


def _drop(engine: Engine, claimed: _Claimed, worker_id: str) -> None:
    with unit_of_work(engine) as db:
        work = db.get(To0Work, claimed.work_id)
        if work is not None and work.claimed_by == worker_id:
            db.delete(work)


def voucher_guid(raw: bytes) -> str:
    try:
        return str(OwnershipVoucher.decode(raw).guid)
    except FdoError:
        return "?"


class To0Thread:
    """Runs :func:`run_due` every ``to0_interval_seconds`` until stopped."""

    def __init__(
        self,
        engine: Engine,
        config: OwnerConfig,
        *,
        worker_id: str,
        clock: Callable[[], datetime] | None = None,
        http_factory: HttpFactory | None = None,
    ) -> None:
        self.engine, self.config, self.worker_id = engine, config, worker_id
        self.clock = clock or (lambda: datetime.now(UTC))
        self.http_factory = http_factory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fdo-owner-to0", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                run_due(
                    self.engine,
                    self.config,
                    now=self.clock(),
                    worker_id=self.worker_id,
                    http_factory=self.http_factory,
                )
            except Exception:
                log.exception("TO0 scheduler pass failed")
            self._stop.wait(self.config.settings.to0_interval_seconds)


#: How far ahead a live registration counts as expiring (``fdo_to0_expiring``, ``/ui``).
EXPIRING_WINDOW = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class To0Counts:
    """Active vouchers whose TO0 registration is not (or no longer) live, live ones
    expiring within the window, and those whose last attempt failed."""

    pending: int
    expiring: int
    failing: int


def to0_counts(conn: Connection, now: datetime, window: timedelta = EXPIRING_WINDOW) -> To0Counts:
    work = To0Work.__table__  # type: ignore[attr-defined]
    vouchers = OwnerVoucher.__table__  # type: ignore[attr-defined]
    joined = work.join(vouchers, work.c.voucher_id == vouchers.c.id)
    until = work.c.registered_until
    counts = (
        select(
            func.count().filter(or_(until.is_(None), until <= now)),
            func.count().filter(and_(until > now, until <= now + window)),
            func.count().filter(work.c.last_error.is_not(None)),
        )
        .select_from(joined)
        .where(vouchers.c.state.in_(USABLE))
    )
    pending, expiring, failing = conn.execute(counts).one()
    return To0Counts(pending, expiring, failing)
