"""Calls to a service's admin API (``/api/v1``) for the CLI, with one-line errors.

httpx is imported when a call is made, so importing a CLI module stays light.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fdo_cli.common import die
from fdo_cli.output import Column, Format, chosen, fetch, show_page


def call(method: str, url: str, token: str, path: str, **kwargs: Any) -> Any:
    """``method`` ``/api/v1{path}``; exits with the server's message on an error status."""
    import httpx

    target = url.rstrip("/") + "/api/v1" + path
    try:
        response = httpx.request(
            method, target, headers={"Authorization": f"Bearer {token}"}, timeout=60.0, **kwargs
        )
    except httpx.HTTPError as exc:
        raise die(f"{target}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else response.text[:500]
        raise die(f"HTTP {response.status_code}: {error_text(detail)}")
    return body


def list_page(
    url: str,
    token: str,
    path: str,
    columns: Sequence[Column],
    noun: str,
    *,
    filters: Mapping[str, Any] | None = None,
    limit: int | None,
    offset: int,
    every: bool,
    output: Format | None,
    as_json: bool,
) -> None:
    """A list command's work: ``GET /api/v1{path}`` with ``filters``, one page
    (``--limit``/``--offset``) or all of them (``--all``), printed as ``-o`` says."""
    fmt = chosen(output, as_json)
    page = fetch(
        lambda params: call("GET", url, token, path, params={**(filters or {}), **params}),
        limit=limit,
        offset=offset,
        every=every,
    )
    show_page(page, fmt, columns, noun)


def error_text(detail: Any) -> str:
    """An error answer's ``detail`` for people: a string as it is; validation errors
    (FastAPI's list of ``{"loc", "msg"}``) one line per field, ``body.image: ...``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(e, dict) and "msg" in e for e in detail):
        lines = []
        for error in detail:
            where = ".".join(str(part) for part in error.get("loc") or []) or "request"
            lines.append(f"  {where}: {error['msg']}")
        return "the request is invalid:\n" + "\n".join(lines)
    return json.dumps(detail)
