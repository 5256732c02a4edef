"""Schema migrations (:mod:`fdo_server.migrate`): every service, on SQLite and PostgreSQL.

An empty database is brought to head and then matches the models (no pending
autogenerate difference, and the same reflected schema as ``create_all`` of the models:
indexes, unique constraints, partial indexes, foreign keys). Databases made before
migrations existed are adopted; databases behind the head are upgraded; the services
and their local commands refuse a database that is not at head, with one line naming
``fdo <service> db upgrade``.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from fdo_cli.main import app as fdo_app
from fdo_server import migrate, schema_head
from fdo_server.db import make_engine
from fdo_server.migrate import SERVICES, SchemaError
from tests.conftest import KeyPool

runner = CliRunner()
HEADS = {service: migrate.head_revision(service) for service in SERVICES}
OWNER_HEAD = HEADS["owner"]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def reflected(engine: Engine) -> dict[str, Any]:
    """What the database holds, table by table, as comparable plain values."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        if table.startswith("alembic_version"):
            continue
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in insp.get_columns(table)
            ],
            "primary_key": insp.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    _options(i.get("dialect_options", {})),
                )
                for i in insp.get_indexes(table)
            ),
            "unique": sorted(
                (str(u["name"]), tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
        }
    return out


def _options(options: dict[str, Any]) -> str:
    """Dialect options (a partial index's WHERE clause) as text."""
    return repr(sorted((key, str(value)) for key, value in options.items()))


# ---------------------------------------------------------------------------- upgrade


@pytest.mark.parametrize("service", SERVICES)
def test_upgrade_empty_database_to_head(engine: Engine, service: str) -> None:
    assert migrate.status(engine, service).current is None
    state = migrate.upgrade(engine, service)
    assert state.at_head and state.current == migrate.head_revision(service)
    assert migrate.current_revision(engine, service) == HEADS[service]
    names = table_names(engine)
    assert f"alembic_version_{service}" in names and "alembic_version" not in names
    assert {t.name for t in migrate.service_metadata(service).tables.values()} <= names
    migrate.check_current(engine, service)  # no SchemaError
    # Idempotent: a second upgrade changes nothing.
    assert migrate.upgrade(engine, service).current == HEADS[service]


@pytest.mark.parametrize("service", SERVICES)
def test_models_match_the_migrated_schema(engine: Engine, service: str) -> None:
    migrate.upgrade(engine, service)
    assert migrate.compare(engine, service) == []


@pytest.mark.parametrize("service", SERVICES)
def test_migrated_schema_is_the_models_schema(database_factory: Callable[[str], str], service: str) -> None:
    """Column types, nullability, defaults, indexes (partial ones too) and constraints."""
    by_models, by_migrations = make_engine(database_factory("models")), make_engine(database_factory("mig"))
    try:
        migrate.service_metadata(service).create_all(by_models)
        migrate.upgrade(by_migrations, service)
        assert reflected(by_migrations) == reflected(by_models)
    finally:
        by_models.dispose()
        by_migrations.dispose()


@pytest.mark.parametrize("service", SERVICES)
def test_the_head_read_from_the_files_is_alembics(service: str) -> None:
    """require_current's quick check reads the head from the migration files; it must be
    the head Alembic computes (a new migration that breaks the simple form would make
    every start take the full, Alembic-importing check, not a wrong answer)."""
    assert schema_head.script_head(service) == migrate.head_revision(service)


def test_service_metadata_holds_every_table_the_service_uses() -> None:
    from fdo_server.auth import AdminToken
    from fdo_server.session_model import FdoSession

    shared = {FdoSession.__tablename__, AdminToken.__tablename__}
    for service in SERVICES:
        names = set(migrate.service_metadata(service).tables)
        assert shared <= names, service
        assert migrate.LEGACY_TABLES[service] <= names, service


@pytest.mark.parametrize("service", SERVICES)
def test_downgrade_to_base_and_up_again(engine: Engine, service: str) -> None:
    migrate.upgrade(engine, service)
    assert migrate.downgrade(engine, service, "base").current is None
    assert table_names(engine) <= {f"alembic_version_{service}"}
    assert migrate.upgrade(engine, service).at_head


@pytest.mark.parametrize("service", SERVICES)
def test_database_made_before_migrations_is_adopted(engine: Engine, service: str) -> None:
    """Tables as the services created them at start, no version table: stamped, kept, at head."""
    migrate.service_metadata(service).create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO admin_token (name, role, token_hash, created_at)"
                " VALUES ('old', 'admin', 'h', :t)"
            ),
            {"t": datetime(2025, 1, 1, tzinfo=UTC)},
        )
    with pytest.raises(SchemaError, match=f"run `fdo {service} db upgrade`"):
        migrate.check_current(engine, service)
    assert migrate.upgrade(engine, service).at_head
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT name FROM admin_token")).scalars().all() == ["old"]
    assert migrate.compare(engine, service) == []


def test_partial_schema_is_refused(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE fdo_session (token VARCHAR(64) PRIMARY KEY)"))
    with pytest.raises(SchemaError, match="some of its tables but no alembic_version_owner"):
        migrate.upgrade(engine, "owner")


@pytest.fixture
def owner_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the owner's migrations, used instead of the real ones."""
    scripts = tmp_path / "owner-migrations"
    shutil.copytree(
        schema_head.script_location("owner"), scripts, ignore=shutil.ignore_patterns("__pycache__")
    )
    real = schema_head.script_location
    monkeypatch.setattr(schema_head, "script_location", lambda s: scripts if s == "owner" else real(s))
    migrate.forget_scripts()
    yield scripts
    migrate.forget_scripts()


@pytest.fixture
def second_revision(owner_scripts: Path) -> str:
    """The owner's migrations plus a later revision that adds a column (a newer release)."""
    (owner_scripts / "versions" / "2099_01_01_device_note.py").write_text(
        '"""Add owner_device.note."""\n\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "2099_01_01_device_note"\ndown_revision = "{OWNER_HEAD}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    with op.batch_alter_table("owner_device") as batch:\n'
        '        batch.add_column(sa.Column("note", sa.String(64), nullable=True))\n\n\n'
        "def downgrade() -> None:\n"
        '    with op.batch_alter_table("owner_device") as batch:\n'
        '        batch.drop_column("note")\n'
    )
    migrate.forget_scripts()
    return "2099_01_01_device_note"


def test_new_revision_is_autogenerated_and_empty_when_models_match(
    database_url: str, owner_scripts: Path
) -> None:
    path = migrate.new_revision(database_url, "owner", "Nothing changed")
    assert path.parent == owner_scripts / "versions"
    assert re.fullmatch(r"\d{4}_\d\d_\d\d_nothing_changed\.py", path.name)
    text = path.read_text()
    assert f"down_revision: str | None = {OWNER_HEAD!r}" in text
    assert "op." not in text.partition("def upgrade() -> None:")[2]  # nothing to migrate
    assert migrate.head_revision("owner") == path.stem
    assert migrate.upgrade(database_url, "owner").current == path.stem


def test_a_long_message_still_makes_a_revision_id_a_database_can_record(
    database_url: str, owner_scripts: Path
) -> None:
    path = migrate.new_revision(
        database_url, "owner", "Index the onboardings by the GUID a device left with!"
    )
    assert len(path.stem) <= migrate.MAX_REVISION_ID and re.fullmatch(
        r"\d{4}_\d\d_\d\d_[a-z0-9_]+", path.stem
    )
    assert migrate.upgrade(database_url, "owner").current == path.stem  # PostgreSQL: VARCHAR(32)


@pytest.mark.parametrize("service", SERVICES)
def test_every_shipped_revision_id_fits_the_version_table(service: str) -> None:
    ids = [r.revision for r in migrate._scripts(service).walk_revisions()]
    assert ids and all(len(i) <= migrate.MAX_REVISION_ID for i in ids), ids


def test_older_database_is_brought_to_head(engine: Engine, second_revision: str) -> None:
    assert migrate.head_revision("owner") == second_revision
    migrate.upgrade(engine, "owner", OWNER_HEAD)  # what the previous release left
    with pytest.raises(SchemaError) as info:
        migrate.check_current(engine, "owner")
    assert str(info.value) == (
        f"the owner database is at revision {OWNER_HEAD}, head is {second_revision}: "
        "run `fdo owner db upgrade`"
    )
    state = migrate.upgrade(engine, "owner")
    assert state.current == second_revision and state.at_head
    assert "note" in {c["name"] for c in inspect(engine).get_columns("owner_device")}


def test_stamped_older_database_is_upgraded(engine: Engine, second_revision: str) -> None:
    migrate.upgrade(engine, "owner", OWNER_HEAD)
    migrate.stamp(engine, "owner", OWNER_HEAD)
    assert migrate.status(engine, "owner").current == OWNER_HEAD
    assert migrate.upgrade(engine, "owner").current == second_revision


def test_revision_unknown_to_this_release_is_refused(engine: Engine) -> None:
    migrate.upgrade(engine, "owner")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version_owner SET version_num = '2999_12_31_future'"))
    for action in (migrate.check_current, migrate.upgrade):
        with pytest.raises(
            SchemaError, match="2999_12_31_future, which this version of fdo-bootc does not know"
        ):
            action(engine, "owner")


def test_concurrent_upgrades_migrate_once(database_url: str) -> None:
    """Replicas or Jobs started together: on PostgreSQL the advisory lock serialises them."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no concurrent migrators (one file, one host)")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate.upgrade(database_url, "owner")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert migrate.status(database_url, "owner").at_head


# ---------------------------------------------------------------------------- the services refuse


def _settings(service: str, url: str, key_pool: KeyPool, tmp_path: Path) -> Any:
    if service == "owner":
        from tests.owner.helpers import make_world

        return make_world(key_pool, tmp_path).settings(url, migrate=False)
    if service == "manufacturer":
        from tests.manufacturer.test_manufacturer import make_settings

        return make_settings(tmp_path, url, {"ec256": key_pool.get("ec256", 10)}, migrate=False)
    from rendezvous.settings import RendezvousSettings

    return RendezvousSettings(database_url=url)


def _create_app(service: str, settings: Any) -> Any:
    import importlib

    return importlib.import_module(f"{service}.app").create_app(settings)


@pytest.mark.parametrize("service", SERVICES)
def test_service_refuses_an_empty_database(
    service: str, database_url: str, key_pool: KeyPool, tmp_path: Path
) -> None:
    settings = _settings(service, database_url, key_pool, tmp_path)
    with pytest.raises(SchemaError) as info:
        _create_app(service, settings)
    assert (
        str(info.value)
        == f"the {service} database has no schema (head is {HEADS[service]}): run `fdo {service} db upgrade`"
    )
    migrate.upgrade(database_url, service)
    app = _create_app(service, settings)
    app.state.database.dispose()


def test_service_refuses_an_older_database(
    database_url: str, key_pool: KeyPool, tmp_path: Path, second_revision: str
) -> None:
    migrate.upgrade(database_url, "owner", OWNER_HEAD)
    with pytest.raises(
        SchemaError, match=f"at revision {OWNER_HEAD}, head is {second_revision}: run `fdo owner db"
    ):
        _create_app("owner", _settings("owner", database_url, key_pool, tmp_path))


def test_in_memory_database_is_migrated_at_start() -> None:
    from rendezvous.app import create_app
    from rendezvous.settings import RendezvousSettings

    app = create_app(RendezvousSettings(database_url="sqlite://"))
    assert migrate.status(app.state.engine, "rendezvous").at_head
    app.state.database.dispose()


# ---------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("service", SERVICES)
def test_db_upgrade_and_current_commands(service: str, database_url: str) -> None:
    env = {f"FDO_{service.upper()}_DATABASE_URL": database_url, f"FDO_{service.upper()}_CONFIG": None}
    result = runner.invoke(fdo_app, [service, "db", "current", "--check"], env=env)
    assert result.exit_code == 1
    assert result.output.strip() == f"{service} database: no schema (head is {HEADS[service]})"

    result = runner.invoke(fdo_app, [service, "db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"{service} database: revision {HEADS[service]} (at head): upgraded from an empty database"
    )
    result = runner.invoke(fdo_app, [service, "db", "upgrade"], env=env)
    assert result.output.strip() == f"{service} database: revision {HEADS[service]} (at head): nothing to do"

    result = runner.invoke(fdo_app, [service, "db", "current", "--check"], env=env)
    assert (
        result.exit_code == 0
        and result.output.strip() == f"{service} database: revision {HEADS[service]} (at head)"
    )


def test_db_upgrade_takes_a_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rv.db'}"
    result = runner.invoke(fdo_app, ["rendezvous", "db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert migrate.status(url, "rendezvous").at_head


def test_db_commands_report_an_unreachable_database() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
    result = runner.invoke(fdo_app, ["owner", "db", "upgrade", "--database-url", url])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the owner database: "), lines


@pytest.mark.parametrize(
    ("service", "argv"),
    [
        ("manufacturer", ["token", "create", "--name", "x"]),
        ("rendezvous", ["token", "create", "--name", "x", "--role", "admin"]),
        ("rendezvous", ["purge"]),
        ("owner", ["token", "create", "--name", "x"]),
    ],
)
def test_local_commands_refuse_an_empty_database(service: str, argv: list[str], database_url: str) -> None:
    env = {f"FDO_{service.upper()}_DATABASE_URL": database_url, f"FDO_{service.upper()}_CONFIG": None}
    result = runner.invoke(fdo_app, [service, *argv], env=env)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: the {service} database has no schema (head is {HEADS[service]}): "
        f"run `fdo {service} db upgrade`"
    )
    assert f"alembic_version_{service}" not in table_names_of(database_url)


def table_names_of(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return table_names(engine)
    finally:
        engine.dispose()


def test_serve_refuses_an_empty_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fdo_server import uvserver

    monkeypatch.setattr(uvserver, "run", lambda *a, **kw: pytest.fail("must not start"))
    db = tmp_path / "rv.db"
    env = {"FDO_RENDEZVOUS_DATABASE_URL": f"sqlite:///{db}", "FDO_RENDEZVOUS_CONFIG": None}
    result = runner.invoke(fdo_app, ["rendezvous", "serve"], env=env)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: the rendezvous database has no schema (head is {HEADS['rendezvous']}): "
        "run `fdo rendezvous db upgrade`"
    )
    assert not db.exists()  # checking did not create an empty file


def test_db_current_waits_for_head(database_url: str) -> None:
    """What the Kubernetes init containers run while the migration Job works."""
    argv = ["rendezvous", "db", "current", "--database-url", database_url]
    result = runner.invoke(fdo_app, [*argv, "--wait", "0.5"])
    assert result.exit_code == 1 and "no schema" in result.output
    timer = threading.Timer(1.0, migrate.upgrade, args=(database_url, "rendezvous"))
    timer.start()
    try:
        result = runner.invoke(fdo_app, [*argv, "--wait", "60"])
    finally:
        timer.join()
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"rendezvous database: revision {HEADS['rendezvous']} (at head)"


def test_migrations_ship_in_the_wheel() -> None:
    """env.py and versions/ are packages (found by packages.find); the template is package data."""
    import tomllib

    from tests.conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = project["tool"]["setuptools"]["package-data"]
    assert any(dep.startswith("alembic") for dep in project["project"]["optional-dependencies"]["server"])
    for service in SERVICES:
        folder = schema_head.script_location(service)
        assert folder == REPO / service / "migrations"
        for name in ("__init__.py", "env.py", "script.py.mako", "versions/__init__.py"):
            assert (folder / name).is_file(), (service, name)
        assert "migrations/script.py.mako" in package_data[service]
