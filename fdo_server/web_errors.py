"""How the FastAPI app of a service answers the errors its routes raise (:func:`install`):
a 422 for a request that does not validate or a value the database refuses, a 503 with
``Retry-After`` while the database cannot be reached. FDO messages answer their own
errors (an ErrorMessage: :mod:`transport.dispatch`); a device-plane worker, which serves
no other route that could raise them, never loads this module.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from fdo_server.db import DATABASE_UNAVAILABLE
from fdo_server.device_app import database_error_answer


def install(app: FastAPI) -> None:
    """Answer :data:`DATABASE_UNAVAILABLE`, ``DataError`` and ``RequestValidationError``."""
    errors: tuple[type[Exception], ...] = (DataError, *DATABASE_UNAVAILABLE)
    for error in errors:
        app.add_exception_handler(error, _database_error)
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


async def _database_error(request: Request, exc: Exception) -> Response:
    """A value the database refuses (422) or a database that cannot be reached (503):
    :func:`fdo_server.device_app.database_error_answer`."""
    answer = database_error_answer(request.method, request.url.path, exc)
    if answer is None:  # registered only for the errors it answers
        raise exc
    response = Response(answer.body, status_code=answer.status_code)
    response.raw_headers = list(answer.raw_headers)
    return response
