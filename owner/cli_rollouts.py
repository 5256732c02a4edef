"""``fdo owner rollouts start|list|show|pause|resume|abort|rollback`` and
``fdo owner groups rollout-policy``: the rollouts admin API over HTTP (docs/rollouts.md).

Like :mod:`owner.cli_admin`: ``--url``/``--token`` (or ``FDO_OWNER_URL``,
``FDO_OWNER_TOKEN``), one-line errors, httpx imported only when a command runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from fdo_cli.admin_http import list_page
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
    fields,
    local_time,
    render,
    table,
)
from owner.cli_admin import TokenOpt, UrlOpt, call, groups_app

rollouts_app = typer.Typer(no_args_is_help=True, help="Rollouts of a revision to a group's devices.")

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DEVICE_STATES = ("pending", "updating", "succeeded", "failed", "held", "rolled-back")

BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Devices per batch.")]
BatchPercent = Annotated[
    float | None, typer.Option("--batch-percent", min=0.1, max=100, help="Batch size, % of the devices.")
]
Canary = Annotated[str | None, typer.Option("--canary", help="KEY=VALUE: the first batch, by label.")]
CanarySize = Annotated[int, typer.Option("--canary-size", min=1, help="Devices in the canary batch.")]
Success = Annotated[
    float, typer.Option("--success-threshold", min=0, max=100, help="% of a batch that must succeed.")
]
Rollback = Annotated[
    float | None,
    typer.Option("--rollback-threshold", min=0, max=100, help="Roll a batch back when more % fail."),
]
Timeout = Annotated[str, typer.Option("--report-timeout", help="Time a device has to report: 90, 30m, 2h.")]
Hold = Annotated[list[str] | None, typer.Option("--hold", help="KEY=VALUE: hold devices with this label.")]
Budget = Annotated[str | None, typer.Option("--max-unavailable", help="Devices updating at once: N or P%.")]
BudgetLabel = Annotated[
    str | None, typer.Option("--budget-label", help="Apply the budget per value of this label.")
]
WindowOpt = Annotated[
    str | None, typer.Option("--window", help="When devices may update: 'Mon-Fri 02:00-05:00'.")
]
RolloutId = Annotated[int, typer.Argument(help="Rollout id.")]
WindowTz = Annotated[str, typer.Option("--window-tz", help="utc or device (the device's local time).")]


def duration(text: str) -> int:
    """Seconds of ``90``, ``90s``, ``30m``, ``2h``, ``1d``."""
    found = _DURATION.match(text.strip())
    if found is None or int(found[1]) == 0:
        raise die(f"duration {text!r}: expected a number with s, m, h or d (e.g. 30m)")
    return int(found[1]) * _UNITS[found[2]]


def options(
    *,
    batch_size: int | None,
    batch_percent: float | None,
    canary: str | None,
    canary_size: int,
    success_threshold: float,
    rollback_threshold: float | None,
    report_timeout: str,
    hold: list[str] | None,
    max_unavailable: str | None,
    budget_label: str | None,
    window: str | None,
    window_tz: str,
) -> dict[str, Any]:
    """The API's rollout options from the command line."""
    if batch_size is not None and batch_percent is not None:
        raise die("give --batch-size or --batch-percent, not both")
    out: dict[str, Any] = {
        "batch_size": batch_size,
        "batch_percent": batch_percent,
        "canary": canary,
        "canary_size": canary_size,
        "success_threshold": success_threshold,
        "rollback_threshold": rollback_threshold,
        "report_timeout": duration(report_timeout),
        "hold": hold or [],
        "budget_label": budget_label,
        "window": window,
        "window_tz": window_tz,
    }
    if max_unavailable is not None:
        text = max_unavailable.strip()
        try:
            if text.endswith("%"):
                out["max_unavailable_percent"] = float(text[:-1])
            else:
                out["max_unavailable"] = int(text)
        except ValueError:
            raise die(f"--max-unavailable {text!r}: expected a count (3) or a percentage (10%)") from None
    return out


@rollouts_app.command("start")
def start(
    group: Annotated[str, typer.Argument(help="Group name.")],
    revision: Annotated[int, typer.Option("--revision", min=1, help="The revision to roll out.")],
    url: UrlOpt,
    token: TokenOpt,
    batch_size: BatchSize = None,
    batch_percent: BatchPercent = None,
    canary: Canary = None,
    canary_size: CanarySize = 1,
    success_threshold: Success = 100.0,
    rollback_threshold: Rollback = None,
    report_timeout: Timeout = "30m",
    hold: Hold = None,
    max_unavailable: Budget = None,
    budget_label: BudgetLabel = None,
    window: WindowOpt = None,
    window_tz: WindowTz = "utc",
) -> None:
    """Start rolling a revision out to the group's onboarded devices, batch by batch."""
    body = options(
        batch_size=batch_size, batch_percent=batch_percent, canary=canary, canary_size=canary_size,
        success_threshold=success_threshold, rollback_threshold=rollback_threshold,
        report_timeout=report_timeout, hold=hold, max_unavailable=max_unavailable,
        budget_label=budget_label, window=window, window_tz=window_tz,
    )  # fmt: skip
    out = call("POST", url, token, f"/groups/{group}/rollouts", json={"revision": revision, **body})
    typer.echo(
        f"rollout {out['id']} started: group {out['group']} revision {out['from_revision'] or '-'}"
        f" -> {out['revision']}, {out['batches']} batch(es), state {out['state']}"
    )


@groups_app.command("rollout-policy")
def rollout_policy(
    group: Annotated[str, typer.Argument(help="Group name.")],
    url: UrlOpt,
    token: TokenOpt,
    none: Annotated[bool, typer.Option("--none", help="Publishing starts no rollout.")] = False,
    batch_size: BatchSize = None,
    batch_percent: BatchPercent = None,
    canary: Canary = None,
    canary_size: CanarySize = 1,
    success_threshold: Success = 100.0,
    rollback_threshold: Rollback = None,
    report_timeout: Timeout = "30m",
    hold: Hold = None,
    max_unavailable: Budget = None,
    budget_label: BudgetLabel = None,
    window: WindowOpt = None,
    window_tz: WindowTz = "utc",
) -> None:
    """Set the rollout a publish starts for this group (same options as rollouts start)."""
    policy = None
    if not none:
        policy = options(
            batch_size=batch_size, batch_percent=batch_percent, canary=canary, canary_size=canary_size,
            success_threshold=success_threshold, rollback_threshold=rollback_threshold,
            report_timeout=report_timeout, hold=hold, max_unavailable=max_unavailable,
            budget_label=budget_label, window=window, window_tz=window_tz,
        )  # fmt: skip
    call("PUT", url, token, f"/groups/{group}/rollout-policy", json={"rollout_policy": policy})
    typer.echo(
        f"group {group}: " + ("publishing starts no rollout" if none else "publishing starts a rollout")
    )


def counts_text(counts: dict[str, int]) -> str:
    return " ".join(f"{s}={counts[s]}" for s in DEVICE_STATES if counts.get(s)) or "-"


ROLLOUT_COLUMNS = (
    col("ID", "id", "right"),
    col("GROUP", "group"),
    Column("REVISION", lambda r: f"{r['from_revision'] or '-'}->{r['revision']}"),
    col("STATE", "state"),
    Column("BATCH", lambda r: f"{r['batch']}/{r['batches']}"),
    Column("DEVICES", lambda r: counts_text(r["counts"])),
    col("STARTED", "created_at"),
    col("REASON", "reason"),
)


@rollouts_app.command("list")
def list_rollouts(
    url: UrlOpt,
    token: TokenOpt,
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    state: Annotated[str | None, typer.Option(help="running, paused, completed or aborted.")] = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List rollouts, newest first."""
    filters = {k: v for k, v in (("group", group), ("state", state)) if v}
    list_page(
        url,
        token,
        "/rollouts",
        ROLLOUT_COLUMNS,
        "rollouts",
        filters=filters,
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
    )


@rollouts_app.command("show")
def show(
    rollout_id: RolloutId,
    url: UrlOpt,
    token: TokenOpt,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a rollout: state and reason, batches with counts by state, failing devices."""
    fmt = chosen(output, as_json)
    r = call("GET", url, token, f"/rollouts/{rollout_id}")
    if fmt is not Format.TABLE:
        return emit_data(r, fmt)
    shown = {k: v for k, v in r["options"].items() if v not in (None, [])}
    about = [
        ("group", r["group"]),
        ("revision", f"{r['from_revision'] or '-'} -> {r['revision']}"),
        ("state", r["state"] + (f" ({r['reason']})" if r["reason"] else "")),
        ("batch", f"{r['batch']} of {r['batches']}"),
        ("started", f"{local_time(r['created_at'])} by {r['created_by']}"),
    ]
    if r["rollback_of"]:
        about.append(("rolls back", f"rollout {r['rollback_of']}"))
    about.append(("options", " ".join(f"{k}={v}" for k, v in shown.items())))
    batch_columns = [
        Column("BATCH", lambda b: f"{b['batch']}{'*' if b['batch'] == r['batch'] else ''}", "right"),
        col("DEVICES", "devices", "right"),
        *(
            Column(s.upper(), lambda b, s=s: b["counts"].get(s, 0), "right")  # type: ignore[misc]
            for s in DEVICE_STATES
        ),
    ]
    parts: list[Any] = [f"rollout {r['id']}", fields(about), table(r["batch_counts"], batch_columns)]
    failing = [d for d in r["devices"] or [] if d["state"] in ("failed", "rolled-back")]
    if failing:
        device_columns = (
            col("GUID", "guid"),
            col("SERIAL", "serial"),
            col("BATCH", "batch", "right"),
            col("STATE", "state"),
            Column("STEP", lambda d: (d["error"] or {}).get("step")),
            Column("ERROR", lambda d: (d["error"] or {}).get("text")),
        )
        parts.append(table(failing, device_columns, title="failing devices"))
    render(*parts)


def _action(action: str, rollout_id: int, url: str, token: str) -> dict[str, Any]:
    body: dict[str, Any] = call("POST", url, token, f"/rollouts/{rollout_id}/{action}")
    return body


@rollouts_app.command("pause")
def pause(rollout_id: RolloutId, url: UrlOpt, token: TokenOpt) -> None:
    """Pause: no further device starts until resumed."""
    r = _action("pause", rollout_id, url, token)
    typer.echo(f"rollout {r['id']} {r['state']}")


@rollouts_app.command("resume")
def resume(rollout_id: RolloutId, url: UrlOpt, token: TokenOpt) -> None:
    """Resume: the current batch is evaluated again (held devices no longer count)."""
    r = _action("resume", rollout_id, url, token)
    typer.echo(f"rollout {r['id']} {r['state']}" + (f" ({r['reason']})" if r["reason"] else ""))


@rollouts_app.command("abort")
def abort(rollout_id: RolloutId, url: UrlOpt, token: TokenOpt) -> None:
    """Abort: the group's target returns to the revision the rollout started from."""
    r = _action("abort", rollout_id, url, token)
    typer.echo(f"rollout {r['id']} {r['state']}")


@rollouts_app.command("rollback")
def rollback(rollout_id: RolloutId, url: UrlOpt, token: TokenOpt) -> None:
    """Roll back: a new rollout of this rollout's from-revision, with the same options."""
    r = _action("rollback", rollout_id, url, token)
    typer.echo(f"rollout {r['id']} started: rolls back rollout {rollout_id} to revision {r['revision']}")
