"""Unauthenticated work is bounded per client address: :class:`EdgeGuard`.

A pure ASGI middleware in front of everything else of a service app (the FDO fast path
included) that looks at the requests a stranger can send to make the service work: the
first message of each protocol (``POST /fdo/101/msg/10``, ``20``, ``30``, ``60``) and a
sign-in form (``POST /ui/login``). For each such :class:`GuardedRoute` it may

* refuse a client address outside the route's networks (the manufacturer's
  ``di_networks``), and
* refuse a client address that sent more than its token bucket allows (``rate`` per
  second after a ``burst``), with a ``Retry-After``.

An FDO route is refused the FDO way (HTTP 500 and an ErrorMessage, type 255: the spec
has no "try later" code, so InternalServerError with a one-line reason), a web form
with 429. Every refusal is counted (``fdo_rate_limited_total`` and
``fdo_network_refused_total``, :mod:`fdo_server.metrics`) and logged once per address
and episode (not once per refused request, so a flood does not flood the log).

The buckets live in the worker process: with W workers (and R replicas) an address may
send up to W x R times the rate. They are kept for at most ``max_addresses`` addresses,
least recently seen forgotten first, so memory stays bounded whatever the sources.

The client address is the peer's, unless the peer is one of ``trusted_proxies``: then
it is the first address from the right of ``X-Forwarded-For`` that is not a trusted
proxy (what the outermost trusted proxy saw; the entries left of it are the client's
own say). uvicorn's own proxy-header handling is off (:mod:`fdo_server.serve`), so this
setting is the only one that believes the header.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fdo.errors import ErrorCode, FdoError
from fdo_server.logs import FIELDS
from fdo_server.metrics import ServiceMetrics
from fdo_server.proxies import Network as IPNetwork
from fdo_server.proxies import in_networks
from transport.dispatch import error_response
from transport.server import MSG_PATH, ASGIApp, Receive, Scope, Send

log = logging.getLogger("fdo.edge")


class _Bucket:
    __slots__ = ("last", "refusing", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last
        #: Refused since the last token taken.
        self.refusing = False


class TokenBuckets:
    """A token bucket per key (``rate`` tokens per second, at most ``burst``), for at most
    ``max_keys`` keys: the least recently used one is forgotten beyond that."""

    def __init__(
        self, rate: float, burst: int, *, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if there was one, else the seconds until there is."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.last) * self.rate)
            bucket.last = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.refusing = False
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def first_refusal(self, key: str) -> bool:
        """Whether the refusal just made is the first since ``key`` last got a token (and
        note that it was made)."""
        bucket = self._buckets.get(key)
        if bucket is None or bucket.refusing:
            return False
        bucket.refusing = True
        return True


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""A refusal's ``(status, headers, body)``."""

Refusal = Callable[[str, int], Answer]
"""How a route refuses: ``(reason, retry_after or 0) -> answer``."""


def fdo_refusal(msg_type: int) -> Refusal:
    """HTTP 500 with an FDO ErrorMessage (InternalServerError) answering ``msg_type``."""

    def refuse(reason: str, retry_after: int) -> Answer:
        response = error_response(FdoError(reason, code=ErrorCode.INTERNAL_SERVER_ERROR), msg_type)
        headers = list(response.raw_headers)
        if retry_after:
            headers.append((b"retry-after", str(retry_after).encode()))
        return response.status_code, headers, bytes(response.body)

    return refuse


def http_refusal(reason: str, retry_after: int) -> Answer:
    """429 (403 without a ``retry_after``) with a plain-text reason."""
    body = (reason + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if retry_after:
        return 429, [*headers, (b"retry-after", str(retry_after).encode())], body
    return 403, headers, body


@dataclass
class GuardedRoute:
    """A route strangers may use, bounded per client address."""

    #: The metric label, e.g. ``fdo/30``.
    name: str
    method: str
    path: str
    refuse: Refusal
    #: Requests per second per address (0: no rate limit) and the burst allowed first.
    rate: float = 0.0
    burst: int = 1
    #: Client addresses allowed to use the route at all; None: any.
    networks: Sequence[IPNetwork] | None = None


def first_message_routes(
    msg_types: Iterable[int],
    *,
    rate: float,
    burst: int,
    networks: dict[int, Sequence[IPNetwork]] | None = None,
    rates: Mapping[int, tuple[float, int]] | None = None,
) -> list[GuardedRoute]:
    """The :class:`GuardedRoute` of each protocol's first message (``POST /fdo/101/msg/<type>``),
    limited to ``rate`` and ``burst``, or to the ``(rate, burst)`` its type has in ``rates``."""
    allowed = networks or {}
    own = rates or {}
    return [
        GuardedRoute(
            f"fdo/{msg_type}",
            "POST",
            f"{MSG_PATH}{msg_type}",
            fdo_refusal(msg_type),
            rate=own.get(msg_type, (rate, burst))[0],
            burst=own.get(msg_type, (rate, burst))[1],
            networks=allowed.get(msg_type) or None,
        )
        for msg_type in msg_types
    ]


def client_address(scope: Scope, trusted_proxies: Sequence[IPNetwork]) -> str:
    """The client address of a request (see the module docstring); ``"unknown"`` without one."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not trusted_proxies or not in_networks(peer, trusted_proxies):
        return peer
    forwarded = [
        value.decode("latin-1") for name, value in scope.get("headers", ()) if name == b"x-forwarded-for"
    ]
    hops = [hop.strip() for hop in ",".join(forwarded).split(",") if hop.strip()]
    for hop in reversed(hops):
        if not in_networks(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


class EdgeRules:
    """What :class:`EdgeGuard` decides, kept apart from the middleware so that the FDO
    fast path of the HTTP protocol (:mod:`fdo_server.fast_messages`) checks its requests
    against the same routes and buckets. ``routes`` with neither a rate nor networks are
    left out."""

    def __init__(
        self,
        *,
        service: str,
        routes: Sequence[GuardedRoute],
        trusted_proxies: Sequence[IPNetwork],
        metrics: ServiceMetrics,
        max_addresses: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.trusted = list(trusted_proxies)
        self.metrics = metrics
        #: (method, path) -> the route and its buckets (None: no rate limit).
        self.routes: dict[tuple[str, str], tuple[GuardedRoute, TokenBuckets | None]] = {}
        #: At most one "not in an allowed network" line per address and minute.
        self._network_log = TokenBuckets(1 / 60, 1, max_keys=max_addresses, clock=clock)
        for route in routes:
            buckets = None
            if route.rate > 0:
                buckets = TokenBuckets(route.rate, route.burst, max_keys=max_addresses, clock=clock)
            if buckets is not None or route.networks:
                self.routes[(route.method, route.path)] = (route, buckets)

    def check(self, scope: Scope) -> Answer | None:
        """The refusal of an HTTP request (``method``, ``path``, ``client`` and ``headers``
        of ``scope``), None when it may go on."""
        if not self.routes:
            return None
        guarded = self.routes.get((scope["method"], scope["path"]))
        if guarded is None:
            return None
        return self._check(*guarded, scope)

    def _check(self, route: GuardedRoute, buckets: TokenBuckets | None, scope: Scope) -> Answer | None:
        address = client_address(scope, self.trusted)
        if route.networks and not in_networks(address, route.networks):
            self.metrics.network_refused.labels(self.service, route.name).inc()
            if not self._network_log.take(address):
                self._log("not in an allowed network", route, address, network=True)
            return route.refuse(f"{route.name} is not offered to {address}", 0)
        if buckets is None:
            return None
        wait = buckets.take(address)
        if not wait:
            return None
        self.metrics.rate_limited.labels(self.service, route.name).inc()
        if buckets.first_refusal(address):
            self._log("over the rate limit", route, address, network=False)
        retry_after = max(1, math.ceil(wait))
        return route.refuse(f"too many requests from {address}; retry in {retry_after} s", retry_after)

    def _log(self, why: str, route: GuardedRoute, address: str, *, network: bool) -> None:
        fields = {
            "event": "network_refused" if network else "rate_limited",
            "service": self.service,
            "route": route.name,
            "client": address,
        }
        log.warning("%s %s from %s: %s", route.method, route.path, address, why, extra={FIELDS: fields})


class EdgeGuard:
    """The ASGI middleware: see the module docstring. It decides with ``rules`` (shared
    with the FDO fast path), or with rules made from ``options`` (:class:`EdgeRules`);
    with no route guarded it passes everything on."""

    def __init__(self, app: ASGIApp, /, *, rules: EdgeRules | None = None, **options: Any) -> None:
        self.app = app
        self.rules = rules if rules is not None else EdgeRules(**options)
        self.metrics = self.rules.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.rules.check(scope)
            if refused is not None:
                status, headers, body = refused
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
