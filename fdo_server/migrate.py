"""Schema migrations of the three services: Alembic, run from code (architecture: "State,
storage and scale").

Each service keeps its scripts in its own package, ``<service>/migrations/`` (``env.py``
calls :func:`run_migrations`; revisions in ``versions/``), so they ship in the wheel and
no ``alembic.ini`` is needed. Each records its revision in its own version table,
``alembic_version_<service>``, so the three never read one another's.

``fdo <service> db upgrade`` runs :func:`upgrade`; the apps and the commands that work
on the database directly call :func:`require_current`, which refuses a database that is
empty or behind with one line naming the command to run. On PostgreSQL an upgrade holds
an advisory lock, so replicas or Jobs started together migrate once.

A database made before migrations existed (tables created at start, no version table)
is adopted: :func:`upgrade` stamps it at the first revision, whose schema it has, and
upgrades from there.

Changing a table: edit the model, then write the revision with :func:`new_revision`
against a database at head (``python -c 'from fdo_server.migrate import new_revision;
new_revision("sqlite:///dev.db", "owner", "add device note")'``), review it (Alembic
detects neither renames nor changed index conditions) and keep it working on SQLite (batch mode)
and PostgreSQL; ``tests/test_migrations.py`` checks that the models match the result.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, Table, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from fdo_server import schema_head
from fdo_server.schema_head import SERVICES as SERVICES
from fdo_server.schema_head import version_table
from fdo_server.sql import Database

if TYPE_CHECKING:  # Alembic (10 MB, 50 modules) is imported only where it is used:
    # a service that starts on a database at head never needs it (require_current).
    from alembic.config import Config
    from alembic.script import ScriptDirectory

#: Width of Alembic's ``version_num`` column: the longest revision id a database can record.
MAX_REVISION_ID = 32

#: The tables each service created at start before it had migrations (the first
#: revision's tables); a database holding all of them and no version table is adopted.
LEGACY_TABLES: dict[str, frozenset[str]] = {
    "manufacturer": frozenset({"fdo_session", "admin_token", "mfg_voucher", "mfg_handoff"}),
    "rendezvous": frozenset({"fdo_session", "admin_token", "rv_registration"}),
    "owner": frozenset(
        {
            "fdo_session",
            "admin_token",
            "owner_voucher",
            "owner_to0_work",
            "owner_device_onboarding",
            "owner_group",
            "owner_revision",
            "owner_revision_secret",
            "owner_device",
            "owner_device_guid",
            "owner_device_event",
            "owner_audit",
            "owner_report_token",
        }
    ),
}


class SchemaError(Exception):
    """The database schema is not the one this code needs; the message says what to do."""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where a service's database stands."""

    service: str
    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        """The database has the newest schema."""
        return self.current == self.head

    def describe(self) -> str:
        """One line: the revision and whether it is the head."""
        if self.current is None:
            return f"{self.service} database: no schema (head is {self.head})"
        where = "at head" if self.at_head else f"head is {self.head}"
        return f"{self.service} database: revision {self.current} ({where})"


def _table(item: Any) -> Table:
    table = item if isinstance(item, Table) else getattr(item, "__table__", None)
    if not isinstance(table, Table):
        raise TypeError(f"{item!r} is not a table")
    return table


def service_metadata(service: str) -> MetaData:
    """A MetaData with exactly the service's tables (``<service>.tables.TABLES``)."""
    tables: Sequence[Any] = importlib.import_module(f"{service}.tables").TABLES
    metadata = MetaData()
    for item in tables:
        _table(item).to_metadata(metadata)
    return metadata


def alembic_config(service: str, connection: Connection | None = None) -> Config:
    """An Alembic Config for ``service``; ``connection`` is the one its env.py migrates."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(schema_head.script_location(service)))
    config.set_main_option("path_separator", "os")
    config.attributes["service"] = service
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def forget_scripts() -> None:
    """Read the migration scripts afresh (after a revision was added or the folder moved)."""
    _scripts.cache_clear()
    schema_head.script_head.cache_clear()


def _alembic_command() -> ModuleType:
    import alembic.command

    return alembic.command


@functools.cache
def _scripts(service: str) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(service))


def head_revision(service: str) -> str:
    """The newest revision of the service's migrations."""
    head = _scripts(service).get_current_head()
    if head is None:
        raise RuntimeError(f"{service}: no migrations")
    return head


def base_revision(service: str) -> str:
    """The first revision (the schema of databases made before migrations existed)."""
    (base,) = _scripts(service).get_bases()
    return base


@contextlib.contextmanager
def _engine(engine_or_url: Engine | Database | str) -> Iterator[Engine]:
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    if isinstance(engine_or_url, Database):
        yield engine_or_url.engine()  # disposed with the Database
        return
    from fdo_server.db import make_engine

    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _current(connection: Connection, service: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": version_table(service)})
    return context.get_current_revision()


def current_revision(engine_or_url: Engine | str, service: str) -> str | None:
    """The database's revision for ``service`` (None: no schema yet)."""
    return status(engine_or_url, service).current


def status(engine_or_url: Engine | str, service: str) -> SchemaStatus:
    """The database's revision for ``service`` and the head revision."""
    with _engine(engine_or_url) as engine:
        if _missing_sqlite_file(engine):  # connecting would create an empty file
            return SchemaStatus(service, None, head_revision(service))
        with engine.connect() as connection:
            return SchemaStatus(service, _current(connection, service), head_revision(service))


def check_status(state: SchemaStatus) -> None:
    """Raise :class:`SchemaError` unless ``state`` is at head; the message says what to run."""
    if state.at_head:
        return
    run = f"run `fdo {state.service} db upgrade`"
    if state.current is None:
        raise SchemaError(f"the {state.service} database has no schema (head is {state.head}): {run}")
    if not _known(state.service, state.current):
        raise SchemaError(_unknown(state))
    raise SchemaError(
        f"the {state.service} database is at revision {state.current}, head is {state.head}: {run}"
    )


def _unknown(state: SchemaStatus) -> str:
    return (
        f"the {state.service} database is at revision {state.current}, which this version of "
        f"fdo-bootc does not know (head is {state.head}): run a newer version"
    )


def _known(service: str, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _scripts(service).get_revision(revision) is not None
    except CommandError:
        return False


def check_current(engine_or_url: Engine | str, service: str) -> None:
    """Raise :class:`SchemaError` unless the database is at the service's head revision."""
    check_status(status(engine_or_url, service))


def _is_memory(engine: Engine) -> bool:
    url = engine.url
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _missing_sqlite_file(engine: Engine) -> bool:
    url = engine.url
    if url.get_backend_name() != "sqlite" or _is_memory(engine) or str(url.database).startswith("file:"):
        return False
    return not Path(str(url.database)).exists()


def require_current(engine_or_url: Engine | Database | str, service: str) -> None:
    """What a service (or a command on its database) does first: refuse a database that is
    not at head with :class:`SchemaError`.

    An in-memory SQLite database is new on every start and no other process can reach
    it, so it is migrated here instead.
    """
    with _engine(engine_or_url) as engine:
        if _is_memory(engine):
            upgrade(engine, service)
        elif not _at_head_quickly(engine, service):
            check_current(engine, service)


def _at_head_quickly(engine: Engine, service: str) -> bool:
    """The database is at head, checked with one SELECT and no Alembic import; False
    when that cannot be shown (the full check then says what is wrong)."""
    if schema_head.script_head(service) is None or _missing_sqlite_file(engine):
        return False
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(schema_head.version_query(service))).all()
    except SQLAlchemyError:
        return False  # no version table yet, or the database cannot be read: the full check
    return schema_head.is_head(service, [row[0] for row in rows])


@contextlib.contextmanager
def _alembic_errors(service: str) -> Iterator[None]:
    """Alembic's complaints (an unknown or backward target revision) as SchemaError."""
    from alembic.util import CommandError

    try:
        yield
    except CommandError as exc:
        raise SchemaError(f"the {service} database: {exc}") from None


def _lock(connection: Connection, service: str) -> None:
    if connection.dialect.name == "postgresql":
        key = zlib.crc32(version_table(service).encode())
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def upgrade(engine_or_url: Engine | str, service: str, revision: str = "head") -> SchemaStatus:
    """Migrate the database to ``revision`` (default the head); returns the new status.

    An empty database gets the whole schema; a database made before migrations existed
    is stamped at the first revision, then upgraded.
    """
    with _engine(engine_or_url) as engine, engine.begin() as connection:
        _lock(connection, service)
        current = _current(connection, service)
        if current is None:
            _adopt_legacy(connection, service)
        elif not _known(service, current):
            raise SchemaError(_unknown(SchemaStatus(service, current, head_revision(service))))
        with _alembic_errors(service):
            _alembic_command().upgrade(alembic_config(service, connection), revision)
        return SchemaStatus(service, _current(connection, service), head_revision(service))


def downgrade(engine_or_url: Engine | str, service: str, revision: str) -> SchemaStatus:
    """Migrate the database down to ``revision`` (``base``: drop the whole schema)."""
    with _engine(engine_or_url) as engine, engine.begin() as connection:
        _lock(connection, service)
        with _alembic_errors(service):
            _alembic_command().downgrade(alembic_config(service, connection), revision)
        return SchemaStatus(service, _current(connection, service), head_revision(service))


def stamp(engine_or_url: Engine | str, service: str, revision: str) -> None:
    """Record ``revision`` in the version table without running any migration."""
    with _engine(engine_or_url) as engine, engine.begin() as connection, _alembic_errors(service):
        _alembic_command().stamp(alembic_config(service, connection), revision)


def _adopt_legacy(connection: Connection, service: str) -> None:
    existing = set(inspect(connection).get_table_names())
    legacy = LEGACY_TABLES[service]
    present = legacy & existing
    if not present:
        return
    if present != legacy:
        missing = ", ".join(sorted(legacy - present))
        raise SchemaError(
            f"the {service} database has some of its tables but no {version_table(service)} "
            f"(missing: {missing}); it was not made by fdo-bootc, or only in part"
        )
    _alembic_command().stamp(alembic_config(service, connection), base_revision(service))


def new_revision(engine_or_url: Engine | str, service: str, message: str) -> Path:
    """Write ``<service>/migrations/versions/<date>_<slug>.py``: the difference between the
    models and the database (upgraded to head first), autogenerated; returns its path.

    The revision id is the file name without ``.py``: at most 32 characters, the width of
    Alembic's ``version_num`` column (PostgreSQL refuses a longer one when upgrading).
    """
    from datetime import UTC, datetime

    upgrade(engine_or_url, service)
    date = f"{datetime.now(UTC):%Y_%m_%d}_"
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[: MAX_REVISION_ID - len(date)].rstrip("_")
    rev_id = date + (slug or "revision")
    with _engine(engine_or_url) as engine, engine.begin() as connection, _alembic_errors(service):
        config = alembic_config(service, connection)
        config.set_main_option("file_template", "%%(rev)s")
        script = _alembic_command().revision(config, message=message, autogenerate=True, rev_id=rev_id)
    forget_scripts()
    if script is None or isinstance(script, list):  # pragma: no cover - one head, one script
        raise SchemaError(f"{service}: no revision written")
    return Path(script.path)


def run_migrations(service: str) -> None:
    """The body of ``<service>/migrations/env.py``: migrate the Config's connection.

    Online only (no SQL scripts): the connection comes from :func:`upgrade` and friends
    in ``config.attributes["connection"]``.
    """
    from alembic import context

    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(f"{service} migrations run through fdo_server.migrate (fdo {service} db upgrade)")
    context.configure(
        connection=connection,
        target_metadata=service_metadata(service),
        version_table=version_table(service),
        include_name=_include_name(service),
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _include_name(service: str) -> Callable[[str | None, str, Any], bool]:
    """Autogenerate looks only at the service's own tables (others may share the database)."""
    names = set(service_metadata(service).tables)

    def include(name: str | None, type_: str, _parent: Any) -> bool:
        return type_ != "table" or name in names

    return include


def compare(engine_or_url: Engine | str, service: str) -> list[object]:
    """The differences between the database and the service's models (empty: they match)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    metadata = service_metadata(service)
    with _engine(engine_or_url) as engine, engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": version_table(service),
                "include_name": _include_name(service),
                "compare_type": True,
                "compare_server_default": True,
                "target_metadata": metadata,
            },
        )
        return list(compare_metadata(context, metadata))
