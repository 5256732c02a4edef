"""The protocol core and the device CLI import without the server stack; a service
that starts on a database at head imports no schema tools; a worker that serves only the
device plane imports no admin stack.

Each check runs in a fresh interpreter, so modules other tests imported do not hide a
stray import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fdo_server.handed import HANDED_ENV, hand_over
from fdo_server.planes import PLANE_ENV
from tests.conftest import POSTGRES_URL, REPO, open_database

SERVER_STACK = ("fastapi", "starlette", "sqlalchemy", "sqlmodel", "httpx", "uvicorn")

_PROBE = """
import importlib, json, pkgutil, sys
imported = []
for name in {roots!r}:
    module = importlib.import_module(name)
    imported.append(name)
    if {walk!r} and hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, name + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
stack = {stack!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in stack)
print(json.dumps({{"imported": imported, "loaded": loaded}}))
"""


def _probe(roots: list[str], *, walk: bool) -> dict[str, list[str]]:
    code = _PROBE.format(roots=roots, walk=walk, stack=SERVER_STACK)
    result = subprocess.run(  # noqa: S603 - fixed interpreter and code
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_fdo_core_imports_without_server_stack() -> None:
    out = _probe(["fdo"], walk=True)
    assert "fdo.to2.owner" in out["imported"] and "fdo.serviceinfo.device" in out["imported"]
    assert out["loaded"] == []


#: The FDO message path: the bare ASGI endpoint, the dispatcher and its responses, the
#: per-message metrics and log line, the edge guard (rate limits, networks).
FDO_PATH = ["transport.server", "transport.dispatch", "fdo_server.metrics", "fdo_server.ratelimit"]
#: What it does without: the web framework and pydantic (FastAPI builds the rest of the
#: app), SQLAlchemy (the session store and the services' data are behind the dispatcher's
#: ``scope`` and handlers), and anyio (the thread hand-off, loaded on first use).
NOT_ON_FDO_PATH = ("fastapi", "starlette", "pydantic", "pydantic_settings", "sqlalchemy", "sqlmodel", "anyio")


def test_the_fdo_message_path_imports_no_web_framework_pydantic_or_sqlalchemy() -> None:
    """A worker serving only devices needs none of them for an FDO message: the first step
    towards a device-plane worker that loads none of them (docs/benchmarks.md, issue 15)."""
    code = _PROBE.format(roots=FDO_PATH, walk=False, stack=NOT_ON_FDO_PATH)
    result = subprocess.run(  # noqa: S603 - fixed interpreter and code
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["imported"] == FDO_PATH
    assert out["loaded"] == []


def test_the_owners_to0_scheduler_imports_no_sqlalchemy() -> None:
    """The TO0 scheduler runs in the owner's device-plane workers: its statements run on
    the driver, so importing it loads neither SQLAlchemy nor SQLModel's tables."""
    code = _PROBE.format(roots=["owner.to0"], walk=False, stack=("sqlalchemy", "sqlmodel", "owner"))
    result = subprocess.run(  # noqa: S603 - fixed interpreter and code
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "owner.to0" in out["loaded"]
    assert [m for m in out["loaded"] if m.split(".")[0] != "owner"] == []
    assert "owner.tables" not in out["loaded"]


def test_device_cli_imports_without_server_stack() -> None:
    out = _probe(["fdo_cli.main"], walk=False)
    assert out["imported"] == ["fdo_cli.main"]
    assert out["loaded"] == []


def test_the_rollout_runner_imports_no_sqlalchemy_sqlmodel_or_pydantic() -> None:
    """The owner's rollout runner (a thread of every owner worker) and everything it
    imports run their statements on the driver (fdo_server.sql)."""
    stack = ("sqlalchemy", "sqlmodel", "pydantic", "pydantic_core")
    code = _PROBE.format(roots=["owner.rollout_runner"], walk=False, stack=stack)
    result = subprocess.run(  # noqa: S603 - fixed interpreter and code
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["imported"] == ["owner.rollout_runner"]
    assert out["loaded"] == []


_SERVICE_PROBE = """
import json, os, sys
os.environ.update(json.loads(sys.argv[2]))
__import__(sys.argv[1] + ".app").app.app_from_env()
print(json.dumps(sorted(sys.modules)))
"""


def _service_env(service: str, work: Path, url: str | None = None) -> dict[str, str]:
    """The settings of ``service`` on the database at ``url`` (default: a SQLite one in
    ``work``), brought to head, with keys made in ``work``."""
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.serialization import Encoding

    from fdo.crypto import generate_key, make_ca, private_key_to_pem
    from fdo_server.migrate import upgrade

    url = url or f"sqlite:///{work / (service + '.db')}"
    upgrade(url, service)  # here, as `fdo ... db upgrade` would
    key = work / "key.pem"
    key.write_bytes(private_key_to_pem(generate_key("ec256")))
    env = {f"FDO_{service.upper()}_DATABASE_URL": url}
    if service == "owner":
        env.update(FDO_OWNER_KEYS=json.dumps({"ec256": str(key)}), FDO_OWNER_TO2_URLS='["http://owner:8043"]')
    if service == "manufacturer":
        ca = generate_key("ec384")
        (work / "ca.key").write_bytes(private_key_to_pem(ca))
        (work / "ca.pem").write_bytes(make_ca(ca, "test CA", datetime.now(UTC)).public_bytes(Encoding.PEM))
        env.update(
            FDO_MANUFACTURER_KEYS=json.dumps({"ec256": str(key)}),
            FDO_MANUFACTURER_DEVICE_CA_KEY=str(work / "ca.key"),
            FDO_MANUFACTURER_DEVICE_CA_CERT=str(work / "ca.pem"),
            FDO_MANUFACTURER_RENDEZVOUS="http://rv:8041",
        )
    return env


def _service_modules(service: str, tmp_path: Path, *plane: str, url: str | None = None) -> set[str]:
    """Every module a ``service`` process has loaded once its app is built (``plane``: the
    one it serves, as ``serve --admin-port`` sets it, a device-plane process with the
    settings serve hands it; none: both), on a database at head (``url``, default SQLite)."""
    env = _service_env(service, tmp_path, url)
    if plane:  # as serve --admin-port runs it
        env.update({f"FDO_{service.upper()}_ADMIN_PORT": "8099", PLANE_ENV: plane[0]})
    if plane == ("device",):  # serve --admin-process hands the device workers their settings
        env[HANDED_ENV] = _handed(service, env)
    result = subprocess.run(  # noqa: S603 - fixed interpreter and code
        [sys.executable, "-c", _SERVICE_PROBE, service, json.dumps(env)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def _handed(service: str, env: dict[str, str]) -> str:
    """What serve hands the device workers of ``service`` under ``env``."""
    import importlib
    from unittest import mock

    from fdo_server.config import load_settings, settings_values

    with mock.patch.dict("os.environ", env):
        settings = load_settings(importlib.import_module(f"{service}.app").settings_class())
    handed = hand_over(service, settings_values(settings))
    assert handed is not None
    return handed


@pytest.mark.parametrize("service", ["manufacturer", "rendezvous", "owner"])
def test_a_service_on_a_database_at_head_never_imports_what_it_does_not_use(
    service: str, tmp_path: Path
) -> None:
    """Alembic (10 MB, 50 modules) is for migrating; a worker that starts on a database at
    head checks it with one SELECT (fdo_server.migrate.require_current). On SQLite the
    PostgreSQL driver (9 MB) is not loaded either."""
    loaded = _service_modules(service, tmp_path)
    assert {m.split(".")[0] for m in loaded} & NEVER == set()


#: What only the admin plane uses: the admin API routers (and their schemas), the owner's
#: status page and its templates. A process that serves the device plane alone (``serve
#: --admin-port`` runs the admin plane in a process of its own) never imports them.
ADMIN_STACK = {
    "manufacturer": {"manufacturer.admin_api"},
    "rendezvous": {"rendezvous.admin_api"},
    "owner": {
        "owner.admin_api",
        "owner.admin_groups",
        "owner.admin_checkin",
        "owner.rollouts_api",
        "owner.web",
        "owner.web_admin",
        "owner.web_devices",
        "owner.web_groups",
        "owner.web_rollouts",
        "owner.web_session",
        "jinja2",
    },
}
#: What no service process imports, whatever plane it serves: schema tools, and the
#: PostgreSQL driver on SQLite.
NEVER = {"alembic", "mako", "psycopg"}


#: The web framework: a device-plane worker serves without it (fdo_server.device_app).
WEB = {"fastapi", "starlette"}
#: SQLAlchemy and pydantic: a device-plane worker runs its statements on the driver
#: (fdo_server.sql) with the settings serve handed it (fdo_server.handed); the owner's
#: check-in and report bodies are read by owner.device_body, not pydantic models.
LIBRARIES = {"sqlmodel", "sqlalchemy", "pydantic", "pydantic_settings", "pydantic_core"}
#: prometheus_client's exposition (``/metrics``, served by the admin plane) and the
#: standard library it brings: a device-plane worker only writes metric values
#: (fdo_server.metrics loads the package's submodules without its ``__init__``).
EXPOSITION = {"prometheus_client.exposition", "http.server", "urllib.request", "wsgiref"}


@pytest.mark.parametrize("service", ["manufacturer", "rendezvous", "owner"])
def test_a_device_plane_worker_does_not_import_the_admin_stack(service: str, tmp_path: Path) -> None:
    device = _service_modules(service, tmp_path, "device")
    assert ADMIN_STACK[service] & device == set()
    assert NEVER & {m.split(".")[0] for m in device} == set()
    assert WEB & {m.split(".")[0] for m in device} == set()
    assert LIBRARIES & {m.split(".")[0] for m in device} == set()
    assert EXPOSITION & device == set()
    assert "prometheus_client.metrics" in device
    # The admin plane's process does import them: the check above is not vacuous.
    admin = _service_modules(service, tmp_path, "admin")
    assert ADMIN_STACK[service] <= admin
    assert "prometheus_client.exposition" in admin


@pytest.mark.skipif(not POSTGRES_URL, reason="PostgreSQL only")
@pytest.mark.parametrize("service", ["manufacturer", "rendezvous", "owner"])
def test_a_device_plane_worker_on_postgresql_does_not_import_sqlite3(service: str, tmp_path: Path) -> None:
    """The SQLite driver (0.9 MB with its library) is loaded where a SQLite database is
    opened, never by a worker on PostgreSQL."""
    with open_database("postgresql", tmp_path, "db") as url:
        device = _service_modules(service, tmp_path, "device", url=url)
    assert {"sqlite3", "_sqlite3"} & device == set()
    assert "psycopg" in device  # it does load the driver it runs on


#: What the owner's device endpoint (check-in and report) does without (issue 15).
NOT_ON_DEVICE_ENDPOINT = ("pydantic", "pydantic_core", "sqlalchemy", "sqlmodel")
#: Modules on the endpoint's imports that may still load them: an import of them is
#: allowed only on the way through one of these. None is left (owner.to0 and the
#: rollout runner run on the driver; owner.desired imports the ORM in set_desired
#: only), so nothing may load them; a module that cannot avoid it yet is named here.
STILL_LOADING: set[str] = set()

_IMPORTERS_PROBE = """
import builtins, importlib, json, sys, traceback
stack = {stack!r}
chains = []
real_import = builtins.__import__

def watched(name, globals=None, locals=None, fromlist=(), level=0):
    # Every import statement that names a package of ``stack`` (outside those packages),
    # with the modules being imported at the time, outermost first.
    importer = (globals or {{}}).get("__name__", "")
    if level == 0 and name.partition(".")[0] in stack and importer.partition(".")[0] not in stack:
        frames = traceback.extract_stack()[:-1]
        chains.append([f.filename for f in frames if f.name == "<module>" and not f.filename.startswith("<")])
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = watched
importlib.import_module({root!r})
loaded = sorted({{m.split(".")[0] for m in sys.modules if m.split(".")[0] in stack}})
print(json.dumps({{"chains": chains, "loaded": loaded}}))
"""


def test_the_device_endpoint_imports_no_pydantic_or_sqlalchemy() -> None:
    """``owner.checkin_endpoint`` (and so the device API, its body validation and its
    statements) imports no pydantic and no SQLAlchemy: every import of them on its way
    comes through a module of :data:`STILL_LOADING`, and none loads once that is empty."""
    code = _IMPORTERS_PROBE.format(stack=NOT_ON_DEVICE_ENDPOINT, root="owner.checkin_endpoint")
    result = subprocess.run(  # noqa: S603 - fixed interpreter and code
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for chain in out["chains"]:
        mine = [
            Path(path).resolve().relative_to(REPO).as_posix() for path in chain if path.startswith(str(REPO))
        ]
        assert STILL_LOADING & set(mine), mine
    if not STILL_LOADING:
        assert out["loaded"] == []
