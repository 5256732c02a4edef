"""The three services' OpenAPI says what their admin APIs are, and ``/docs`` works offline.

Every admin operation (``/api/v1/...`` outside the device plane) must have: a typed 2xx
answer (a ``$ref`` or a schema with a type, never ``{}``), a summary and a description,
its 401 and (when it needs more than a viewer) its 403 with the one shared error model,
the admin bearer scheme naming its role, and a typed request body where it takes one.
``/docs`` and ``/redoc`` must load only the service's own assets, which must answer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fdo_server.api_docs import ADMIN_SCHEME, ASSETS
from fdo_server.launcher import free_port
from fdo_server.planes import PlaneSplit, device_paths
from tests.conftest import KeyPool
from tests.test_admin_api_fuzz import make_app
from tests.threaded_server import serving

SERVICES = ("manufacturer", "rendezvous", "owner")
ERROR_REF = "#/components/schemas/ApiError"
ROLES = ("viewer", "operator", "admin")


@pytest.fixture(scope="module")
def apps(key_pool: KeyPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FastAPI]]:
    made: dict[str, FastAPI] = {}
    for service in SERVICES:
        folder = tmp_path_factory.mktemp(service)
        made[service] = make_app(service, f"sqlite:///{folder / 'db.sqlite'}", key_pool, folder)
    yield made
    for app in made.values():
        app.state.database.dispose()


def admin_operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    schema = app.openapi()
    device = device_paths(app)
    return [
        (method.upper(), path, operation)
        for path, item in schema["paths"].items()
        if path.startswith("/api/v1/") and path not in device
        for method, operation in item.items()
    ]


def typed(schema: dict[str, Any]) -> bool:
    """A schema that says something: a reference, a scalar type, an array of typed items,
    an object with properties or typed values, or a union of typed schemas (never ``{}``,
    nor a free-form object such as a bare ``dict[str, Any]`` gives)."""
    if "$ref" in schema:
        return True
    options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if options:
        return all(typed(option) for option in options)
    kind = schema.get("type")
    if kind == "object":
        values = schema.get("additionalProperties")
        return bool(schema.get("properties")) or (isinstance(values, dict) and typed(values))
    if kind == "array":
        return typed(schema.get("items", {}))
    return kind is not None


def content_typed(response: dict[str, Any]) -> bool:
    content = response.get("content", {})
    return bool(content) and all(typed(media.get("schema", {})) for media in content.values())


@pytest.mark.parametrize("service", SERVICES)
def test_every_admin_operation_is_fully_described(apps: dict[str, FastAPI], service: str) -> None:
    app = apps[service]
    operations = admin_operations(app)
    assert len(operations) >= 3
    schemes = app.openapi()["components"]["securitySchemes"]
    assert schemes[ADMIN_SCHEME] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "fdo_<random>",
        "description": schemes[ADMIN_SCHEME]["description"],
    }
    problems: list[str] = []
    for method, path, op in operations:
        where = f"{service} {method} {path}"
        responses: dict[str, Any] = op["responses"]
        ok = [code for code in responses if code.startswith("2")]
        if not ok:
            problems.append(f"{where}: no 2xx answer")
        for code in ok:
            if code != "204" and not content_typed(responses[code]):
                problems.append(f"{where}: {code} answer untyped: {responses[code]}")
        said = op.get("description", "").partition("Needs an admin token")[0].strip()
        if not op.get("summary") or not said:
            problems.append(f"{where}: no summary or no description of its own")
        security = op.get("security", [])
        roles = [role for requirement in security for role in requirement.get(ADMIN_SCHEME, [])]
        if len(security) != 1 or len(roles) != 1 or roles[0] not in ROLES:
            problems.append(f"{where}: security {security}: want the admin bearer scheme and one role")
        needed = ["401"] + (["403"] if roles and roles[0] != "viewer" else [])
        for code in needed + [c for c in responses if c.startswith("4")]:
            schema = responses.get(code, {}).get("content", {}).get("application/json", {}).get("schema")
            if schema != {"$ref": ERROR_REF} and not (code == "422" and path == "/api/v1/vouchers"):
                problems.append(f"{where}: {code} answer is not the shared error model: {schema}")
        if roles and roles[0] == "viewer" and "403" in responses:
            problems.append(f"{where}: 403 declared but any token may call it")
        if method in ("POST", "PUT", "PATCH") and "requestBody" in op:
            body = op["requestBody"]
            if not content_typed(body):
                problems.append(f"{where}: request body untyped: {body}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("service", "method", "path"),
    [
        ("owner", "POST", "/api/v1/groups/{name}/revisions"),
        ("owner", "PUT", "/api/v1/devices/{guid}/labels"),
        ("owner", "POST", "/api/v1/groups"),
        ("owner", "POST", "/api/v1/tokens"),
        ("owner", "POST", "/api/v1/groups/{name}/rollouts"),
        ("owner", "POST", "/api/v1/vouchers/extend"),
        ("manufacturer", "POST", "/api/v1/vouchers/extend"),
    ],
)
def test_bodies_that_carry_data_are_declared(
    apps: dict[str, FastAPI], service: str, method: str, path: str
) -> None:
    operation = apps[service].openapi()["paths"][path][method.lower()]
    assert operation["requestBody"]["required"] is True
    (schema,) = [media["schema"] for media in operation["requestBody"]["content"].values()]
    assert schema.get("$ref", "").startswith("#/components/schemas/")
    name = schema["$ref"].rpartition("/")[2]
    assert name in apps[service].openapi()["components"]["schemas"]


def test_the_revision_body_is_the_revision_model(apps: dict[str, FastAPI]) -> None:
    schema = apps["owner"].openapi()
    body = schema["paths"]["/api/v1/groups/{name}/revisions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RevisionIn"}
    revision = schema["components"]["schemas"]["RevisionIn"]
    assert {"image", "transport", "apply_mode", "config", "registry_auth", "secret_files"} <= set(
        revision["properties"]
    )
    assert revision["properties"]["config"] == {"$ref": "#/components/schemas/RevisionConfig"}
    for name in ("RevisionConfig", "FileSpec", "UnitSpec", "SshSpec"):
        assert name in schema["components"]["schemas"]


def test_the_voucher_import_body_is_pem_text_or_cbor(apps: dict[str, FastAPI]) -> None:
    operation = apps["owner"].openapi()["paths"]["/api/v1/vouchers"]["post"]
    content = operation["requestBody"]["content"]
    assert content["application/x-pem-file"]["schema"] == {"type": "string"}
    assert content["text/plain"]["schema"] == {"type": "string"}
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    assert set(operation["responses"]) >= {"200", "401", "403", "413", "422"}


def test_a_401_still_says_what_it_said(apps: dict[str, FastAPI]) -> None:
    with TestClient(apps["owner"]) as http:
        for headers, detail in (
            ({}, "missing bearer token"),
            ({"Authorization": "Basic abc"}, "missing bearer token"),
            ({"Authorization": "Bearer "}, "missing bearer token"),
            ({"Authorization": "Bearer fdo_nope"}, "invalid or revoked token"),
        ):
            answer = http.get("/api/v1/groups", headers=headers)
            assert answer.status_code == 401
            assert answer.json() == {"detail": detail}
            assert answer.headers["www-authenticate"] == "Bearer"


LOCAL = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


@pytest.mark.parametrize("service", SERVICES)
def test_docs_pages_use_only_the_services_own_assets(apps: dict[str, FastAPI], service: str) -> None:
    with TestClient(apps[service]) as http:
        for page in ("/docs", "/redoc"):
            answer = http.get(page)
            assert answer.status_code == 200, page
            urls = LOCAL.findall(answer.text)
            assert urls, page
            assert "http" not in answer.text.replace("http-equiv", ""), answer.text
            for url in urls:
                assert url.startswith(ASSETS + "/"), (page, url)
                asset = http.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
                assert asset.headers["content-type"].split(";")[0] in (
                    "text/javascript",
                    "text/css",
                    "image/png",
                )
            policy = answer.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert "http" not in policy
        assert http.get("/openapi.json").status_code == 200
        assert http.get(ASSETS + "/../openapi.json").status_code == 404
        assert http.get(ASSETS + "/swagger-ui.js").status_code == 404


def test_docs_and_their_assets_are_on_the_admin_plane(apps: dict[str, FastAPI]) -> None:
    app = apps["owner"]
    split = PlaneSplit(app, admin_port=9999)
    for path in ("/docs", "/redoc", "/openapi.json", ASSETS + "/swagger-ui-bundle.js"):
        with TestClient(split, base_url="http://testserver:9999") as admin:
            assert admin.get(path).status_code == 200, path
        with TestClient(split, base_url="http://testserver:80") as device:
            answer = device.get(path)
            assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}, path


def test_device_routes_declare_the_device_credential(apps: dict[str, FastAPI]) -> None:
    app = apps["owner"]
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["DeviceCredential"]["scheme"] == "bearer"
    device = device_paths(app)
    assert {"/device/v1/checkin", "/device/v1/report", "/api/v1/report"} <= device
    for path in device:
        operation = schema["paths"][path]["post"]
        assert operation["security"] == [{"DeviceCredential": []}], path
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
        assert typed(operation["responses"]["200"]["content"]["application/json"]["schema"]), path
        assert typed(operation["requestBody"]["content"]["application/json"]["schema"]), path


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine (apt-get install chromium)")
def test_docs_render_in_a_browser_under_their_csp(apps: dict[str, FastAPI]) -> None:
    """Swagger UI lists the operations and ReDoc renders, with only the service's files."""
    assert BROWSER is not None
    port = free_port()
    config = uvicorn.Config(apps["owner"], host="127.0.0.1", port=port, log_level="warning")
    with serving(config, timeout=20):
        operations = len(admin_operations(apps["owner"]))
        for page, marker in (("/docs", "opblock-summary-path"), ("/redoc", "api-content")):
            dom = subprocess.run(  # noqa: S603 - the browser found on PATH, fixed arguments
                [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
                + ["--dump-dom", f"http://127.0.0.1:{port}{page}"],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            assert marker in dom, page
            if page == "/docs":
                assert dom.count('class="opblock-summary-path"') >= operations
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=10).status_code == 200
