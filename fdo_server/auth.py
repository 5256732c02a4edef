"""Admin API bearer tokens with roles, stored hashed.

Tokens are 256-bit random strings (``fdo_`` prefix), so a plain SHA-256 of the token is
enough to store them: the database never holds a usable token. Roles nest: ``admin``
can do everything, ``operator`` what a viewer can plus day-to-day changes, ``viewer``
only reads. A missing or unknown token is 401, a token without the role 403. The
device-facing FDO endpoints never use these tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

TOKEN_PREFIX = "fdo_"  # noqa: S105 - a prefix, not a secret

#: The admin token as OpenAPI declares it (``/docs`` shows the lock on every admin
#: route). It never refuses a request itself: :func:`require` does, with its own answers.
BEARER = HTTPBearer(
    scheme_name="AdminToken",
    bearerFormat="fdo_<random>",
    description="An admin API token (made by the service's `token create` command, or "
    "`POST /api/v1/tokens` on the owner); each operation's requirement names the least role it needs.",
    auto_error=False,
)


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
        return order.index(self) >= order.index(needed)


class AdminToken(SQLModel, table=True):
    """An admin API token (only its hash is kept)."""

    __tablename__ = "admin_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128)
    role: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    revoked_at: datetime | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Session, name: str, role: Role) -> str:
    """Create a token; the plaintext is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.add(AdminToken(name=name, role=str(role), token_hash=hash_token(token)))
    return token


def lookup_token(db: Session, token: str) -> AdminToken | None:
    """The live token row for ``token``, if any."""
    wanted = hash_token(token)
    row = db.exec(select(AdminToken).where(AdminToken.token_hash == wanted)).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash, wanted):
        return None
    return row


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
