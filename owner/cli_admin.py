"""``fdo owner devices|groups|revisions|labels|tokens|audit``: the admin API over HTTP.

Every command takes ``--url`` and ``--token`` (or ``FDO_OWNER_URL``,
``FDO_OWNER_TOKEN``). Only typer and the standard library are imported here; httpx is
imported when a command runs, so ``import fdo_cli.main`` stays light for devices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fdo_cli.common import die

devices_app = typer.Typer(no_args_is_help=True, help="Device records (over the admin API).")
groups_app = typer.Typer(no_args_is_help=True, help="Device groups (over the admin API).")
revisions_app = typer.Typer(no_args_is_help=True, help="Group revisions: image and configuration.")
labels_app = typer.Typer(no_args_is_help=True, help="Device labels.")
tokens_app = typer.Typer(no_args_is_help=True, help="Admin API tokens, managed remotely (admin role).")
audit_app = typer.Typer(no_args_is_help=True, help="The admin audit log.")

#: (name, app) pairs that ``owner.cli`` mounts.
APPS = (
    ("devices", devices_app),
    ("groups", groups_app),
    ("revisions", revisions_app),
    ("labels", labels_app),
    ("tokens", tokens_app),
    ("audit", audit_app),
)

UrlOpt = Annotated[str, typer.Option("--url", envvar="FDO_OWNER_URL", help="Owner service base URL.")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="FDO_OWNER_TOKEN", help="Admin API bearer token.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def call(method: str, url: str, token: str, path: str, **kwargs: Any) -> Any:
    """``method`` ``/api/v1{path}``; exits with the server's message on an error status."""
    import httpx

    target = url.rstrip("/") + "/api/v1" + path
    try:
        response = httpx.request(
            method, target, headers={"Authorization": f"Bearer {token}"}, timeout=60.0, **kwargs
        )
    except httpx.HTTPError as exc:
        raise die(f"{target}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else response.text[:500]
        raise die(f"HTTP {response.status_code}: {error_text(detail)}")
    return body


def error_text(detail: Any) -> str:
    """An error answer's ``detail`` for people: a string as it is; validation errors
    (FastAPI's list of ``{"loc", "msg"}``) one line per field, ``body.image: ...``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(e, dict) and "msg" in e for e in detail):
        lines = []
        for error in detail:
            where = ".".join(str(part) for part in error.get("loc") or []) or "request"
            lines.append(f"  {where}: {error['msg']}")
        return "the request is invalid:\n" + "\n".join(lines)
    return json.dumps(detail)


def read_text_file(path: Path, option: str) -> str:
    """A text file an option names; exits with one line naming the file if unreadable."""
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise die(f"{option} {path}: not UTF-8 text") from None
    except OSError as exc:
        raise die(f"{option} {path}: cannot read it: {exc.strerror or exc}") from None


def read_json_file(path: Path, option: str) -> Any:
    """A JSON file an option names; exits with one line naming the file and, when it is
    not JSON, the line and column where that shows."""
    text = read_text_file(path, option)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise die(f"{option} {path}: not valid JSON at {where}: {exc.msg}") from None


def _echo_json(body: Any) -> None:
    typer.echo(json.dumps(body, indent=2))


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise die(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


# ---------------------------------------------------------------------------- status


def status(url: UrlOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """Devices by status, vouchers by state, TO0 registrations pending, expiring and failing."""
    body = call("GET", url, token, "/summary")
    if as_json:
        return _echo_json(body)
    devices = "  ".join(f"{k}={v}" for k, v in body["devices"].items())
    vouchers = "  ".join(f"{k}={v}" for k, v in body["vouchers"].items())
    to0 = body["to0"]
    typer.echo(f"devices   {devices}")
    typer.echo(f"vouchers  {vouchers}")
    typer.echo(
        f"TO0       pending={to0['pending']}  expiring={to0['expiring']}"
        f" (within {to0['expiring_within_seconds']} s)  failing={to0['failing']}"
    )


# ---------------------------------------------------------------------------- devices


@devices_app.command("list")
def devices_list(
    url: UrlOpt,
    token: TokenOpt,
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List device records."""
    params: dict[str, Any] = {"limit": 500}
    if group:
        params["group"] = group
    if status:
        params["status"] = status
    body = call("GET", url, token, "/devices", params=params)
    if as_json:
        return _echo_json(body)
    for d in body["items"]:
        revision = "-" if d["revision"] is None else d["revision"]
        typer.echo(
            f"{d['guid']}  {d['status']:11}  {d['serial'] or '-'}  {d['model'] or '-'}  "
            f"group={d['group'] or '-'} revision={revision} delivery={delivery_text(d.get('delivery'))}"
            f"{checkin_text(d)}"
        )


def checkin_text(d: dict[str, Any]) -> str:
    """The check-in part of a list line: desired/applied, booted and staged digests,
    health, last check-in, overdue, rolled back and the last error."""
    if d.get("desired_revision") is None and d.get("last_checkin_at") is None:
        return ""

    def short(digest: str | None) -> str:
        return "-" if not digest else digest.removeprefix("sha256:")[:12]

    out = (
        f" desired={d.get('desired_revision') or '-'} applied={d.get('applied_revision') or '-'}"
        f" booted={short(d.get('booted_digest'))} staged={short(d.get('staged_digest'))}"
        f" health={d.get('health') or '-'} checked-in={d.get('last_checkin_at') or 'never'}"
    )
    if d.get("overdue"):
        out += " OVERDUE"
    if d.get("rolled_back"):
        out += " ROLLED-BACK"
    error = d.get("last_error")
    if error:
        out += f" error[{error.get('step')}]={error.get('text')!r}"
    return out


def delivery_text(delivery: dict[str, Any] | None) -> str:
    """``full``, ``none``, ``partial(2 missing)`` or ``-`` (nothing was assigned)."""
    if not delivery:
        return "-"
    missing = len(delivery.get("missing") or [])
    result = str(delivery.get("result"))
    return f"{result}({missing} missing)" if result == "partial" else result


@devices_app.command("onboardings")
def devices_onboardings(
    url: UrlOpt,
    token: TokenOpt,
    guid: Annotated[str | None, typer.Option(help="Only those of this GUID (old or new).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (oldest first).")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List completed TO2s: the GUID before and after, and what each ServiceInfo module did."""
    params: dict[str, Any] = {"limit": limit}
    if guid:
        params["guid"] = guid
    body = call("GET", url, token, "/onboardings", params=params)
    if as_json:
        return _echo_json(body)
    for o in body["items"]:
        modules = ", ".join(
            f"{m.get('module', '?')}={'ok' if m.get('ok', True) else 'failed'}" for m in o["modules"]
        )
        typer.echo(f"{o['completed_at']}  {o['guid']} -> {o['new_guid'] or '(same)'}  {modules or '-'}")


@devices_app.command("show")
def devices_show(
    guid: Annotated[str, typer.Argument(help="Any GUID the device has had.")], url: UrlOpt, token: TokenOpt
) -> None:
    """Show a device record with its timeline (JSON)."""
    _echo_json(call("GET", url, token, f"/devices/{guid}"))


@devices_app.command("revoke-checkin")
def devices_revoke_checkin(
    guid: Annotated[str, typer.Argument(help="Any GUID the device has had.")], url: UrlOpt, token: TokenOpt
) -> None:
    """Refuse the device's check-ins and reports from now on (a new TO2 issues a new secret)."""
    body = call("POST", url, token, f"/devices/{guid}/revoke-checkin")
    typer.echo(f"check-in credential of {body['guid']} revoked")


@devices_app.command("redeliver")
def devices_redeliver(
    guid: Annotated[str, typer.Argument(help="Any GUID the device has had.")],
    url: UrlOpt,
    token: TokenOpt,
    revision: Annotated[int | None, typer.Option("--revision", min=1, help="Revision of its group.")] = None,
) -> None:
    """Send the device its desired revision (or --revision N) again at its next check-in."""
    body = call("POST", url, token, f"/devices/{guid}/redeliver", json={"revision": revision})
    typer.echo(f"{body['guid']}: revision {body['desired_revision']} at its next check-in")


@labels_app.command("set")
def labels_set(
    guid: Annotated[str, typer.Argument(help="Device GUID.")],
    url: UrlOpt,
    token: TokenOpt,
    labels: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE pairs (replace all labels).")] = None,
) -> None:
    """Replace a device's labels (none given: clear them)."""
    body = call("PUT", url, token, f"/devices/{guid}/labels", json={"labels": _pairs(labels, "label")})
    typer.echo(f"{body['guid']}: {json.dumps(body['labels'], sort_keys=True)}")


# ---------------------------------------------------------------------------- groups


@groups_app.command("create")
def groups_create(
    name: Annotated[str, typer.Argument(help="Group name.")],
    url: UrlOpt,
    token: TokenOpt,
    priority: Annotated[int, typer.Option(help="Higher wins when groups overlap.")] = 0,
    model: Annotated[str | None, typer.Option(help="Model (devmod device) glob.")] = None,
    serial_pattern: Annotated[str | None, typer.Option(help="Serial number glob.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE a device must carry.")] = None,
    member: Annotated[list[str] | None, typer.Option(help="A GUID or serial listed explicitly.")] = None,
    default: Annotated[
        bool, typer.Option("--default", help="The group for devices nothing else selects.")
    ] = False,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
) -> None:
    """Create a group."""
    payload = {
        "name": name,
        "priority": priority,
        "model": model,
        "serial_pattern": serial_pattern,
        "labels": _pairs(label, "label"),
        "members": member or [],
        "is_default": default,
        "description": description,
    }
    body = call("POST", url, token, "/groups", json=payload)
    typer.echo(f"group {body['name']} created")


@groups_app.command("list")
def groups_list(url: UrlOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """List groups."""
    body = call("GET", url, token, "/groups")
    if as_json:
        return _echo_json(body)
    for g in body["items"]:
        flags = " (default)" if g["is_default"] else ""
        revision = "-" if g["current_revision"] is None else g["current_revision"]
        typer.echo(
            f"{g['name']}{flags}  priority={g['priority']}  revision={revision}  devices={g['devices']}"
        )


@groups_app.command("show")
def groups_show(name: str, url: UrlOpt, token: TokenOpt) -> None:
    """Show a group and its current revision (JSON)."""
    _echo_json(call("GET", url, token, f"/groups/{name}"))


@groups_app.command("delete")
def groups_delete(name: str, url: UrlOpt, token: TokenOpt) -> None:
    """Delete a group (its revisions stay in device records)."""
    call("DELETE", url, token, f"/groups/{name}")
    typer.echo(f"group {name} deleted")


# ---------------------------------------------------------------------------- revisions


@revisions_app.command("publish")
def revisions_publish(
    group: Annotated[str, typer.Argument(help="Group name.")],
    image: Annotated[str, typer.Option(help="Image pinned by digest: name@sha256:<hex>.")],
    url: UrlOpt,
    token: TokenOpt,
    transport: Annotated[
        str, typer.Option(help="registry, oci, oci-archive, containers-storage.")
    ] = "registry",
    apply_mode: Annotated[str, typer.Option(help="stage, switch or switch-reboot.")] = "switch-reboot",
    config: Annotated[Path | None, typer.Option(help="JSON file: files, units, ssh, policy, ...")] = None,
    registry_auth: Annotated[Path | None, typer.Option(help="Registry auth.json (write-only).")] = None,
    secret_file: Annotated[
        list[str] | None, typer.Option(help="DEVICE_PATH=LOCAL_FILE sent write-only, mode 0600.")
    ] = None,
) -> None:
    """Publish the group's next revision (what it does to onboarded devices: docs/rollouts.md)."""
    payload: dict[str, Any] = {"image": image, "transport": transport, "apply_mode": apply_mode}
    if config is not None:
        payload["config"] = read_json_file(config, "--config")
    if registry_auth is not None:
        payload["registry_auth"] = read_json_file(registry_auth, "--registry-auth")
    payload["secret_files"] = [
        {"path": path, "mode": "0600", "content": read_text_file(Path(local), "--secret-file")}
        for path, local in _pairs(secret_file, "secret file").items()
    ]
    body = call("POST", url, token, f"/groups/{group}/revisions", json=payload)
    typer.echo(f"group {group}: revision {body['number']} published ({body['image']})")
    if body.get("rollout") is not None:
        typer.echo(f"rollout {body['rollout']} started (the group's rollout policy)")
    elif body.get("hint"):
        typer.echo(body["hint"])


@revisions_app.command("list")
def revisions_list(group: str, url: UrlOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """List a group's revisions."""
    body = call("GET", url, token, f"/groups/{group}/revisions")
    if as_json:
        return _echo_json(body)
    for r in body["items"]:
        auth = " registry-auth" if r["has_registry_auth"] else ""
        typer.echo(
            f"{r['number']}  {r['image']}  {r['apply_mode']}  "
            f"{r['published_at']} by {r['published_by']}{auth}"
        )


# ---------------------------------------------------------------------------- tokens, audit


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option("--name", help="Who the token is for.")],
    url: UrlOpt,
    token: TokenOpt,
    role: Annotated[str, typer.Option("--role", help="admin, operator or viewer.")] = "viewer",
) -> None:
    """Create a token and print it (shown once)."""
    body = call("POST", url, token, "/tokens", json={"name": name, "role": role})
    typer.echo(body["token"])


@tokens_app.command("list")
def tokens_list(url: UrlOpt, token: TokenOpt) -> None:
    """List tokens (never their values)."""
    for t in call("GET", url, token, "/tokens")["items"]:
        state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "active"
        typer.echo(f"{t['id']}  {t['name']}  {t['role']}  {state}")


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (see tokens list).")], url: UrlOpt, token: TokenOpt
) -> None:
    """Revoke a token."""
    body = call("DELETE", url, token, f"/tokens/{token_id}")
    typer.echo(f"token {body['id']} ({body['name']}) revoked")


@audit_app.command("list")
def audit_list(
    url: UrlOpt,
    token: TokenOpt,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List audit entries, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if action:
        params["action"] = action
    body = call("GET", url, token, "/audit", params=params)
    if as_json:
        return _echo_json(body)
    for e in body["items"]:
        typer.echo(f"{e['at']}  {e['who']}  {e['action']}  {e['target']}")
