"""Structured (JSON) logs: one line per record, with the FDO fields a record carries.

The router's observer (:mod:`fdo_server.metrics`) logs one ``fdo.message`` record per FDO
message and :mod:`owner.audit` one ``owner.audit`` record per admin action; both pass
their fields as ``extra={"fdo": {...}}``. :class:`JsonFormatter` renders any record as
one JSON object: ``ts``, ``level``, ``logger``, ``message``, ``service`` and those fields.
Nothing secret is ever put in a record's fields: session ids are hashes of tokens.

:func:`configure_json_logging` installs it on the root logger (the services' uvicorn
factories call it; ``FDO_LOG_FORMAT=text`` keeps the plain format).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

#: Attribute of a LogRecord holding the structured fields (``extra={"fdo": {...}}``).
FIELDS = "fdo"


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON line."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.service is not None:
            out["service"] = self.service
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


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
