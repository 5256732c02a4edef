"""``fdo owner``: init, token create, to0 run-once, vouchers import/list over HTTP (mocked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fdo.voucher import vouchers_to_pem
from fdo_cli.main import app as fdo_app
from owner.app import create_app
from tests.conftest import KeyPool
from tests.owner.helpers import make_world


def test_init_token_and_import(
    key_pool: KeyPool, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    result = runner.invoke(fdo_app, ["owner", "init", "--dir", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    keys_line = next(line for line in result.output.splitlines() if line.startswith("FDO_OWNER_KEYS="))
    keys = json.loads(keys_line.split("=", 1)[1].strip("'"))
    assert sorted(keys) == ["ec256", "ec384", "rsa2048", "rsa3072"]

    world = make_world(key_pool, tmp_path)
    monkeypatch.setenv("FDO_OWNER_DATABASE_URL", database_url)
    monkeypatch.setenv("FDO_OWNER_KEYS", json.dumps({k: str(v) for k, v in world.key_files.items()}))
    monkeypatch.setenv("FDO_OWNER_TO2_URLS", '["http://owner.example:8043"]')
    monkeypatch.setenv("FDO_OWNER_TO0_ENABLED", "false")
    result = runner.invoke(fdo_app, ["owner", "db", "upgrade"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(fdo_app, ["owner", "token", "create", "--name", "ops", "--role", "operator"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()

    http = TestClient(create_app(), base_url="http://owner.test")

    def fake_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.pop("timeout", None)
        response: httpx.Response = http.request(method, url, **kwargs)
        return response

    monkeypatch.setattr(httpx, "request", fake_request)
    pem = tmp_path / "v.pem"
    pem.write_text(vouchers_to_pem([world.device()[1], world.device()[1]]))
    args = ["--url", "http://owner.test", "--token", token]
    result = runner.invoke(fdo_app, ["owner", "vouchers", "import", str(pem), *args])
    assert result.exit_code == 0, result.output
    assert result.output.count(": imported") == 2
    result = runner.invoke(fdo_app, ["owner", "vouchers", "import", str(pem), *args])
    assert result.exit_code == 1 and result.output.count("refused: duplicate") == 2
    result = runner.invoke(fdo_app, ["owner", "vouchers", "list", *args])
    assert result.exit_code == 0 and result.output.count("not registered") == 2
    result = runner.invoke(
        fdo_app, ["owner", "vouchers", "list", "--url", "http://owner.test", "--token", "x"]
    )
    assert result.exit_code == 1

    # No rendezvous answers at rv.example: both attempts fail and are rescheduled.
    monkeypatch.setattr("owner.to0.default_http_factory", lambda url: _unreachable(url))
    result = runner.invoke(fdo_app, ["owner", "to0", "run-once"])
    assert result.exit_code == 0, result.output
    assert "2 voucher(s) processed" in result.output


def _unreachable(url: str) -> Any:
    from transport.client import FdoHttpClient

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    return FdoHttpClient(url, client=httpx.Client(transport=httpx.MockTransport(refuse)))
