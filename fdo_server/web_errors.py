"""How the FastAPI app of a service answers the errors its routes raise (:func:`install`):
a 422 for a request that does not validate or a value the database refuses, a 503 with
``Retry-After`` while the database cannot be reached. FDO messages answer their own
errors (an ErrorMessage: :mod:`transport.dispatch`); a device-plane worker, which serves
no other route that could raise them, never loads this module.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from fdo_server.db import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS

log = logging.getLogger("fdo_server.service")


def install(app: FastAPI) -> None:
    """Answer :data:`DATABASE_UNAVAILABLE`, ``DataError`` and ``RequestValidationError``."""
    app.add_exception_handler(DataError, _unstorable)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid)


class _AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate that came in a
    request (``"\\ud800"`` is valid JSON) goes back out as the same escape instead of
    failing to encode as UTF-8."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


async def _invalid(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 for a request that does not validate (same body), safe for any input."""
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it
    return _AsciiJSON({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def _unstorable(request: Request, exc: Exception) -> Response:
    """An admin request whose values the database refuses (out of range, too long, a NUL in
    PostgreSQL text): 422 with the database's one-line reason; the unit of work rolled back."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    log.warning("%s %s: the database refused a value: %s", request.method, request.url.path, reason)
    return JSONResponse({"detail": f"a value cannot be stored: {reason}"}, status_code=422)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    """A request that met an unreachable database: 503 with a JSON body and ``Retry-After``
    (the unit of work rolled back; ``/ready`` says not ready until the database is back)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    reason = f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__
    log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path, reason)
    return JSONResponse(
        {"detail": "the database is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
