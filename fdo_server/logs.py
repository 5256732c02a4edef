"""Structured (JSON) logs: one line per record, with the FDO fields a record carries.

The router's observer (:mod:`fdo_server.metrics`) logs one ``fdo.message`` record per FDO
message and :mod:`owner.audit` one ``owner.audit`` record per admin action; both pass
their fields as ``extra={"fdo": {...}}``. :class:`JsonFormatter` renders any record as
one JSON object: ``ts``, ``level``, ``logger``, ``message``, ``service`` and those fields.
Nothing secret is ever put in a record's fields: session ids are hashes of tokens.

:func:`configure_json_logging` installs it on the root logger (the services' uvicorn
factories call it; ``FDO_LOG_FORMAT=text`` keeps the plain format), and
:func:`uvicorn_log_config` gives uvicorn's own loggers the same format, so one stream
has one format. uvicorn's access log lines become JSON objects with ``client``,
``method``, ``path``, ``status`` and ``http``, and the query string never appears: a
token someone put in a URL (``?token=...``) must not land in a log, refused or not. The
path keeps a ``?`` mark when a query was there.

:func:`log_fields` logs a record with fields, as ``logger.log(level, msg, *args,
extra={FIELDS: fields})`` does; the router's observer logs every FDO message with it.
When the only handler the record would reach is the JSON handler :func:`configure_json_logging`
installed, with no filter on the way (how the services run), it writes the record's line
to that handler's stream itself: the same line, without making a ``LogRecord`` and
passing it through the logger's and the handler's ``handle`` (about 100,000 instructions
a line that way, 60,000 this way: 3 % of a TO1's, ``docs/benchmarks.md``, issue 15). A
handler or filter anyone adds (pytest's ``caplog`` too) gets the record the usual way.
:func:`log_access` does the same for uvicorn's access line of an FDO message the HTTP
protocol answers itself (:mod:`fdo_server.http_protocol`), through the handler
:func:`uvicorn_log_config` gives uvicorn's loggers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

#: Attribute of a LogRecord holding the structured fields (``extra={"fdo": {...}}``).
FIELDS = "fdo"

#: ``json.dumps(..., default=str, separators=(",", ":"))`` without making an encoder per
#: line (``json.dumps`` makes one whenever it is given options).
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


def _one_encoder() -> Callable[[dict[str, Any]], str]:
    """:data:`_ENCODER`'s ``encode`` for a dict, with the C encoder it makes on every call
    made once (without the circular-reference check, which a log line's fields never need:
    the same text)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has its _json accelerator
        return _ENCODER.encode
    encoder = make(None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)

    def encode(obj: dict[str, Any]) -> str:
        return "".join(encoder(obj, 0))

    return encode


_encode = _one_encoder()


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON line."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service
        #: ``(second, its text)`` of the last record: one tuple, so a thread reads a pair.
        self._second: tuple[int, str] = (-1, "")

    def timestamp(self, record: logging.LogRecord) -> str:
        """``record.created`` in UTC to the millisecond, ``2026-12-06T01:02:03.456+00:00``
        (``isoformat(timespec="milliseconds")``); the part up to the second is made once
        per second."""
        return self.stamp(record.created, record.msecs)

    def stamp(self, created: float, msecs: float) -> str:
        """:meth:`timestamp` of a record made at ``created`` (``msecs`` its milliseconds)."""
        second = int(created)
        cached = self._second
        if cached[0] != second:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            cached = self._second = (second, text)
        return f"{cached[1]}.{int(msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        access = _access_fields(record)
        fields = getattr(record, FIELDS, None)
        return self.line(
            self.timestamp(record),
            record.levelname,
            record.name,
            record.getMessage() if access is None else _access_message(access),
            fields if isinstance(fields, dict) else None,
            access,
            self.formatException(record.exc_info) if record.exc_info else None,
        )

    def line(
        self,
        ts: str,
        level_name: str,
        logger: str,
        message: str,
        fields: Mapping[str, Any] | None = None,
        access: Mapping[str, Any] | None = None,
        exc_info: str | None = None,
    ) -> str:
        """The JSON line of a record with these parts (:meth:`format`'s, and
        :func:`log_fields`'s when it writes the line itself)."""
        out: dict[str, Any] = {"ts": ts, "level": level_name.lower(), "logger": logger, "message": message}
        if self.service is not None:
            out["service"] = self.service
        if fields is not None:
            out.update(fields)
        if access is not None:
            out.update(access)
        if exc_info is not None:
            out["exc_info"] = exc_info
        return _encode(out)


ACCESS_LOGGER = "uvicorn.access"


def without_query(path: str) -> str:
    """``path`` with its query string (and fragment) cut off, ``?`` left as a mark."""
    cut = min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=-1)
    return path if cut < 0 else path[:cut] + "?"


def _access_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """uvicorn's access record ``(client, method, path, http version, status)`` as JSON
    fields with the query string cut off; None for any other record."""
    if record.name != ACCESS_LOGGER or not isinstance(record.args, tuple) or len(record.args) != 5:
        return None
    return _access_fields_of(record.args)


def _access_fields_of(args: tuple[object, ...]) -> dict[str, Any]:
    client, method, path, http, status = args
    return {
        "event": "http_access",
        "client": str(client),
        "method": str(method),
        "path": without_query(str(path)),
        "status": status,
        "http": str(http),
    }


def _access_message(fields: dict[str, Any]) -> str:
    return (
        f'{fields["client"]} "{fields["method"]} {fields["path"]} HTTP/{fields["http"]}" {fields["status"]}'
    )


def uvicorn_log_config(service: str) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: its loggers (errors and access lines) as JSON lines on
    stderr with the query strings cut (module docstring); None with
    ``FDO_LOG_FORMAT=text`` (uvicorn's own plain format)."""
    if os.environ.get("FDO_LOG_FORMAT", "json").lower() == "text":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter", "service": service}},
        "handlers": {
            "json": {"class": f"{__name__}._JsonHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            ACCESS_LOGGER: {"handlers": ["json"], "level": "INFO", "propagate": False},
        },
    }


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The services' JSON handlers (the root logger's, from :func:`configure_json_logging`,
    which installs one, and uvicorn's, from :func:`uvicorn_log_config`): the ones
    :func:`log_fields` and :func:`log_access` write lines to themselves."""


def configure_json_logging(service: str, *, level: int = logging.INFO) -> None:
    """Log JSON lines to stderr from the root logger (idempotent per process)."""
    if os.environ.get("FDO_LOG_FORMAT", "json").lower() == "text":
        return
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, _JsonHandler):
            return
    handler = _JsonHandler()
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)


def _direct_handler(logger: logging.Logger, level: int) -> _JsonHandler | None:
    """The handler a record of ``logger`` at ``level`` would reach when it is the only one
    and one of the services' JSON handlers (:class:`_JsonHandler`, with a
    :class:`JsonFormatter`), and no logger or handler on the way has a filter; None
    otherwise (``logger`` must be enabled for ``level``)."""
    found: _JsonHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or type(handler) is not _JsonHandler or handler.filters:
                return None
            if level < handler.level or type(handler.formatter) is not JsonFormatter:
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


def log_fields(
    logger: logging.Logger, level: int, fields: dict[str, Any], pathname: str, msg: str, *args: object
) -> None:
    """``logger.log(level, msg, *args, extra={FIELDS: fields})`` without looking up the
    caller's frame (``pathname`` names it); written straight to the JSON handler when
    nothing else would see the record (module docstring)."""
    if not logger.isEnabledFor(level):
        return
    handler = _direct_handler(logger, level)
    if handler is None:
        record = logger.makeRecord(logger.name, level, pathname, 0, msg, args, None, extra={FIELDS: fields})
        logger.handle(record)
        return
    message = msg % args if args else msg
    _write(handler, logger, level, pathname, msg, args, message, fields, None)


#: uvicorn's access line: ``client - "METHOD path HTTP/version" status``.
ACCESS_FORMAT = '%s - "%s %s HTTP/%s" %d'


def log_access(logger: logging.Logger, client: str, method: str, path: str, http: str, status: int) -> None:
    """The access line of a request, as uvicorn's HTTP protocol logs it
    (``logger.info(ACCESS_FORMAT, client, method, path, http, status)``); written straight
    to the JSON handler, as :func:`log_fields` does, when nothing else would see it."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _direct_handler(logger, logging.INFO) if logger.name == ACCESS_LOGGER else None
    if handler is None:
        logger.info(ACCESS_FORMAT, client, method, path, http, status)
        return
    args = (client, method, path, http, status)
    access = _access_fields_of(args)
    message = _access_message(access)
    _write(handler, logger, logging.INFO, __file__, ACCESS_FORMAT, args, message, None, access)


def _write(
    handler: _JsonHandler,
    logger: logging.Logger,
    level: int,
    pathname: str,
    msg: str,
    args: tuple[object, ...],
    message: str,
    fields: Mapping[str, Any] | None,
    access: Mapping[str, Any] | None,
) -> None:
    """Write the line of a record (``msg % args`` read as ``message``) to ``handler``'s
    stream, as its ``emit`` would; a failed write is the handler's to report."""
    formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
    now = time.time()  # as LogRecord takes ``created`` and ``msecs``
    ts = formatter.stamp(now, (now - int(now)) * 1000)
    line = formatter.line(ts, logging.getLevelName(level), logger.name, message, fields, access)
    handler.acquire()
    try:
        stream = handler.stream
        stream.write(line + handler.terminator)
        stream.flush()
    except Exception:  # noqa: BLE001 - as StreamHandler.emit: reported by the handler
        handler.handleError(logger.makeRecord(logger.name, level, pathname, 0, msg, args, None))
    finally:
        handler.release()
