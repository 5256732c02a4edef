"""The three services' admin APIs fed what their OpenAPI schemas allow, and what they do not.

schemathesis calls every operation of each service's ``/openapi.json`` (the one FastAPI
serves at ``/docs``) with generated path, query and body values, valid and invalid, as an
admin, on SQLite and (with ``FDO_TEST_POSTGRES_URL``) PostgreSQL. Bad input is normal
input: whatever is sent, the answer is a 2xx or a 4xx, never a 5xx from an unhandled
exception. ``FDO_TEST_FUZZ_EXAMPLES`` (default 25) sets the examples per operation.

What it found, each now a test of its own below: an ``offset`` beyond the SQL BIGINT
range and a token id or revision number beyond INTEGER overflowed the database (500s;
:mod:`fdo_server.params` bounds them, 422); a NUL in a token name, which PostgreSQL
text cannot hold (500; a value the database refuses is now a 422, from
:func:`fdo_server.service.service_app`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from fdo_server.auth import Role, create_token
from fdo_server.db import unit_of_work
from fdo_server.params import MAX_INT, MAX_OFFSET
from manufacturer.app import create_app as manufacturer_app
from owner.app import create_app as owner_app
from rendezvous.app import create_app as rendezvous_app
from rendezvous.settings import RendezvousSettings
from tests.conftest import KeyPool, migrated
from tests.manufacturer.test_manufacturer import make_settings
from tests.owner.helpers import make_world

EXAMPLES = int(os.environ.get("FDO_TEST_FUZZ_EXAMPLES", "25"))
ALL_CHECKS = list(HealthCheck)


def make_app(service: str, url: str, pool: KeyPool, folder: Path) -> FastAPI:
    """A ``service`` app on database ``url`` (migrated here), with keys from ``pool``."""
    if service == "manufacturer":
        keys = {"ec256": pool.get("ec256", 1), "ca": pool.get("ec384", 1)}
        return manufacturer_app(make_settings(folder, url, keys))
    if service == "rendezvous":
        return rendezvous_app(RendezvousSettings(database_url=migrated(url, "rendezvous")))
    return owner_app(make_world(pool, folder).settings(url))


@dataclass(frozen=True)
class Admin:
    service: str
    app: FastAPI
    headers: dict[str, str]

    def call(self, method: str, path: str, **kwargs: Any) -> int:
        with TestClient(self.app, base_url="http://testserver") as http:
            status: int = http.request(method, path, headers=self.headers, **kwargs).status_code
            return status


@pytest.fixture(params=["manufacturer", "rendezvous", "owner"])
def admin(
    request: pytest.FixtureRequest,
    database_factory: Callable[[str], str],
    key_pool: KeyPool,
    tmp_path: Path,
) -> Admin:
    """A service's app and an admin token for it."""
    service: str = request.param
    app = make_app(service, database_factory(service), key_pool, tmp_path)
    with unit_of_work(app.state.engine) as db:
        token = create_token(db, "fuzz", Role.ADMIN)
    return Admin(service, app, {"Authorization": f"Bearer {token}"})


LISTS = {
    "manufacturer": "/api/v1/vouchers",
    "rendezvous": "/api/v1/registrations",
    "owner": "/api/v1/vouchers",
}


@pytest.mark.parametrize(
    ("offset", "limit", "status"),
    [
        (0, 1, 200),
        (MAX_OFFSET, 1000, 200),
        (MAX_OFFSET + 1, 1, 422),  # was a 500: the driver overflowed
        (-1, 1, 422),
        (0, 0, 422),
        (0, 1001, 422),
    ],
)
def test_every_list_pages_within_the_same_bounds(admin: Admin, offset: int, limit: int, status: int) -> None:
    assert admin.call("GET", LISTS[admin.service], params={"offset": offset, "limit": limit}) == status


@pytest.mark.parametrize("admin", ["owner"], indirect=True)  # the only one naming rows by number
def test_row_numbers_in_paths_are_sql_integers(admin: Admin) -> None:
    assert admin.call("DELETE", f"/api/v1/tokens/{MAX_INT + 1}") == 422  # was a 500 on PostgreSQL
    assert admin.call("DELETE", f"/api/v1/tokens/{MAX_INT}") == 404
    assert admin.call("POST", "/api/v1/groups", json={"name": "g"}) == 201
    assert admin.call("GET", f"/api/v1/groups/g/revisions/{MAX_INT + 1}") == 422
    assert admin.call("GET", "/api/v1/groups/g/revisions/0") == 422
    assert admin.call("GET", f"/api/v1/groups/g/revisions/{MAX_INT}") == 404


@pytest.mark.parametrize("admin", ["owner"], indirect=True)  # its token names are the example
def test_a_value_the_database_refuses_is_a_422(admin: Admin) -> None:
    status = admin.call("POST", "/api/v1/tokens", json={"name": "a\x00b", "role": "viewer"})
    # SQLite stores a NUL; PostgreSQL text cannot hold one (was a 500).
    assert status == (422 if admin.app.state.engine.dialect.name == "postgresql" else 201)
    assert admin.call("GET", "/api/v1/tokens") == 200  # the failed transaction left nothing behind


def test_no_input_makes_an_admin_api_fail(admin: Admin) -> None:
    headers = admin.headers
    schema = schemathesis.openapi.from_asgi("/openapi.json", admin.app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 2  # every service has admin operations

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=ALL_CHECKS, database=None)
        def never_a_5xx(case: schemathesis.Case[Any]) -> None:
            response = case.call(headers=headers)
            what = (case.method, case.formatted_path, case.query, response.text[:300])
            assert response.status_code < 500, what

        never_a_5xx()
