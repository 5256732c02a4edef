"""The TO0 scheduler (spec §5.3): keep every voucher registered with its rendezvous servers.

Work lives in :class:`~owner.tables.To0Work`. :func:`run_due` claims due rows in batches
with one conditional ``UPDATE ... RETURNING`` (``WHERE claimed_by IS NULL OR
claim_expires_at <= now``; on PostgreSQL its row choice skips rows another replica has
locked), which is atomic on SQLite and PostgreSQL alike, so two replicas (or threads)
never both take a row. The claim is committed before any network call and no transaction
is held across one. Claimed rows are registered ``to0_concurrency`` at a time on a
thread pool (network only: the pool threads never touch the database), and results are
written back in batches as they come in. A work row whose voucher has left the usable
states (:mod:`owner.lifecycle`: replaced, superseded) is *retired*: registered once more
for :data:`RETIRE_WAIT_SECONDS`, so the rendezvous stops sending devices to a voucher
that is gone, then deleted. Per voucher, every owner-usable directive
of its RendezvousInfo is tried (each URL until one works); registration succeeds when
at least one rendezvous accepted it. Success schedules a renewal when
``to0_renew_fraction`` of the granted lifetime is left; failure retries with an
exponential back-off capped at ``to0_max_backoff_seconds``. A refusal with a
``Retry-After`` (the rendezvous's rate limit: HTTP 500 with an ErrorMessage, or a 429 or
503) is no failure: the scheduler paces itself (:class:`Pacer`): nothing more is sent to
that rendezvous URL before then, and the refused voucher is tried again then, in the
same pass, or put back due at that time when it is further off than a claimed voucher
may wait (:func:`pace_limit`); its attempts and back-off are left as they were.

:class:`To0Thread` does not poll: after each pass it reads the next due time from the
database (:func:`next_due`: the earliest retry, back-off or renewal, or the expiry of
another worker's claim) and sleeps until then, or until :func:`wake_schedulers` wakes it
(called after the commit of a voucher import or a TO2 that adds or re-schedules work in
this process), or at most ``to0_interval_seconds`` (0: no limit), which bounds how late
it notices work that another replica added and did not finish.

The statements run on the driver (:mod:`fdo_server.sql`), a batch's results written by
one UPDATE and one DELETE that read the rows from a JSON parameter: the process that
runs the scheduler (a device-plane worker) need not load SQLAlchemy.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fdo.crypto import PrivateKeyT, spki_der
from fdo.errors import FdoError
from fdo.rvinfo import RVTO2Addr
from fdo.to0.owner import TO0Owner
from fdo.voucher import OwnershipVoucher
from fdo_server.clock import utc
from fdo_server.sql import Conn, Database, Sql, message_scope, sqlite_datetime
from owner.config import OwnerConfig
from owner.states import REPLACED, SUPERSEDED, USABLE

if TYPE_CHECKING:  # the HTTP client (h11) is loaded when a registration is first sent
    from transport.client import FdoHttpClient

log = logging.getLogger(__name__)

HttpFactory = Callable[[str], "FdoHttpClient"]
"""Builds the FDO HTTP client for a rendezvous base URL."""

Clock = Callable[[], datetime]


def default_http_factory(url: str) -> FdoHttpClient:
    from transport.client import FdoHttpClient

    return FdoHttpClient(url, timeout=30.0)


def http_factory_for(config: OwnerConfig) -> HttpFactory:
    """Clients that verify https rendezvous servers with ``FDO_OWNER_TLS_CA`` when it is set.

    Without it they use the system CAs (httpx also honours ``SSL_CERT_FILE``).
    """
    ca = config.settings.tls_ca
    if ca is None:
        return default_http_factory

    def make(url: str) -> FdoHttpClient:
        from transport.client import FdoHttpClient

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


@dataclass(frozen=True, slots=True)
class _Result:
    claimed: _Claimed
    at: datetime
    granted: int | None
    errors: list[str]
    #: Nothing to register (a retired voucher with no live registration): delete the row.
    drop: bool = False
    #: Not registered because a rendezvous asked to wait (:class:`Pacer`): due again
    #: then, the attempt not counted.
    paced_until: datetime | None = None


def _claimable(w: str) -> str:
    """Work row ``w`` is due at ``:now`` and holds no live claim."""
    return (
        f"{w}.next_attempt_at <= :now AND ({w}.claimed_by IS NULL OR {w}.claim_expires_at IS NULL "
        f"OR {w}.claim_expires_at <= :now)"
    )


_TO0_STATES_IN = ", ".join(f"'{state}'" for state in TO0_STATES)
_USABLE_IN = ", ".join(f"'{state}'" for state in USABLE)
#: The work row ``w``'s voucher is one the scheduler works on.
_IN_TO0_STATE = (
    "EXISTS (SELECT v.id FROM owner_voucher v "  # noqa: S608 - our constants
    f"WHERE v.id = w.voucher_id AND v.state IN ({_TO0_STATES_IN}))"
)
# Rows in due order, each checked against its voucher: the plan walks the
# next_attempt_at index and stops after ``limit`` (a join would scan them all).
_CHOSEN = (
    f"SELECT w.id FROM owner_to0_work w WHERE {_claimable('w')} AND {_IN_TO0_STATE} "  # noqa: S608
    "ORDER BY w.next_attempt_at LIMIT :limit"
)
_CLAIM_SET = "UPDATE owner_to0_work SET claimed_by = :worker, claim_expires_at = :expires WHERE id IN "
# The claim is re-checked on the row the UPDATE locked.
_CLAIM_WHERE = f" AND {_claimable('owner_to0_work')} RETURNING id"
_CLAIM = Sql(
    f"{_CLAIM_SET}({_CHOSEN}){_CLAIM_WHERE}",
    # Another replica's claim in flight keeps its rows locked: take others.
    postgresql=f"{_CLAIM_SET}({_CHOSEN} FOR UPDATE OF w SKIP LOCKED){_CLAIM_WHERE}",
)

# The ids of the JSON array ``:ids``, as a subquery.
_IDS = "SELECT value FROM json_each(:ids)"
_PG_IDS = "SELECT CAST(value AS integer) FROM json_array_elements_text(CAST(:ids AS json))"


def _for_ids(text: str, **options: Any) -> Sql:
    """A statement on the work rows whose ids are in the JSON array ``:ids`` (``{ids}``
    in ``text``)."""
    return Sql(text.format(ids=_IDS), postgresql=text.format(ids=_PG_IDS), **options)


_CLAIMED = _for_ids(
    "SELECT w.id, v.raw, v.state, w.registered_until FROM owner_to0_work w "
    "JOIN owner_voucher v ON v.id = w.voucher_id WHERE w.id IN ({ids}) ORDER BY w.next_attempt_at, w.id",
    datetimes=("registered_until",),
)
_CURRENT = _for_ids(
    "SELECT w.id, w.claimed_by, w.attempts, v.state, w.last_error FROM owner_to0_work w "
    "LEFT JOIN owner_voucher v ON v.id = w.voucher_id WHERE w.id IN ({ids})"
)
_DELETE = _for_ids("DELETE FROM owner_to0_work WHERE claimed_by = :worker AND id IN ({ids})")
#: The outcome of each row of the JSON array ``:rows`` (objects with the keys of
#: :func:`_outcome`), on the rows we still hold; their claims released.
_FINISH = Sql(
    "UPDATE owner_to0_work SET registered_until = r.registered_until, next_attempt_at = r.next_attempt_at, "
    "attempts = r.attempts, last_error = r.last_error, claimed_by = NULL, claim_expires_at = NULL "
    "FROM (SELECT json_extract(value, '$.id') AS id, "
    "json_extract(value, '$.registered_until') AS registered_until, "
    "json_extract(value, '$.next_attempt_at') AS next_attempt_at, "
    "json_extract(value, '$.attempts') AS attempts, json_extract(value, '$.last_error') AS last_error "
    "FROM json_each(:rows)) AS r WHERE owner_to0_work.id = r.id AND owner_to0_work.claimed_by = :worker",
    postgresql="UPDATE owner_to0_work AS w SET registered_until = r.registered_until, "
    "next_attempt_at = r.next_attempt_at, attempts = r.attempts, last_error = r.last_error, "
    "claimed_by = NULL, claim_expires_at = NULL "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(id integer, registered_until timestamptz, "
    "next_attempt_at timestamptz, attempts integer, last_error text) "
    "WHERE w.id = r.id AND w.claimed_by = :worker",
)


def _claim_batch(
    database: Database, worker_id: str, now: datetime, hold: timedelta, limit: int
) -> list[_Claimed]:
    """Claim up to ``limit`` due rows (oldest due first) in one transaction."""
    with message_scope(database) as conn:
        claim = {"worker": worker_id, "expires": now + hold, "now": now, "limit": limit}
        ids = [row[0] for row in _CLAIM.all(claim, conn)]
        if not ids:
            return []
        rows = _CLAIMED.all({"ids": json.dumps(ids)}, conn)
    return [
        _Claimed(wid, bytes(raw), state not in USABLE, None if until is None else utc(until))
        for wid, raw, state, until in rows
    ]


def register(
    voucher: OwnershipVoucher,
    config: OwnerConfig,
    http_factory: HttpFactory,
    *,
    wait_seconds: int | None = None,
    reuse: _Clients | None = None,
    keys: Mapping[bytes, PrivateKeyT] | None = None,
) -> tuple[int | None, list[str]]:
    """Run TO0 with each rendezvous; returns (shortest granted lifetime or None, errors).

    ``wait_seconds`` is the lifetime asked for (default ``to0_wait_seconds``). With
    ``reuse`` the clients (and their connections) are kept for the next voucher;
    ``keys`` is :func:`keys_by_spki` of the config, made once for many vouchers."""
    outcome = _register(voucher, config, http_factory, wait_seconds=wait_seconds, reuse=reuse, keys=keys)
    return outcome.granted, outcome.errors


@dataclass(slots=True)
class _Outcome:
    granted: int | None
    errors: list[str]
    #: Not registered only because a rendezvous asked to be sent it later (its
    #: Retry-After): the time it may be tried again. None: registered, or it failed.
    paced_until: datetime | None = None


def _register(
    voucher: OwnershipVoucher,
    config: OwnerConfig,
    http_factory: HttpFactory,
    *,
    wait_seconds: int | None = None,
    reuse: _Clients | None = None,
    keys: Mapping[bytes, PrivateKeyT] | None = None,
    pacer: Pacer | None = None,
    deadline: datetime | None = None,
) -> _Outcome:
    """:func:`register`, paced by ``pacer`` when given: a URL whose rendezvous refused a
    registration with a ``Retry-After`` is not sent another one before then (this
    thread waits for it, at most until ``deadline``) and the refused voucher is tried
    again at that time. A refusal with ``Retry-After`` is no failure: when every
    rendezvous that did not register the voucher only asked to wait, the outcome is
    ``paced_until`` (the latest time asked), not an error."""
    if config.to2_addr is None:
        return _Outcome(None, ["FDO_OWNER_TO2_URLS is empty: nowhere to tell devices to go"])
    key = (keys if keys is not None else keys_by_spki(config)).get(spki_der(voucher.owner_public_key.key))
    if key is None:
        return _Outcome(None, ["the owner no longer holds this voucher's owner key"])
    granted: list[int] = []
    errors: list[str] = []
    paced: list[datetime] = []
    failed_outright = False
    directives = voucher.header.rv_info.for_owner()
    if not directives:
        return _Outcome(None, ["the voucher names no rendezvous server usable by the owner"])
    for directive in directives:
        for url in directive.urls(for_owner=True):
            accepted, error, until = _register_at(
                url, voucher, key, config.to2_addr, config, http_factory, wait_seconds, reuse, pacer, deadline
            )
            if accepted is not None:
                granted.append(accepted)
                break  # this directive's rendezvous has it; the next directive is another one
            if until is not None:
                paced.append(until)
            else:
                failed_outright = True
            if error is not None:
                errors.append(error)
    if granted or failed_outright or not paced:
        return _Outcome(min(granted) if granted else None, errors)
    return _Outcome(None, errors, paced_until=max(paced))


#: Refusals with ``Retry-After`` one voucher waits out in one pass before it is put
#: back (due at the time asked) for a later pass.
PACED_TRIES = 20


def _register_at(
    url: str,
    voucher: OwnershipVoucher,
    key: PrivateKeyT,
    to2_addr: RVTO2Addr,
    config: OwnerConfig,
    http_factory: HttpFactory,
    wait_seconds: int | None,
    reuse: _Clients | None,
    pacer: Pacer | None,
    deadline: datetime | None,
) -> tuple[int | None, str | None, datetime | None]:
    """TO0 with the rendezvous at ``url``: (granted lifetime, error, paced until)."""
    from transport.client import TransportError

    for _ in range(PACED_TRIES):
        if pacer is not None:
            until = pacer.wait_for(url, deadline)
            if until is not None:
                return None, None, until  # not before the end of this voucher's turn
        machine = TO0Owner(
            voucher=voucher,
            owner_key=key,
            rv_to2_addr=to2_addr,
            wait_seconds=config.settings.to0_wait_seconds if wait_seconds is None else wait_seconds,
        )
        client = http_factory(url) if reuse is None else reuse.get(url)
        failed = True
        keep = False
        try:
            client.run(machine)
            failed = False
        except (FdoError, TransportError) as exc:
            retry_after = client.retry_after
            if pacer is None or retry_after is None:
                return None, f"{url}: {exc}", None
            # The rendezvous asks to be sent it later (a rate limit): no failure, try again
            # then, on the same connection (the refusal was an orderly answer).
            until = pacer.refused(url, retry_after, config.settings.to0_max_backoff_seconds)
            log.debug("TO0 at %s paced until %s: %s", url, until.isoformat(), exc)
            keep = True
        finally:
            if reuse is None:
                client.close()
            elif failed and not keep:
                reuse.discard(url)  # a fresh connection for the next voucher
        if not failed:
            return machine.accepted_wait_seconds, None, None
    assert pacer is not None  # noqa: S101 - only a paced refusal loops
    return None, None, pacer.gate(url) or utc(pacer.clock())


class Pacer:
    """When each rendezvous URL may be sent the next TO0: the ``Retry-After`` of its
    last refusal. Shared by the pool threads of a scheduler, and kept across its passes,
    so a rendezvous that limits an owner's rate gets no more than it asks for: the
    threads bound for it wait until then (sleeping with ``sleep``, which ``stop`` ends).
    """

    def __init__(self, clock: Clock, sleep: Waiter, stop: threading.Event | None = None) -> None:
        self.clock = clock
        self.sleep = sleep
        self.stop = stop or threading.Event()
        self._until: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def refused(self, url: str, retry_after: int, most: int) -> datetime:
        """Note a refusal of ``url`` asking to wait ``retry_after`` seconds (at least 1,
        at most ``most``); returns when ``url`` may be tried again."""
        at = utc(self.clock()) + timedelta(seconds=min(max(retry_after, 1), max(most, 1)))
        with self._lock:
            until = self._until.get(url)
            if until is None or at > until:
                self._until[url] = until = at
            return until

    def gate(self, url: str) -> datetime | None:
        """When ``url`` may be tried again, or None when it may now."""
        now = utc(self.clock())
        with self._lock:
            until = self._until.get(url)
            if until is not None and until <= now:
                del self._until[url]
                until = None
            return until

    def wait_for(self, url: str, deadline: datetime | None) -> datetime | None:
        """Wait until ``url`` may be tried (None), unless that is after ``deadline`` or
        ``stop`` is set: then return that time at once. (So does a clock that stands
        still while it sleeps: a pass run at a fixed ``now``.)"""
        while True:
            until = self.gate(url)
            if until is None:
                return None
            if (deadline is not None and until > deadline) or self.stop.is_set():
                return until
            before = utc(self.clock())
            self.sleep(self.stop, max(0.0, (until - before).total_seconds()))
            if utc(self.clock()) == before and not self.stop.is_set():
                return until


def keys_by_spki(config: OwnerConfig) -> dict[bytes, PrivateKeyT]:
    """The owner's private keys by the DER SubjectPublicKeyInfo of their public halves."""
    return {spki_der(key.public_key()): key for key in config.keys.values()}


class _Clients:
    """One FDO HTTP client per rendezvous URL and pool thread, kept for a pass so that
    its connection serves many registrations; closed at the end of the pass."""

    def __init__(self, factory: HttpFactory, config: OwnerConfig) -> None:
        self.factory = factory
        self.keys = keys_by_spki(config)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.opened: list[FdoHttpClient] = []

    def _mine(self) -> dict[str, FdoHttpClient]:
        mine: dict[str, FdoHttpClient] | None = getattr(self.local, "clients", None)
        if mine is None:
            mine = self.local.clients = {}
        return mine

    def get(self, url: str) -> FdoHttpClient:
        mine = self._mine()
        client = mine.get(url)
        if client is None:
            client = mine[url] = self.factory(url)
            with self.lock:
                self.opened.append(client)
        return client

    def discard(self, url: str) -> None:
        client = self._mine().pop(url, None)
        if client is not None:
            with self.lock:
                self.opened.remove(client)
            client.close()

    def close(self) -> None:
        with self.lock:
            opened, self.opened = self.opened, []
        for client in opened:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not hide the pass's outcome
                log.debug("closing a TO0 client failed", exc_info=True)


def backoff(config: OwnerConfig, attempts: int) -> timedelta:
    """Delay before retry number ``attempts`` (1 after the first failure)."""
    s = config.settings
    seconds = min(s.to0_max_backoff_seconds, s.to0_retry_seconds * 2 ** min(attempts - 1, 30))
    return timedelta(seconds=seconds)


def _when(value: datetime | None, dialect: str) -> str | None:
    """A datetime inside a JSON parameter: on SQLite the text a datetime parameter is sent
    as (SQLAlchemy's: the ORM reads it alike), on PostgreSQL ISO 8601 with its offset."""
    if value is None:
        return None
    return sqlite_datetime(value) if dialect == "sqlite" else value.isoformat()


def _outcome(
    dialect: str, work_id: int, until: datetime | None, next_at: datetime, attempts: int, error: str | None
) -> dict[str, Any]:
    """One row of :data:`_FINISH`'s ``:rows``."""
    return {
        "id": work_id,
        "registered_until": _when(until, dialect),
        "next_attempt_at": _when(next_at, dialect),
        "attempts": attempts,
        "last_error": error,
    }


def _finish_batch(
    database: Database, results: Sequence[_Result], worker_id: str, config: OwnerConfig
) -> None:
    """Write the outcome of finished registrations (and release their claims) in one
    transaction. A row whose claim is no longer ours (it expired and another worker took
    it) is left to that worker."""
    with message_scope(database) as conn:
        ids = json.dumps([r.claimed.work_id for r in results])
        dialect = conn.dialect
        current = {
            wid: (by, attempts, state, error)
            for wid, by, attempts, state, error in _CURRENT.all({"ids": ids}, conn)
        }
        deletes: list[int] = []
        updates: dict[int, dict[str, Any]] = {}
        for r in results:
            wid = r.claimed.work_id
            row = current.get(wid)
            if row is None or row[0] != worker_id:
                continue  # our claim expired and someone else has it now
            _, attempts, state, last_error = row
            granted, now = r.granted, r.at
            if r.drop or (r.claimed.retire and granted is not None):
                deletes.append(wid)  # the rendezvous forgets the GUID within RETIRE_WAIT_SECONDS
            elif granted is not None and state not in USABLE:
                # Left the usable states while we registered it: retire it next pass.
                until = now + timedelta(seconds=granted)
                updates.setdefault(wid, _outcome(dialect, wid, until, now, 0, None))
            elif granted is not None:
                keep = timedelta(seconds=granted * (1 - config.settings.to0_renew_fraction))
                updates.setdefault(
                    wid,
                    _outcome(
                        dialect,
                        wid,
                        now + timedelta(seconds=granted),
                        now + max(keep, timedelta(seconds=1)),
                        0,
                        "; ".join(r.errors)[:2000] or None,
                    ),
                )
            elif r.paced_until is not None:
                # Asked to wait: retried then, with the attempts and last error as they were.
                updates.setdefault(
                    wid,
                    _outcome(dialect, wid, r.claimed.registered_until, r.paced_until, attempts, last_error),
                )
            else:
                attempts += 1
                error = ("; ".join(r.errors) or "registration failed")[:2000]
                updates.setdefault(
                    wid,
                    _outcome(
                        dialect,
                        wid,
                        r.claimed.registered_until,
                        now + backoff(config, attempts),
                        attempts,
                        error,
                    ),
                )
        # A row twice in a batch (our claim expired while it ran, and we took it again): a
        # delete wins (it runs first), else its first outcome (setdefault), as when each
        # row was a statement of its own (the first released the claim).
        if deletes:
            _DELETE.rowcount({"worker": worker_id, "ids": json.dumps(deletes)}, conn)
        if updates:
            _FINISH.rowcount({"worker": worker_id, "rows": json.dumps(list(updates.values()))}, conn)


def pace_limit(config: OwnerConfig) -> timedelta:
    """How long one claimed voucher may wait for rendezvous that asked to wait, before it
    is put back for a later pass: a quarter of the claim, at most a minute (so a claim
    queued behind others that wait is still held when its turn is over)."""
    return timedelta(seconds=min(60.0, config.settings.to0_claim_seconds / 4))


def _register_one(
    claimed: _Claimed, config: OwnerConfig, clients: _Clients, clock: Clock, pacer: Pacer
) -> _Result:
    """One registration (runs on a pool thread: network, no database)."""
    guid = "?"
    paced_until: datetime | None = None
    try:
        voucher = OwnershipVoucher.decode(claimed.raw)
        guid = str(voucher.guid)
        wait_for = RETIRE_WAIT_SECONDS if claimed.retire else None
        outcome = _register(
            voucher,
            config,
            clients.factory,
            wait_seconds=wait_for,
            reuse=clients,
            keys=clients.keys,
            pacer=pacer,
            deadline=utc(clock()) + pace_limit(config),
        )
        granted, errors, paced_until = outcome.granted, outcome.errors, outcome.paced_until
    except Exception as exc:  # one bad row must not stop the others
        log.exception("TO0 for work item %d failed", claimed.work_id)
        granted, errors = None, [f"internal error: {type(exc).__name__}"]
    if paced_until is not None:
        log.info("TO0 for %s put back until %s: the rendezvous asked to wait", guid, paced_until.isoformat())
    elif granted is None:
        log.warning("TO0 for %s failed: %s", guid, "; ".join(errors))
    elif claimed.retire:
        log.info("TO0 registration of %s retired (voucher no longer usable)", guid)
    else:
        log.info("TO0 for %s registered for %d s", guid, granted)
    return _Result(claimed, utc(clock()), granted, errors, paced_until=paced_until)


def run_due(
    database: Database,
    config: OwnerConfig,
    *,
    now: datetime | None = None,
    clock: Clock | None = None,
    worker_id: str,
    http_factory: HttpFactory | None = None,
    stop: threading.Event | None = None,
    pacer: Pacer | None = None,
    sleep: Waiter | None = None,
) -> int:
    """Register every due voucher this worker manages to claim; returns how many it ran.
    Once ``stop`` is set it claims no more and returns when those in flight are done.

    Claims are taken in batches while fewer than twice ``to0_concurrency`` are in
    flight, so a claim is never held long before its registration starts, and the pass
    ends when no due row is left to claim. ``now`` fixes the time of the whole pass
    (tests); otherwise ``clock`` (default: the system clock) is read at each claim and
    each result.

    A rendezvous that refuses a registration with ``Retry-After`` (its rate limit) is
    sent none before then (:class:`Pacer`; ``pacer`` is kept across passes by
    :class:`To0Thread`, else made for this pass, sleeping with ``sleep``, default
    :meth:`threading.Event.wait`, which ``stop`` ends): the registrations bound for it
    wait, the refused ones are tried again then, and none of it counts as a failed
    attempt or lengthens the back-off."""
    if now is not None:
        fixed = utc(now)
        clock = lambda: fixed  # noqa: E731
    read = clock or (lambda: datetime.now(UTC))
    hold = timedelta(seconds=config.settings.to0_claim_seconds)
    concurrency = config.settings.to0_concurrency
    clients = _Clients(http_factory or http_factory_for(config), config)
    if pacer is None:
        pacer = Pacer(read, sleep or _event_wait, stop)
    done = 0
    in_flight: set[Future[_Result]] = set()
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="fdo-owner-to0")
    try:
        more = True
        results: list[_Result] = []
        while True:
            if stop is not None and stop.is_set():
                more = False
            if more and len(in_flight) <= concurrency:
                if results:  # written before claiming more: two short transactions a round
                    _finish_batch(database, results, worker_id, config)
                    results = []
                want = 2 * concurrency - len(in_flight)
                claimed = _claim_batch(database, worker_id, utc(read()), hold, want)
                more = len(claimed) == want
                done += len(claimed)
                at = utc(read())
                for item in claimed:
                    if item.retire and (item.registered_until is None or item.registered_until <= at):
                        results.append(_Result(item, at, None, [], drop=True))  # nothing live to retire
                    else:
                        in_flight.add(pool.submit(_register_one, item, config, clients, read, pacer))
            if in_flight:
                ready, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                in_flight -= ready
                results.extend(f.result() for f in ready)
            if results and (len(results) >= concurrency or not more):
                _finish_batch(database, results, worker_id, config)
                results = []
            if not in_flight and not more:
                return done
    finally:
        # An exception (the database went away): let the registrations in flight end
        # and their claims expire; they are retried at the claims' expiry.
        pool.shutdown(wait=True, cancel_futures=True)
        clients.close()


_NEXT_DUE = Sql(
    "SELECT (SELECT w.next_attempt_at FROM owner_to0_work w "  # noqa: S608 - our constants
    f"WHERE w.claimed_by IS NULL AND {_IN_TO0_STATE} ORDER BY w.next_attempt_at LIMIT 1) AS unclaimed, "
    "(SELECT min(CASE WHEN w.claim_expires_at > w.next_attempt_at THEN w.claim_expires_at "
    "ELSE w.next_attempt_at END) FROM owner_to0_work w "
    f"WHERE w.claimed_by IS NOT NULL AND {_IN_TO0_STATE}) AS claimed",
    datetimes=("unclaimed", "claimed"),
)


def next_due(database: Database) -> datetime | None:
    """The earliest time a work row becomes claimable (its next attempt, or the expiry of
    the claim on it if that is later), or None when there is no work at all."""
    with message_scope(database) as conn:
        row = _NEXT_DUE.first({}, conn)
    assert row is not None  # noqa: S101 - a SELECT without FROM has one row
    return min((utc(t) for t in row if t is not None), default=None)


_RUNNING: weakref.WeakSet[To0Thread] = weakref.WeakSet()
_RUNNING_LOCK = threading.Lock()


def wake_schedulers() -> None:
    """Wake the TO0 schedulers running in this process: work was added or made due.

    Call it after the commit that did so (:func:`fdo_server.db.after_commit`), or a
    scheduler may look before the rows are visible and sleep past them."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for thread in running:
        thread.wake()


Waiter = Callable[[threading.Event, float | None], object]
"""Sleeps until the event is set or the timeout (seconds; None: no limit) has passed."""


def _event_wait(event: threading.Event, timeout: float | None) -> object:
    return event.wait(timeout)


class To0Thread:
    """Runs :func:`run_due`, then sleeps until the next due time (:meth:`run_pass`), until
    stopped. ``wait`` (default :meth:`threading.Event.wait`) does the sleeping; tests give
    their own to see the timeouts asked for."""

    def __init__(
        self,
        database: Database,
        config: OwnerConfig,
        *,
        worker_id: str,
        clock: Clock | None = None,
        http_factory: HttpFactory | None = None,
        wait: Waiter = _event_wait,
    ) -> None:
        self.database, self.config, self.worker_id = database, config, worker_id
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.http_factory = http_factory
        self.wait = wait
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: What the rendezvous asked to wait for, kept from one pass to the next.
        self.pacer = Pacer(self.clock, wait, self._stop)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fdo-owner-to0", daemon=True)
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        self._thread.start()

    def stop(self) -> None:
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Run a pass now (or right after the one running)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the pass: a wake during it means "look again"
            timeout = self.run_pass()
            if self._stop.is_set():
                return
            self.wait(self._wake, timeout)

    def run_pass(self) -> float | None:
        """One pass; the seconds to sleep until the next due time (0: due already), at
        most ``to0_interval_seconds``; None: sleep until woken."""
        cap = self.config.settings.to0_interval_seconds or None
        try:
            ran = run_due(
                self.database,
                self.config,
                clock=self.clock,
                worker_id=self.worker_id,
                http_factory=self.http_factory,
                stop=self._stop,
                pacer=self.pacer,
            )
            due = next_due(self.database)
        except Exception:
            log.exception("TO0 scheduler pass failed")
            retry = float(self.config.settings.to0_retry_seconds)
            return retry if cap is None else min(retry, cap)
        seconds = sleep_for(due, utc(self.clock()), cap)
        if seconds == 0 and ran == 0:
            # Due already, yet nothing was claimable (it became due just now, or a row
            # is in a state no pass takes): look again in a second, never in a loop.
            return 1.0 if cap is None else min(1.0, cap)
        return seconds


def sleep_for(due: datetime | None, now: datetime, cap: float | None) -> float | None:
    """Seconds from ``now`` until ``due`` (0 if past), at most ``cap``; None: no due time and no cap."""
    if due is None:
        return cap
    seconds = max(0.0, (due - now).total_seconds())
    return seconds if cap is None else min(seconds, cap)


#: How far ahead a live registration counts as expiring (``fdo_to0_expiring``, ``/ui``).
EXPIRING_WINDOW = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class To0Counts:
    """Active vouchers whose TO0 registration is not (or no longer) live, live ones
    expiring within the window, and those whose last attempt failed."""

    pending: int
    expiring: int
    failing: int


_COUNTS = Sql(
    "SELECT count(*) FILTER (WHERE w.registered_until IS NULL OR w.registered_until <= :now) AS pending, "  # noqa: S608
    "count(*) FILTER (WHERE w.registered_until > :now AND w.registered_until <= :soon) AS expiring, "
    "count(*) FILTER (WHERE w.last_error IS NOT NULL) AS failing "
    f"FROM owner_to0_work w JOIN owner_voucher v ON w.voucher_id = v.id WHERE v.state IN ({_USABLE_IN})"
)


def to0_counts(conn: Conn, now: datetime, window: timedelta = EXPIRING_WINDOW) -> To0Counts:
    """:class:`To0Counts` at ``now``, read on ``conn`` (a SQLAlchemy connection is lent
    with :func:`fdo_server.db.lent`)."""
    row = _COUNTS.first({"now": now, "soon": now + window}, conn)
    assert row is not None  # noqa: S101 - an aggregate has one row
    pending, expiring, failing = row
    return To0Counts(pending, expiring, failing)
