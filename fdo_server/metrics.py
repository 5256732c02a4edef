"""Prometheus metrics of the three services (their routes, ``/health``, ``/ready`` and
``/metrics``, are in :mod:`fdo_server.probes`).

Each app gets its own :class:`ServiceMetrics` on a fresh ``CollectorRegistry`` (so
``create_app`` may run many times in one process). With several uvicorn workers set
``PROMETHEUS_MULTIPROC_DIR`` (before the workers start): the values then live in files
there and ``/metrics`` aggregates every worker's (``MultiProcessCollector``);
:class:`fdo_server.launcher.ServiceProcess` makes one per multi-worker service. There
are no multiprocess ``Gauge`` objects (so no per-pid gauge series): the two owner gauges
below are read from the database by a scrape-time collector, one series each.

This module imports neither the web framework nor SQLAlchemy: every FDO message is
counted here (:meth:`ServiceMetrics.observe`), and the FDO path loads nothing it does not
need (``tests/test_import_isolation.py``).

Metrics (label ``service`` is ``manufacturer``, ``rendezvous`` or ``owner``):

* ``fdo_messages_total{service,msg_type,result}`` — FDO messages by request type,
  ``result`` ``ok`` or ``error``;
* ``fdo_errors_total{service,code}`` — error answers by FDO error code;
* ``fdo_sessions_started_total{service,protocol}`` and
  ``fdo_sessions_completed_total{service,protocol}`` (DI, TO0, TO1, TO2);
* ``fdo_protocol_duration_seconds{service,protocol}`` — histogram, first message to
  completion of a session (the start time travels in the session state, so it holds
  when messages land on different workers);
* rendezvous only: ``fdo_to0_refused_total{service,reason}`` — TO0 registrations refused
  because their GUID is pinned to another manufacturer key or owner key chain
  (``rendezvous/pins.py``);
* ``fdo_sessions_swept_total{service}`` — expired protocol sessions the service's own
  sweep deleted (:mod:`fdo_server.sweep`);
* ``fdo_rate_limited_total{service,route}`` and ``fdo_network_refused_total{service,route}``
  — requests refused by :mod:`fdo_server.ratelimit` (too many from one address; DI from
  a network not listed); ``route`` is e.g. ``fdo/30`` or ``ui/login``;
* owner only, computed from the database at scrape time: ``fdo_to0_pending`` (TO0
  registrations not live yet) and ``fdo_to0_expiring`` (live ones expiring within
  ``expiring_window``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fdo_server.planes import serving_plane


def _prometheus_package_on_demand() -> None:
    """Let ``prometheus_client``'s submodules load without its package ``__init__`` until
    a name of the package itself is asked for.

    The ``__init__`` imports its exposition and push-gateway code, which brings
    ``http.server``, ``urllib.request``, ``wsgiref`` and ``email`` (about 2 MB per
    process, ``docs/benchmarks.md``, issue 15's eleventh round); a device-plane worker
    only writes metric values (:mod:`prometheus_client.metrics`, ``values``,
    ``multiprocess``). The package module is made from its spec without running it; the
    first ``prometheus_client.<name>`` that is not a submodule (``from prometheus_client
    import generate_latest``) runs the ``__init__`` into it then (PEP 562); a submodule
    asked for that way (``from prometheus_client import values``) is just imported.
    """
    if "prometheus_client" in sys.modules:
        return
    spec = importlib.util.find_spec("prometheus_client")
    if spec is None or spec.loader is None:  # pragma: no cover - it is a dependency
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> Any:
        if not name.startswith("__") and importlib.util.find_spec(f"prometheus_client.{name}") is not None:
            return importlib.import_module(f"prometheus_client.{name}")  # a submodule: no __init__
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    package.__dict__["__getattr__"] = complete
    sys.modules["prometheus_client"] = package


if serving_plane() == "device":
    _prometheus_package_on_demand()

from prometheus_client import values  # noqa: E402 - after the package is set up
from prometheus_client.metrics import Counter, Histogram  # noqa: E402
from prometheus_client.metrics_core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.registry import Collector, CollectorRegistry  # noqa: E402

from fdo_server.logs import log_fields  # noqa: E402
from transport.dispatch import MessageEvent  # noqa: E402

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger("fdo.message")

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


#: Where prometheus_client keeps the metric files that several worker processes share.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class ServiceMetrics:
    """The metrics of one service app and the router observer that feeds them."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess:
            # prometheus_client picks file-backed values when it is first imported; a
            # process that imported it before the folder was set (``serve`` with one
            # device worker and the admin plane in a process of its own) picks again.
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        #: Where the metric objects live; in multiprocess mode they write to files
        #: and are collected by a MultiProcessCollector instead.
        self.registry = CollectorRegistry()
        own = None if self.multiprocess else self.registry
        self.messages = Counter(
            "fdo_messages", "FDO messages by type and result", ["service", "msg_type", "result"], registry=own
        )
        self.errors = Counter(
            "fdo_errors", "FDO error answers by error code", ["service", "code"], registry=own
        )
        self.started = Counter(
            "fdo_sessions_started", "Protocol sessions started", ["service", "protocol"], registry=own
        )
        self.completed = Counter(
            "fdo_sessions_completed", "Protocol sessions completed", ["service", "protocol"], registry=own
        )
        self.duration = Histogram(
            "fdo_protocol_duration_seconds",
            "Protocol session duration, first message to completion",
            ["service", "protocol"],
            buckets=DURATION_BUCKETS,
            registry=own,
        )
        self.swept = Counter(
            "fdo_sessions_swept", "Expired protocol sessions deleted by the sweep", ["service"], registry=own
        )
        self.rate_limited = Counter(
            "fdo_rate_limited",
            "Requests refused because their client address sent too many",
            ["service", "route"],
            registry=own,
        )
        self.network_refused = Counter(
            "fdo_network_refused",
            "Requests refused because their client address is not in an allowed network",
            ["service", "route"],
            registry=own,
        )
        self._message_counters: dict[tuple[str, bool], Any] = {}
        #: Labelled children of the per-message metrics by ``(id(metric), label)``: see :meth:`_child`.
        self._children: dict[tuple[int, str], Any] = {}
        self._extra: list[Collector] = []
        self._listeners: list[Callable[[MessageEvent], None]] = []

    def counter(self, name: str, documentation: str, labels: list[str]) -> Counter:
        """A service's own counter, kept where this object keeps its others (its
        registry, or the multiprocess files)."""
        return Counter(name, documentation, labels, registry=None if self.multiprocess else self.registry)

    def add_listener(self, listener: Callable[[MessageEvent], None]) -> None:
        """Call ``listener`` with every message event after it is counted (it must not raise)."""
        self._listeners.append(listener)

    def add_collector(self, collector: Collector) -> None:
        """A scrape-time collector (e.g. gauges read from the database)."""
        self._extra.append(collector)
        if not self.multiprocess:
            self.registry.register(collector)

    def _child(self, metric: Any, label: str) -> Any:
        """``metric.labels(service, label)``, looked up once per process (``labels`` takes
        a lock and builds its key on every call)."""
        key = (id(metric), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.service, label)
        return child

    def observe(self, event: MessageEvent) -> None:
        """:data:`transport.dispatch.MessageObserver`: count the message and log it.

        Once per FDO message, so kept lean: the labelled counter of each (type, result)
        and the other labelled children are looked up once per process, and the line is
        logged with :func:`fdo_server.logs.log_fields` (no look-up of the caller's frame,
        and written straight to the JSON handler when nothing else would see it)."""
        msg_type = str(event.msg_type) if 0 <= event.msg_type <= 255 else "invalid"
        ok = event.error_code is None
        key = (msg_type, ok)
        counter = self._message_counters.get(key)
        if counter is None:
            counter = self._message_counters[key] = self.messages.labels(
                self.service, msg_type, "ok" if ok else "error"
            )
        counter.inc()
        if not ok:
            self._child(self.errors, str(event.error_code)).inc()
        protocol = event.protocol or "none"
        if event.started:
            self._child(self.started, protocol).inc()
        if event.completed:
            self._child(self.completed, protocol).inc()
            if event.session_seconds is not None:
                self._child(self.duration, protocol).observe(event.session_seconds)
        fields = {
            "event": "fdo_message",
            "service": self.service,
            "protocol": event.protocol,
            "msg_type": event.msg_type,
            "guid": event.guid,
            "session": event.session,
            "outcome": "ok" if ok else "error",
            "error_code": event.error_code,
            "duration_ms": round(event.seconds * 1000, 3),
        }
        if event.completed:
            fields["completed"] = True
        log_fields(
            log,
            logging.INFO,
            fields,
            __file__,
            "%s message %d %s",
            event.protocol or "FDO",
            event.msg_type,
            "ok" if ok else f"error {event.error_code}",
        )
        for listener in self._listeners:
            listener(event)

    def exposition(self) -> bytes:
        from prometheus_client.exposition import generate_latest

        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in self._extra:
            registry.register(collector)
        return generate_latest(registry)


class To0Gauges:
    """``fdo_to0_pending`` and ``fdo_to0_expiring`` from the owner's database, per scrape."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        window: timedelta = timedelta(days=1),
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.window = window

    def collect(self) -> Iterable[Metric]:
        from fdo_server.db import lent
        from owner.to0 import to0_counts

        try:
            with self.engine.connect() as conn:
                counts = to0_counts(lent(conn), self.clock(), self.window)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB is down
            log.warning("could not read TO0 registrations for metrics")
            return
        pending, expiring = counts.pending, counts.expiring
        g = GaugeMetricFamily("fdo_to0_pending", "TO0 registrations not (or no longer) live")
        g.add_metric([], float(pending))
        yield g
        g = GaugeMetricFamily(
            "fdo_to0_expiring", f"Live TO0 registrations expiring within {int(self.window.total_seconds())}s"
        )
        g.add_metric([], float(expiring))
        yield g
