"""The admin audit log: who changed what, when.

Every change the admin API makes calls :func:`audit` in the same transaction, so a
change and its entry are committed together. ``detail`` must never hold a secret value:
callers pass names, numbers and flags (``has_registry_auth``), not contents. The log
line written alongside names only the action and target.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from sqlmodel import Session

from owner.groups_tables import AuditEntry

log = logging.getLogger("owner.audit")


def audit(
    db: Session,
    who: str,
    action: str,
    target: str = "",
    detail: Mapping[str, object] | None = None,
    *,
    now: datetime | None = None,
) -> AuditEntry:
    """Add an audit entry for ``action`` on ``target`` by ``who`` (a token name)."""
    entry = AuditEntry(
        at=now or datetime.now(UTC), who=who, action=action, target=target, detail=dict(detail or {})
    )
    db.add(entry)
    log.info(
        "audit: %s %s %s",
        who,
        action,
        target,
        extra={
            "fdo": {
                "event": "admin_action",
                "service": "owner",
                "who": who,
                "action": action,
                "target": target,
                "outcome": "ok",
            }
        },
    )
    return entry
