"""Admin API for groups, revisions, labels, tokens, audit; roles; secrets; the CLI."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fdo.serviceinfo.devmod import Devmod
from fdo.types import Guid
from fdo.voucher import vouchers_to_pem
from fdo_cli.main import app as fdo_app
from fdo_server.auth import Role
from fdo_server.db import unit_of_work
from owner.app import create_app
from owner.groups import assignment_for, record_onboarding
from tests.cli_tables import parse_table
from tests.conftest import KeyPool
from tests.owner.helpers import make_world, token

SECRET = "s3cr3t-XYZZY-registry-password"
SECRET_FILE = "PRIVATE-KEY-PLUGH-4711"
IMAGE = "quay.io/acme/os@sha256:" + "0123456789abcdef" * 4
IMAGE2 = "quay.io/acme/os:v2@sha256:" + "fedcba9876543210" * 4
AUTH = {"auths": {"quay.io": {"auth": SECRET}}}


class Recorder:
    """A TestClient wrapper keeping every response's text, to scan it for secrets."""

    def __init__(self, app: FastAPI) -> None:
        self.http = TestClient(app)
        self.texts: list[str] = []

    def __call__(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.http.request(method, "/api/v1" + path, headers=headers, **kwargs)
        self.texts.append(response.text)
        return response


def _app(key_pool: KeyPool, tmp_path: Path, database_url: str) -> tuple[FastAPI, Any]:
    world = make_world(key_pool, tmp_path)
    return create_app(world.settings(database_url)), world


def revision_body(image: str = IMAGE) -> dict[str, Any]:
    return {
        "image": image,
        "apply_mode": "switch",
        "config": {
            "files": [{"path": "/etc/motd", "mode": "0644", "content": "hello"}],
            "ssh": {"user": "core", "keys": ["ssh-ed25519 AAAA test"]},
        },
        "registry_auth": AUTH,
        "secret_files": [{"path": "/etc/pki/key.pem", "mode": "0600", "content": SECRET_FILE}],
    }


def test_groups_revisions_roles_audit_and_secrets(
    key_pool: KeyPool, tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, world = _app(key_pool, tmp_path, database_url)
    admin, operator, viewer = (token(app, r) for r in (Role.ADMIN, Role.OPERATOR, Role.VIEWER))
    api = Recorder(app)
    changes: list[str] = []  # the audit action of every successful change, in order

    # A voucher so that a device can be labelled before it onboards.
    (_, voucher), (_, voucher2) = world.device(), world.device()
    guid = str(voucher.header.guid)
    assert api("POST", "/vouchers", operator, content=vouchers_to_pem([voucher, voucher2])).status_code == 200
    changes += ["voucher.import", "voucher.import"]

    # Groups.
    r = api("POST", "/groups", operator, json={"name": "all", "is_default": True})
    assert r.status_code == 201, r.text
    changes.append("group.create")
    r = api("POST", "/groups", operator, json={"name": "lab", "labels": {"site": "lab"}, "priority": 5})
    assert r.status_code == 201
    changes.append("group.create")
    assert api("POST", "/groups", operator, json={"name": "lab"}).status_code == 409
    assert api("POST", "/groups", operator, json={"name": "other", "is_default": True}).status_code == 409
    assert (
        api("POST", "/groups", operator, json={"name": "x", "is_default": True, "model": "m"}).status_code
        == 422
    )
    assert api("POST", "/groups", operator, json={"name": "bad name!"}).status_code == 422

    # Revisions: secrets accepted, never returned; numbers count up; no way to change one.
    r = api("POST", "/groups/lab/revisions", operator, json=revision_body())
    assert r.status_code == 201, r.text
    changes.append("revision.publish")
    # The publish answer adds what publishing did (docs/rollouts.md): no device yet, so
    # the target moved to the new revision and nothing stays behind.
    first = r.json()
    assert {k: first.pop(k) for k in ("target_revision", "rollout", "behind", "hint")} == {
        "target_revision": 1,
        "rollout": None,
        "behind": 0,
        "hint": None,
    }
    assert first["number"] == 1 and first["has_registry_auth"] is True
    assert first["secret_files"] == ["/etc/pki/key.pem"] and first["published_by"] == "test-operator"
    assert api("PUT", "/groups/lab/revisions/1", operator, json=revision_body(IMAGE2)).status_code == 405
    assert api("PATCH", "/groups/lab/revisions/1", operator, json={"image": IMAGE2}).status_code == 405
    r = api("POST", "/groups/lab/revisions", operator, json={**revision_body(IMAGE2), "registry_auth": None})
    assert r.status_code == 201 and r.json()["number"] == 2 and r.json()["has_registry_auth"] is False
    changes.append("revision.publish")
    assert api("GET", "/groups/lab/revisions/1", viewer).json() == first
    listed = api("GET", "/groups/lab/revisions", viewer).json()["items"]
    assert [x["number"] for x in listed] == [1, 2]
    shown = api("GET", "/groups/lab", viewer).json()
    assert shown["current_revision"] == 2 and shown["revision"]["image"] == IMAGE2
    # Invalid bodies answer 422 without repeating the input (which may hold secrets).
    for bad in (
        {**revision_body(), "image": "quay.io/acme/os:latest"},
        {**revision_body(), "registry_auth": SECRET},
        {**revision_body(), "secret_files": SECRET_FILE},
        {**revision_body(), "surprise": SECRET},
    ):
        assert api("POST", "/groups/lab/revisions", operator, json=bad).status_code == 422
    assert api("POST", "/groups/nope/revisions", operator, json=revision_body()).status_code == 404

    # Labels on a device known by its voucher; then the device record shows them.
    r = api("PUT", f"/devices/{guid}/labels", operator, json={"labels": {"site": "lab"}})
    assert r.status_code == 200, r.text
    changes.append("device.labels")
    assert r.json()["labels"] == {"site": "lab"} and r.json()["status"] == "new"
    assert (
        api("PUT", f"/devices/{Guid(os.urandom(16))}/labels", operator, json={"labels": {}}).status_code
        == 404
    )
    assert api("PUT", "/devices/nope/labels", operator, json={"labels": {}}).status_code == 400
    assert (
        api("PUT", f"/devices/{guid}/labels", operator, json={"labels": {"bad key": "x"}}).status_code == 422
    )

    # Onboarding: the device receives lab's current revision (2), with the record following it.
    new_guid = Guid(os.urandom(16))
    dm = Devmod(os="linux", arch="x86_64", version="1", device="box", sep=";", bin="x86_64", sn="SN-1")
    with unit_of_work(app.state.engine):
        got = assignment_for(voucher.header.guid, dm)
        assert got is not None and got.revision.number == 2 and got.registry_auth is None
        record_onboarding(voucher.header.guid, new_guid, dm, got.revision)
    device = api("GET", f"/devices/{guid}", viewer).json()
    assert device["guid"] == str(new_guid) and device["guids"] == [guid, str(new_guid)]
    assert device["group"] == "lab" and device["revision"] == 2 and device["status"] == "onboarded"
    assert [e["kind"] for e in device["events"]] == ["created", "assigned", "onboarded"]
    records = api("GET", "/devices", viewer, params={"group": "lab"}).json()
    assert records["total"] == 1 and [d["serial"] for d in records["items"]] == ["SN-1"]
    onboarded = api("GET", "/devices", viewer, params={"status": "onboarded"}).json()["items"]
    assert [d["guid"] for d in onboarded] == [str(new_guid)]
    assert api("GET", "/devices", viewer, params={"status": "happy"}).status_code == 422
    # A new revision of a group with an onboarded device and no rollout policy: the
    # target stays (the answer says who stays behind and how to roll it out) ...
    published = api("POST", "/groups/lab/revisions", operator, json=revision_body()).json()
    assert published["number"] == 3 and published["target_revision"] == 2 and published["rollout"] is None
    assert published["behind"] == 1 and "fdo owner rollouts start lab --revision 3" in published["hint"]
    changes.append("revision.publish")
    # ... until a rollout of it starts: from then on the next device gets it.
    r = api("POST", "/groups/lab/rollouts", operator, json={"revision": 3})
    assert r.status_code == 201, r.text
    changes.append("rollout.start")
    r = api("PUT", f"/devices/{voucher2.header.guid}/labels", operator, json={"labels": {"site": "lab"}})
    assert r.status_code == 200
    changes.append("device.labels")
    with unit_of_work(app.state.engine):
        got = assignment_for(voucher2.header.guid, dm)
        assert got is not None and got.revision.number == 3 and got.registry_auth == json.dumps(AUTH).encode()
        assert got.secret_files[0]["content"] == SECRET_FILE
    assert api("GET", f"/devices/{new_guid}", viewer).json()["revision"] == 2

    # Roles: a viewer changes nothing; an operator manages no tokens.
    change_calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/groups", {"name": "v"}),
        ("DELETE", "/groups/lab", None),
        ("POST", "/groups/lab/revisions", revision_body()),
        ("PUT", f"/devices/{guid}/labels", {"labels": {}}),
        ("POST", "/tokens", {"name": "v", "role": "admin"}),
        ("DELETE", "/tokens/1", None),
    ]
    for method, path, body in change_calls:
        assert api(method, path, viewer, json=body).status_code == 403, (method, path)
        assert api(method, path, {}, json=body).status_code == 401
    for method, path, body in change_calls[4:] + [("GET", "/tokens", None)]:
        assert api(method, path, operator, json=body).status_code == 403, (method, path)

    # Tokens: admin creates (plaintext once), lists (never values) and revokes.
    r = api("POST", "/tokens", admin, json={"name": "ci", "role": "viewer"})
    assert r.status_code == 201
    changes.append("token.create")
    created = r.json()
    api.texts.pop()  # the one response that carries a secret (the new token) by design
    ci = {"Authorization": f"Bearer {created['token']}"}
    assert api("GET", "/groups", ci).status_code == 200
    tokens = api("GET", "/tokens", admin).json()["items"]
    assert "ci" in [t["name"] for t in tokens] and all(
        "token" not in t and "token_hash" not in t for t in tokens
    )
    assert api("DELETE", f"/tokens/{created['id']}", admin).status_code == 200
    changes.append("token.revoke")
    assert api("GET", "/groups", ci).status_code == 401

    # Deleting a group: it stops matching, its name is free again, devices keep their revision.
    assert api("DELETE", "/groups/lab", operator).status_code == 200
    changes.append("group.delete")
    assert api("GET", "/groups/lab", viewer).status_code == 404
    assert api("DELETE", "/groups/lab", operator).status_code == 404
    assert api("POST", "/groups", operator, json={"name": "lab"}).status_code == 201
    changes.append("group.create")
    assert api("GET", f"/devices/{guid}", viewer).json()["revision"] == 2

    # Audit: one entry per change, newest first, with who and no secret.
    entries = api("GET", "/audit", viewer, params={"limit": 500}).json()["items"]
    assert [e["action"] for e in reversed(entries)] == changes
    assert all(e["who"] in ("test-operator", "test-admin") and e["at"] for e in entries)
    assert (
        api("GET", "/audit", viewer, params={"action": "token.create"}).json()["items"][0]["who"]
        == "test-admin"
    )

    # No secret in any response or log line.
    assert "/api/v1/groups/{name}/revisions" in api.http.get("/openapi.json").json()["paths"]
    for text in api.texts:
        assert SECRET not in text and SECRET_FILE not in text and created["token"] not in text
    assert caplog.records and SECRET not in caplog.text and SECRET_FILE not in caplog.text
    assert created["token"] not in caplog.text


def test_cli_over_http(
    key_pool: KeyPool, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = _app(key_pool, tmp_path, database_url)
    admin = token(app, Role.ADMIN)["Authorization"].split()[1]
    http = TestClient(app, base_url="http://owner.test")

    requests: list[tuple[str, dict[str, Any]]] = []

    def fake_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.pop("timeout", None)
        requests.append((url, dict(kwargs.get("params") or {})))
        response: httpx.Response = http.request(method, url, **kwargs)
        return response

    monkeypatch.setattr(httpx, "request", fake_request)
    monkeypatch.setenv("FDO_OWNER_URL", "http://owner.test")
    monkeypatch.setenv("FDO_OWNER_TOKEN", admin)
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(fdo_app, ["owner", *args])
        assert result.exit_code == code, result.output
        assert SECRET not in result.output
        return result.output

    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps(AUTH))
    key = tmp_path / "key.pem"
    key.write_text(SECRET_FILE)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"units": [{"name": "app.service", "content": "[Unit]\n"}]}))
    operator = run("tokens", "create", "--name", "ops", "--role", "operator").strip()
    assert operator.startswith("fdo_")
    monkeypatch.setenv("FDO_OWNER_TOKEN", operator)
    run("groups", "create", "edge", "--model", "box-*", "--label", "site=lab", "--priority", "3")
    run("groups", "create", "rest", "--default")
    out = run("revisions", "publish", "edge", "--image", IMAGE, "--registry-auth", str(auth),
              "--secret-file", f"/etc/key.pem={key}", "--config", str(config))  # fmt: skip
    assert "revision 1 published" in out
    assert "registry-auth" in run("revisions", "list", "edge")
    assert SECRET_FILE not in run("groups", "show", "edge")
    groups, footer = parse_table(run("groups", "list"))
    assert footer == "2 of 2 groups"
    edge, rest = groups
    assert (edge["NAME"], edge["PRIORITY"], edge["REVISION"], edge["DEFAULT"]) == ("edge", "3", "1", "no")
    assert (edge["MODEL"], edge["LABELS"]) == ("box-*", "site=lab")
    assert (rest["NAME"], rest["DEFAULT"], rest["REVISION"]) == ("rest", "yes", "-")
    assert yaml.safe_load(run("groups", "list", "-o", "yaml")) == json.loads(run("groups", "list", "--json"))
    assert [g["name"] for g in json.loads(run("groups", "list", "-o", "json", "--offset", "1"))["items"]] == [
        "rest"
    ]
    shown = run("groups", "show", "edge")
    assert re.search(r"^name +edge$", shown, re.M) and re.search(
        r"^revision\.image +" + re.escape(IMAGE), shown, re.M
    )
    assert json.loads(run("groups", "show", "edge", "-o", "json"))["revision"]["number"] == 1
    assert "disagree" in run("groups", "list", "--json", "-o", "yaml", code=2)
    assert run("groups", "list", "-o", "table") == run("groups", "list")
    assert (
        yaml.safe_load(run("groups", "show", "edge", "-o", "yaml"))["revision"]["has_registry_auth"] is True
    )
    assert set(json.loads(run("status", "-o", "json"))) >= {"devices", "vouchers", "to0"}
    broken = tmp_path / "broken.json"
    broken.write_text('{"files": [\n  {"path": "/etc/x",}\n]}')
    bad_file = run("revisions", "publish", "edge", "--image", IMAGE, "--config", str(broken), code=1)
    assert bad_file.startswith(f"error: --config {broken}: not valid JSON at line 2 column 21: Expecting")
    assert bad_file.count("\n") == 1
    missing = run(
        "revisions", "publish", "edge", "--image", IMAGE, "--config", str(tmp_path / "nope.json"), code=1
    )
    assert missing.startswith(f"error: --config {tmp_path / 'nope.json'}: cannot read it: ")
    invalid = run("revisions", "publish", "edge", "--image", "bad", code=1)
    assert invalid.startswith("error: HTTP 422: the request is invalid:\n  image: ")
    assert "{" not in invalid  # one line per field, not the JSON of the answer
    assert "HTTP 403" in run("tokens", "list", code=1)
    run("groups", "delete", "rest")
    assert run("devices", "list") == "0 of 0 devices\n"
    assert "HTTP 404" in run("labels", "set", str(Guid(os.urandom(16))), "a=b", code=1)
    assert "HTTP 404" in run("devices", "show", str(Guid(os.urandom(16))), code=1)
    assert "group.delete" in run("audit", "list")
    monkeypatch.setenv("FDO_OWNER_TOKEN", admin)
    listed = run("tokens", "list")
    ops_id = next(row["ID"] for row in parse_table(listed)[0] if row["NAME"] == "ops")
    assert "revoked" in run("tokens", "revoke", ops_id)
    tokens = {row["NAME"]: row for row in parse_table(run("tokens", "list"))[0]}
    assert tokens["ops"]["STATE"].startswith("revoked ") and tokens["ops"]["ROLE"] == "operator"
    actions = [e["action"] for e in json.loads(run("audit", "list", "--json"))["items"]]
    assert actions == [
        "token.revoke",
        "group.delete",
        "revision.publish",
        "group.create",
        "group.create",
        "token.create",
    ]

    # Pages: N of M, --limit/--offset, and --all fetching page after page.
    rows, footer = parse_table(run("audit", "list", "--limit", "2"))
    assert [r["ACTION"] for r in rows] == actions[:2]
    assert footer == "2 of 6 audit entries (offset 0; --all or --offset 2 for more)"
    rows, footer = parse_table(run("audit", "list", "--limit", "2", "--offset", "4"))
    assert [r["ACTION"] for r in rows] == actions[4:] and footer == "2 of 6 audit entries (offset 4)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", rows[0]["AT"])
    requests.clear()
    rows, footer = parse_table(run("audit", "list", "--all", "--limit", "2"))
    assert [r["ACTION"] for r in rows] == actions and footer == "6 of 6 audit entries"
    assert [(u.rsplit("/", 1)[1], p["offset"], p["limit"]) for u, p in requests] == [
        ("audit", 0, 2),
        ("audit", 2, 2),
        ("audit", 4, 2),
    ]
    every = json.loads(run("audit", "list", "--all", "--limit", "4", "--offset", "1", "-o", "json"))
    assert [e["action"] for e in every["items"]] == actions[1:]
    assert (every["total"], every["offset"]) == (6, 1)
    assert (
        yaml.safe_load(run("audit", "list", "--all", "--limit", "5", "-o", "yaml"))["items"]
        == json.loads(run("audit", "list", "-o", "json"))["items"]
    )
    assert "--limit" in run("audit", "list", "--limit", "1001", code=2)
