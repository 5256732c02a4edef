"""Shared fixtures: the interop vectors folder and keys generated once per session.

The vectors live in ``$FDO_VECTORS_DIR`` or ``<repo>/../shared/vectors`` and are never
copied into the project; tests that need them skip when the folder is absent.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fdo.crypto import PrivateKeyT, generate_key

REPO = Path(__file__).resolve().parents[1]

NOW = datetime(2025, 1, 1, tzinfo=UTC)
"""A fixed "now" for certificates made in tests."""


def _port_range_per_worker() -> None:
    """Under pytest-xdist each worker takes the services' ports from a range of its own
    (below the kernel's ephemeral range), so two workers never start servers on one port
    (fdo_server.launcher.free_port checks a port, then a server binds it later)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        low = 20000 + 1500 * int(worker[2:])
        os.environ.setdefault("FDO_FREE_PORT_RANGE", f"{low}-{low + 1499}")


_port_range_per_worker()


def vectors_path() -> Path:
    """The vectors folder (it may not exist)."""
    env = os.environ.get("FDO_VECTORS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "vectors"


@pytest.fixture
def vectors_dir() -> Path:
    """The vectors folder; skips the test when it is absent."""
    path = vectors_path()
    if not path.is_dir():
        pytest.skip(f"interop vectors not available: {path}")
    return path


class KeyPool:
    """Private keys by kind, generated on first use and reused for the whole session.

    RSA-3072 generation takes about a second, so tests ask for ``pool.get("rsa3072", 2)``
    instead of generating their own.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[str, int], PrivateKeyT] = {}

    def get(self, kind: str, index: int = 0) -> PrivateKeyT:
        """Key number ``index`` of ``kind`` (the same object on every call)."""
        if (kind, index) not in self._keys:
            self._keys[kind, index] = generate_key(kind)
        return self._keys[kind, index]


@pytest.fixture(scope="session")
def key_pool() -> Iterator[KeyPool]:
    yield KeyPool()


# ---------------------------------------------------------------------------- databases

POSTGRES_URL = os.environ.get("FDO_TEST_POSTGRES_URL")
"""Set (by .ci/run when a server answers) to run the database tests on PostgreSQL too."""


def database_backends() -> list[str]:
    return ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


@pytest.fixture(params=database_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema.

    Parametrised: with ``FDO_TEST_POSTGRES_URL`` set every test using it runs on both.
    Use ``database_factory`` for several databases in one test (one per service).
    """
    with _database(request.param, tmp_path, "db") as url:
        yield url


@pytest.fixture(params=database_backends())
def database_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``make(name) -> url``: fresh databases of one backend, all dropped after the test."""
    opened: list[_database] = []

    def make(name: str) -> str:
        db = _database(request.param, tmp_path, name)
        opened.append(db)
        return db.__enter__()

    yield make
    for db in opened:
        db.__exit__()


def migrated(url: str, *services: str) -> str:
    """``url`` after ``fdo <service> db upgrade`` for each of ``services`` (as deployments do).

    A SQLite file that does not exist yet is made as a copy of one this process migrated
    the same way before (0.1 s of migrations per owner database, some hundred times a
    suite); a PostgreSQL schema is migrated every time."""
    from fdo_server.migrate import upgrade

    target = _new_sqlite_file(url)
    if target is None:
        for service in services:
            upgrade(url, service)
        return url
    template = _MIGRATED.get(services)
    if template is None:
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="fdo-migrated-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = Path(folder) / "template.db"
        for service in services:
            upgrade(f"sqlite:///{template}", service)
        _MIGRATED[services] = template
    import sqlite3

    with (
        contextlib.closing(sqlite3.connect(template)) as source,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)
    return url


#: The SQLite files :func:`migrated` copies, by the services migrated into them.
_MIGRATED: dict[tuple[str, ...], Path] = {}


def _new_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (:func:`fdo_server.sql.parse_url`; not a ``file:`` URI or
    in memory) when it does not exist yet, else None."""
    from fdo_server.sql import parse_url

    target = parse_url(url)
    if target.dialect != "sqlite" or target.uri or target.memory:
        return None
    path = Path(target.database)
    return None if path.exists() else path


def open_database(backend: str, folder: Path, name: str) -> _database:
    """A fresh database (``with open_database(...) as url``) for wider-scoped fixtures."""
    return _database(backend, folder, name)


class _database:
    def __init__(self, backend: str, tmp_path: Path, name: str) -> None:
        self.backend, self.tmp_path, self.name = backend, tmp_path, name
        self.schema: str | None = None

    def __enter__(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp_path / (self.name + '.db')}"
        import secrets
        from urllib.parse import quote

        import sqlalchemy

        assert POSTGRES_URL is not None
        self.schema = f"t_{self.name}_{secrets.token_hex(6)}"
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{self.schema}"'))
        engine.dispose()
        sep = "&" if "?" in POSTGRES_URL else "?"
        return f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={self.schema}')}"

    def __exit__(self, *exc: object) -> None:
        if self.schema is None:
            return
        import sqlalchemy

        assert POSTGRES_URL is not None
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        engine.dispose()


def config_seen(config: Any) -> dict[str, Any]:
    """What a test of ``fdo <service> serve`` checks of the uvicorn configuration that
    :func:`fdo_server.uvserver.run` would serve."""
    return {
        "host": config.host,
        "port": config.port,
        "workers": config.workers,
        "ssl_certfile": config.ssl_certfile,
        "ssl_keyfile": config.ssl_keyfile,
        "proxy_headers": config.proxy_headers,
    }


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the longest files first (:mod:`tests.scheduling`)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from tests.scheduling import LongPolesFirst

    return LongPolesFirst(config, log)
