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

from fdo_cli.admin_http import call, error_text, list_page
from fdo_cli.common import die
from fdo_cli.output import (
    AllOpt,
    Column,
    Format,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    OutputOpt,
    chosen,
    col,
    emit_data,
    show_object,
)

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

__all__ = ["call", "error_text", "JsonOpt", "OutputOpt", "TokenOpt", "UrlOpt"]


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


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise die(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


# ---------------------------------------------------------------------------- status


def status(url: UrlOpt, token: TokenOpt, output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Devices by status, vouchers by state, TO0 registrations pending, expiring and failing."""
    fmt = chosen(output, as_json)
    body = call("GET", url, token, "/summary")
    if fmt is not Format.TABLE:
        return emit_data(body, fmt)
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


DEVICE_COLUMNS = (
    col("GUID", "guid"),
    col("SERIAL", "serial"),
    col("MODEL", "model"),
    col("GROUP", "group"),
    col("STATUS", "status"),
    col("ONBOARD REV", "revision", "right"),
    Column("DELIVERY", lambda d: delivery_text(d.get("delivery"))),
    col("DESIRED", "desired_revision", "right"),
    col("APPLIED", "applied_revision", "right"),
    Column("BOOTED", lambda d: short_digest(d.get("booted_digest"))),
    Column("STAGED", lambda d: short_digest(d.get("staged_digest"))),
    col("HEALTH", "health"),
    col("LAST CHECK-IN", "last_checkin_at"),
    Column("NOTES", lambda d: notes_text(d)),
)


@devices_app.command("list")
def devices_list(
    url: UrlOpt,
    token: TokenOpt,
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List device records, oldest first."""
    filters = {k: v for k, v in (("group", group), ("status", status)) if v}
    list_page(
        url,
        token,
        "/devices",
        DEVICE_COLUMNS,
        "devices",
        filters=filters,
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
    )


def short_digest(digest: str | None) -> str | None:
    """The first 12 hex digits of a ``sha256:`` digest."""
    return None if not digest else digest.removeprefix("sha256:")[:12]


def notes_text(d: dict[str, Any]) -> str | None:
    """What needs a look: overdue, rolled back, the last error (step and text)."""
    notes = []
    if d.get("overdue"):
        notes.append("OVERDUE")
    if d.get("rolled_back"):
        notes.append("ROLLED-BACK")
    error = d.get("last_error")
    if error:
        notes.append(f"error[{error.get('step')}]: {error.get('text')}")
    return "; ".join(notes) or None


def delivery_text(delivery: dict[str, Any] | None) -> str:
    """``full``, ``none``, ``partial(2 missing)`` or ``-`` (nothing was assigned)."""
    if not delivery:
        return "-"
    missing = len(delivery.get("missing") or [])
    result = str(delivery.get("result"))
    return f"{result}({missing} missing)" if result == "partial" else result


def modules_text(o: dict[str, Any]) -> str:
    return ", ".join(
        f"{m.get('module', '?')}={'ok' if m.get('ok', True) else 'failed'}" for m in o["modules"]
    )


@devices_app.command("onboardings")
def devices_onboardings(
    url: UrlOpt,
    token: TokenOpt,
    guid: Annotated[str | None, typer.Option(help="Only those of this GUID (old or new).")] = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List completed TO2s, oldest first: the GUID before and after, and what each ServiceInfo module did."""
    filters = {"guid": guid} if guid else {}
    columns = (
        col("COMPLETED", "completed_at"),
        col("GUID", "guid"),
        Column("NEW GUID", lambda o: o.get("new_guid") or "(same)"),
        Column("MODULES", modules_text),
    )
    list_page(
        url,
        token,
        "/onboardings",
        columns,
        "onboardings",
        filters=filters,
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
    )


@devices_app.command("show")
def devices_show(
    guid: Annotated[str, typer.Argument(help="Any GUID the device has had.")],
    url: UrlOpt,
    token: TokenOpt,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a device record: identity, facts, revisions, check-in, timeline."""
    body = call("GET", url, token, f"/devices/{guid}")
    show_object(
        body,
        chosen(output, as_json),
        tables={
            "rollouts": None,
            "events": (col("AT", "at"), col("EVENT", "kind"), col("DETAIL", "detail")),
        },
    )


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


GROUP_COLUMNS = (
    col("NAME", "name"),
    col("DEFAULT", "is_default"),
    col("PRIORITY", "priority", "right"),
    col("REVISION", "current_revision", "right"),
    col("DEVICES", "devices", "right"),
    col("MODEL", "model"),
    col("SERIAL", "serial_pattern"),
    col("LABELS", "labels"),
    Column("ROLLOUT POLICY", lambda g: "yes" if g.get("rollout_policy") else "no"),
)


@groups_app.command("list")
def groups_list(
    url: UrlOpt,
    token: TokenOpt,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List groups."""
    list_page(
        url,
        token,
        "/groups",
        GROUP_COLUMNS,
        "groups",
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
    )


@groups_app.command("show")
def groups_show(
    name: str, url: UrlOpt, token: TokenOpt, output: OutputOpt = None, as_json: JsonOpt = False
) -> None:
    """Show a group and its current revision."""
    show_object(call("GET", url, token, f"/groups/{name}"), chosen(output, as_json))


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
def revisions_list(
    group: str,
    url: UrlOpt,
    token: TokenOpt,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a group's revisions, oldest first."""
    columns = (
        col("REV", "number", "right"),
        col("IMAGE", "image"),
        col("TRANSPORT", "transport"),
        col("APPLY", "apply_mode"),
        Column("CONFIG", lambda r: ", ".join(sorted((r.get("config") or {}).keys())) or None),
        Column("REGISTRY AUTH", lambda r: "registry-auth" if r.get("has_registry_auth") else None),
        col("PUBLISHED", "published_at"),
        col("BY", "published_by"),
    )
    list_page(
        url,
        token,
        f"/groups/{group}/revisions",
        columns,
        "revisions",
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
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
def tokens_list(
    url: UrlOpt,
    token: TokenOpt,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens (never their values)."""
    columns = (
        col("ID", "id", "right"),
        col("NAME", "name"),
        col("ROLE", "role"),
        Column("STATE", lambda t: f"revoked {t['revoked_at']}" if t.get("revoked_at") else "active"),
        col("CREATED", "created_at"),
    )
    list_page(
        url,
        token,
        "/tokens",
        columns,
        "tokens",
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
    )


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
    who: Annotated[str | None, typer.Option(help="Only entries of this token name.")] = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List audit entries, newest first."""
    filters = {k: v for k, v in (("action", action), ("who", who)) if v}
    columns = (
        col("AT", "at"),
        col("WHO", "who"),
        col("ACTION", "action"),
        col("TARGET", "target"),
        Column("DETAIL", lambda e: json.dumps(e["detail"], sort_keys=True) if e.get("detail") else None),
    )
    list_page(
        url,
        token,
        "/audit",
        columns,
        "audit entries",
        filters=filters,
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
    )
