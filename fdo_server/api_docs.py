"""What the services' OpenAPI says about their admin APIs, and the pages that show it.

* :class:`ApiError`: the one error body every refusal has (``{"detail": ...}``: a
  sentence, or a list of field problems for a 422), and :func:`errors`, the
  ``responses=`` of a route naming the refusals it can answer;
* :func:`document`: run when ``/openapi.json`` is first built, it declares every
  route's 422 with :class:`ApiError`, adds to every operation guarded by an admin token
  (:func:`fdo_server.auth.require`, whose security requirement names its role) its 401,
  and its 403 when it needs more than the viewer role; and adds the schemas of bodies a route validates
  itself (:data:`BODY_SCHEMAS`, named in the route's ``openapi_extra``);
* :func:`install_docs`: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their scripts
  and styles served by the service itself under ``/docs/assets/`` (from the
  ``fastapi-offline`` package, MIT), never from a CDN, with a Content-Security-Policy
  allowing only the service's own scripts. All of these are on the admin plane
  (:mod:`fdo_server.planes`: only the FDO messages and declared device routes are not).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

#: The OpenAPI name of the admin bearer token scheme (:mod:`fdo_server.auth`).
ADMIN_SCHEME = "AdminToken"
#: Where the documentation pages load their scripts and styles from.
ASSETS = "/docs/assets"
#: The asset files served (name -> media type), from the ``fastapi_offline`` package.
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


class FieldProblem(BaseModel):
    """One problem with a request field (a 422's ``detail`` list)."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str | None = None


class ApiError(BaseModel):
    """Every error answer: a sentence, or the problems of each invalid field (422)."""

    detail: str | list[FieldProblem]


_MEANING = {
    400: "The request is malformed (e.g. not a GUID).",
    401: "No bearer token, or an unknown or revoked one (with ``WWW-Authenticate: Bearer``).",
    403: "The token's role is not enough for this operation.",
    404: "What the path names does not exist.",
    409: "The request conflicts with the current state.",
    413: "The request body is larger than this route allows.",
    422: "The request does not validate (the body never repeats its input where it may hold secrets).",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` declaring the refusals ``codes`` with the shared :class:`ApiError`."""
    return {code: {"model": ApiError, "description": _MEANING[code]} for code in codes}


ErrorModel: type[BaseModel] = ApiError

#: Schemas of request bodies a route validates itself (to answer a 422 that never echoes
#: its input), so ``openapi_extra`` can name them as ``#/components/schemas/<name>``.
BODY_SCHEMAS: list[type[BaseModel]] = []


def json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """``openapi_extra`` of a route reading a ``model`` JSON body itself."""
    if model not in BODY_SCHEMAS:
        BODY_SCHEMAS.append(model)
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


_VALIDATION_REF = "#/components/schemas/HTTPValidationError"
_ERROR_REF = {"$ref": "#/components/schemas/ApiError"}


def _error(code: int, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _MEANING[code],
        "content": {"application/json": {"schema": dict(_ERROR_REF)}},
    }
    if headers:
        out["headers"] = headers
    return out


_UNAUTHORIZED = _error(401, {"WWW-Authenticate": {"description": "``Bearer``", "schema": {"type": "string"}}})


def _complete(operation: dict[str, Any]) -> None:
    """FastAPI's 422 model replaced by :class:`ApiError`; the admin token's answers added."""
    for media in operation.get("requestBody", {}).get("content", {}).values():
        ref = media.get("schema", {}).get("$ref")
        if ref is not None:  # a body named in openapi_extra, over FastAPI's untyped one
            media["schema"] = {"$ref": ref}
    responses: dict[str, Any] = operation.setdefault("responses", {})
    invalid = responses.get("422", {}).get("content", {}).get("application/json", {})
    if invalid.get("schema") == {"$ref": _VALIDATION_REF}:
        responses["422"] = _error(422)
    roles = [role for need in operation.get("security", []) for role in need.get(ADMIN_SCHEME, [])]
    if roles:
        responses.setdefault("401", _UNAUTHORIZED)
        if any(role != "viewer" for role in roles):
            responses.setdefault("403", _error(403))
        needs = f"Needs an admin token with the {roles[0]} role or above."
        operation["description"] = (operation.get("description", "").rstrip() + "\n\n" + needs).lstrip()


def document(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's ``openapi`` function: FastAPI's schema completed (see the module doc)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    _complete(operation)
            _, defs = models_json_schema(
                [(model, "validation") for model in [ErrorModel, *BODY_SCHEMAS]],
                ref_template="#/components/schemas/{model}",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            if _VALIDATION_REF not in json.dumps(schema["paths"]):
                components.pop("HTTPValidationError", None)
                components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


# ---------------------------------------------------------------------------- pages


def _csp(html: str) -> str:
    """Only this service's scripts (and the page's own inline script, by hash)."""
    scripts = ["'self'"] + [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    ]
    return (
        "default-src 'none'; "
        f"script-src {' '.join(scripts)}; "
        "style-src 'self' 'unsafe-inline'; "  # both UIs set styles from their scripts
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _page(response: HTMLResponse) -> HTMLResponse:
    html = bytes(response.body).decode()
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": _csp(html),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def install_docs(app: FastAPI) -> None:
    """``/docs``, ``/redoc`` and their assets on ``app`` (made with ``docs_url=None`` and
    ``redoc_url=None``); the assets are read once, at the first request for each."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return _page(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{app.title} - API",
                swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{ASSETS}/favicon.png",
                oauth2_redirect_url=None,
            )
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _page(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{app.title} - API",
                redoc_js_url=f"{ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )

    for name, media_type in ASSET_TYPES.items():
        app.add_api_route(ASSETS + "/" + name, _asset(name, media_type), include_in_schema=False)


def _asset(name: str, media_type: str) -> Callable[[], Response]:
    """The route serving asset ``name`` (read at its first request, then kept)."""
    body: list[bytes] = []

    def asset() -> Response:
        if not body:
            body.append(resources.files("fastapi_offline").joinpath("static", name).read_bytes())
        return Response(
            body[0],
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )

    return asset


def pem_answer(media_type: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route answering one voucher as PEM text."""
    return {
        200: {
            "description": "The voucher as PEM text (``-----BEGIN OWNERSHIP VOUCHER-----``), "
            "as an attachment named after its GUID.",
            "content": {media_type: {"schema": {"type": "string"}}},
        }
    }
