"""Admin API bearer tokens with roles, stored hashed: the FastAPI side (the table and the
token checks are in :mod:`fdo_server.tokens`, re-exported here).

Tokens are 256-bit random strings (``fdo_`` prefix), so a plain SHA-256 of the token is
enough to store them: the database never holds a usable token. Roles nest: ``admin``
can do everything, ``operator`` what a viewer can plus day-to-day changes, ``viewer``
only reads. A missing or unknown token is 401, a token without the role 403. The
device-facing FDO endpoints never use these tokens.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fdo_server.tokens import TOKEN_PREFIX, AdminToken, Role, create_token, hash_token, lookup_token

__all__ = [
    "BEARER",
    "TOKEN_PREFIX",
    "AdminToken",
    "Role",
    "create_token",
    "hash_token",
    "lookup_token",
    "require",
]

#: The admin token as OpenAPI declares it (``/docs`` shows the lock on every admin
#: route). It never refuses a request itself: :func:`require` does, with its own answers.
BEARER = HTTPBearer(
    scheme_name="AdminToken",
    bearerFormat="fdo_<random>",
    description="An admin API token (made by the service's `token create` command, or "
    "`POST /api/v1/tokens` on the owner); each operation's requirement names the least role it needs.",
    auto_error=False,
)


def require(engine_of: Callable[[Request], Engine], role: Role) -> Callable[[Request], AdminToken]:
    """A FastAPI dependency admitting bearer tokens with at least ``role``.

    OpenAPI shows it as the :data:`BEARER` scheme with the role as the requirement's
    one entry (OpenAPI 3.1 lets a non-OAuth requirement list role names), and
    :func:`fdo_server.api_docs.document` adds its 401 (and 403) answers.
    """

    def dependency(
        request: Request,
        _declared: HTTPAuthorizationCredentials | None = Security(BEARER, scopes=[str(role)]),  # noqa: B008
    ) -> AdminToken:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        with Session(engine_of(request)) as db:
            row = lookup_token(db, token.strip())
        if row is None:
            raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if not Role(row.role).allows(role):
            raise HTTPException(403, f"this needs the {role} role")
        return row

    return dependency
