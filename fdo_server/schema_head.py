"""Whether a service's database is at the head revision, without Alembic or SQLAlchemy.

What a service checks at every start (:func:`fdo_server.migrate.require_current`, and a
worker that serves only devices through :func:`at_head`): the head revision read from the
migration files themselves and the revision in the database's version table, one
SELECT. When that cannot show the database is at head, :mod:`fdo_server.migrate` (Alembic)
says what is wrong.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fdo_server.sql import Database

SERVICES = ("manufacturer", "rendezvous", "owner")


def _check_service(service: str) -> None:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")


def version_table(service: str) -> str:
    """The service's Alembic version table, e.g. ``alembic_version_owner``."""
    _check_service(service)
    return f"alembic_version_{service}"


def script_location(service: str) -> Path:
    """The service's migration scripts folder (``<service>/migrations``)."""
    _check_service(service)
    module = importlib.import_module(service)
    return Path(str(module.__file__)).parent / "migrations"


_ASSIGNED = re.compile(r'^(revision|down_revision)\s*(?::[^=]*)?=\s*(?:"([^"]*)"|None)\s*$', re.M)


@functools.cache
def script_head(service: str) -> str | None:
    """The head revision read from the migration files themselves, without Alembic: the
    one revision no other names as its ``down_revision``; None when the files do not say
    it plainly (then Alembic decides). ``tests/test_migrations.py`` keeps it equal to
    :func:`fdo_server.migrate.head_revision`."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (script_location(service) / "versions").glob("[!_]*.py"):
        found = dict((m.group(1), m.group(2)) for m in _ASSIGNED.finditer(path.read_text()))
        if not found.get("revision"):
            return None
        revisions.add(str(found["revision"]))
        if found.get("down_revision"):
            parents.add(str(found["down_revision"]))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def version_query(service: str) -> str:
    """The SELECT of the revisions recorded in the service's version table."""
    return f"SELECT version_num FROM {version_table(service)}"  # noqa: S608 - a known name


def is_head(service: str, recorded: list[Any]) -> bool:
    """``recorded`` (the version table's rows) is exactly the head revision of the files."""
    head = script_head(service)
    return head is not None and recorded == [head]


def at_head(database: Database, service: str) -> bool:
    """``database`` is at the service's head revision, shown with one SELECT on the driver;
    False when that cannot be shown (a missing SQLite file is not created)."""
    target = database.target
    if script_head(service) is None or target.memory:
        return False
    if target.dialect == "sqlite" and not target.uri and not Path(target.database).exists():
        return False
    try:
        raw = database.raw_connection()
    except Exception:  # noqa: BLE001 - unreachable: the full check says so
        return False
    try:
        cursor = raw.cursor()
        cursor.execute(version_query(service))
        return is_head(service, [row[0] for row in cursor.fetchall()])
    except Exception:  # noqa: BLE001 - no version table yet: the full check
        return False
    finally:
        raw.close()
