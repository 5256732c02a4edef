"""``docs/examples/revision-config.json`` is published through ``fdo owner revisions
publish --config`` to a real owner (over its HTTP admin API), which accepts it and keeps
it as written; ``docs/revision-config.md`` names every member and field it may hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fdo_cli.main import app as fdo_app
from fdo_server.auth import Role
from owner.app import create_app
from owner.groups_schemas import FileSpec, RevisionConfig, SshSpec, UnitSpec
from tests.conftest import REPO, KeyPool
from tests.owner.helpers import make_world, token

EXAMPLE = REPO / "docs" / "examples" / "revision-config.json"
DOC = REPO / "docs" / "revision-config.md"
IMAGE = "registry.example/kiosk@sha256:" + "ab" * 32


def test_the_example_config_is_published_and_kept(
    key_pool: KeyPool, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(key_pool, tmp_path)
    app = create_app(world.settings(database_url))
    operator = token(app, Role.OPERATOR)["Authorization"].split()[1]
    with TestClient(app, base_url="http://owner.test") as http:

        def fake_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
            kwargs.pop("timeout", None)
            response: httpx.Response = http.request(method, url, **kwargs)
            return response

        monkeypatch.setattr(httpx, "request", fake_request)
        monkeypatch.setenv("FDO_OWNER_URL", "http://owner.test")
        monkeypatch.setenv("FDO_OWNER_TOKEN", operator)
        runner = CliRunner()

        def run(*args: str, code: int = 0) -> str:
            result = runner.invoke(fdo_app, ["owner", *args])
            assert result.exit_code == code, result.output
            return result.output

        run("groups", "create", "kiosks", "--model", "kiosk-*")
        out = run("revisions", "publish", "kiosks", "--image", IMAGE, "--config", str(EXAMPLE))
        assert "group kiosks: revision 1 published" in out
        shown = json.loads(run("groups", "show", "kiosks", "-o", "json"))
        assert shown["revision"]["config"] == RevisionConfig.model_validate(
            json.loads(EXAMPLE.read_text())
        ).model_dump(mode="json", exclude_none=True)

        # A misspelt member is refused, by name, one line per field.
        wrong = tmp_path / "wrong.json"
        wrong.write_text(json.dumps({"unit": []}))
        refused = run("revisions", "publish", "kiosks", "--image", IMAGE, "--config", str(wrong), code=1)
        assert refused.startswith("error: HTTP 422: the request is invalid:\n  config.unit: Extra inputs")


def test_the_doc_names_every_member_and_field() -> None:
    text = DOC.read_text()
    example = json.loads(EXAMPLE.read_text())
    assert set(example) == set(RevisionConfig.model_fields)  # the example shows every member
    for model in (RevisionConfig, FileSpec, UnitSpec, SshSpec):
        for name in model.model_fields:
            assert f"`{name}`" in text, (model.__name__, name)
