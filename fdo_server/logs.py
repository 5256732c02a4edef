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
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

#: Attribute of a LogRecord holding the structured fields (``extra={"fdo": {...}}``).
FIELDS = "fdo"

#: ``json.dumps(..., default=str, separators=(",", ":"))`` without making an encoder per
#: line (``json.dumps`` makes one whenever it is given options).
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


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
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            cached = self._second = (second, text)
        return f"{cached[1]}.{int(record.msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        access = _access_fields(record)
        out: dict[str, Any] = {
            "ts": self.timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage() if access is None else _access_message(access),
        }
        if self.service is not None:
            out["service"] = self.service
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            out.update(fields)
        if access is not None:
            out.update(access)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


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
    client, method, path, http, status = record.args
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
            "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            ACCESS_LOGGER: {"handlers": ["json"], "level": "INFO", "propagate": False},
        },
    }


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`configure_json_logging` installed (so it installs one)."""


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
