"""Admin API bearer tokens with roles, stored hashed (the table and the checks; the
FastAPI dependency that admits them is :func:`fdo_server.auth.require`).

Tokens are 256-bit random strings (``fdo_`` prefix), so a plain SHA-256 of the token is
enough to store them: the database never holds a usable token. Roles nest: ``admin``
can do everything, ``operator`` what a viewer can plus day-to-day changes, ``viewer``
only reads. No web framework here: every service's tables name :class:`AdminToken`, and
a worker that serves only devices imports them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from enum import StrEnum

from sqlmodel import Field, Session, SQLModel, select

TOKEN_PREFIX = "fdo_"  # noqa: S105 - a prefix, not a secret


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
