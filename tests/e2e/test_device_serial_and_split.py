"""Over real HTTP: our device's serial reaches the owner, and a devmod over the MTU is split.

The three services run as uvicorn servers (one worker each) on SQLite and, when
``FDO_TEST_POSTGRES_URL`` is set, on PostgreSQL. The real device client does DI with a
serial, keeps it in the credential and sends it as devmod ``sn``; the owner's device
record shows it in the admin API, in ``fdo owner devices list`` and on the status page,
and group rules by serial pattern or listed serial select our own devices. A credential
file from before the serial was kept still onboards (no ``sn``, as before). A device
announcing many modules sends its devmod (over 3 kB) in several DeviceServiceInfo
messages under the owner's 1300-byte limit.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from device.modules import default_devmod
from fdo.credential import DeviceCredential
from fdo_cli.main import app
from fdo_server.stack import Stack
from tests.cli_tables import parse_table
from tests.conftest import database_backends, open_database
from tests.owner.helpers import ui_sign_in

_n = itertools.count(1)


@pytest.fixture(scope="module", params=database_backends())
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    backend = request.param
    workdir = tmp_path_factory.mktemp(f"serial-{backend}")
    dbs = [open_database(backend, workdir, name) for name in ("manufacturer", "rendezvous", "owner")]
    urls = {
        name: db.__enter__() for name, db in zip(("manufacturer", "rendezvous", "owner"), dbs, strict=True)
    }
    with Stack(workdir, database_urls=urls) as running:
        yield running
    for db in dbs:
        db.__exit__()


def _ready(stack: Stack, serial: str, *, keep_serial: bool = True) -> DeviceCredential:
    """DI with ``serial``, the hand-off and the owner's TO0; the device's credential."""
    credential = stack.manufacture(serial=serial, model="kiosk-v2")
    assert credential.serial == serial  # kept from DI
    stack.hand_off(str(credential.guid), "ec256")
    stack.wait_for_to0(str(credential.guid))
    return credential if keep_serial else dataclasses.replace(credential, serial=None)


def _record(stack: Stack, guid: str) -> dict[str, Any]:
    with stack.admin("owner") as owner:
        resp = owner.get(f"/api/v1/devices/{guid}")
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body


def _device_service_info_count(stack: Stack) -> float:
    """TO2.DeviceServiceInfo messages the owner has served (its /metrics)."""
    with stack.admin("owner") as owner:
        text = owner.get("/metrics").text
    found = re.findall(r"^fdo_messages_total\{([^}]*)\} (\S+)$", text, re.MULTILINE)
    return sum(
        float(value)
        for labels, value in found
        if 'msg_type="68"' in labels and 'service="owner"' in labels and 'result="ok"' in labels
    )


def test_serial_given_at_di_is_on_the_owners_device_record(stack: Stack) -> None:
    serial = f"E2E-SER-{next(_n):04d}"
    credential = _ready(stack, serial)
    new = stack.onboard(credential, run=lambda argv: (0, b"", b"")).credential
    assert new.serial == serial  # the replacement credential keeps it

    record = _record(stack, str(new.guid))
    assert record["serial"] == serial and record["devmod"]["sn"] == serial
    # The admin API's list, the CLI and the status page all show it.
    with stack.admin("owner") as owner:
        items = owner.get("/api/v1/devices", params={"limit": 500}).json()["items"]
        assert [d["serial"] for d in items if d["guid"] == str(new.guid)] == [serial]
        ui_sign_in(owner, stack.tokens["owner"])
        page = owner.get("/ui/devices").text
        assert serial in page
        detail = owner.get(f"/ui/devices/{new.guid}").text
        assert serial in detail
    out = CliRunner().invoke(
        app, ["owner", "devices", "list", "--url", stack.url("owner"), "--token", stack.tokens["owner"]]
    )
    assert out.exit_code == 0, out.output
    (row,) = [r for r in parse_table(out.output)[0] if r["GUID"] == str(new.guid)]
    assert (row["SERIAL"], row["MODEL"]) == (serial, "kiosk-v2")


def test_group_rules_by_serial_select_our_own_devices(stack: Stack) -> None:
    run = next(_n)
    with stack.admin("owner") as owner:
        for body in (
            {"name": f"by-pattern-{run}", "serial_pattern": f"E2E-PAT-{run}-*"},
            {"name": f"by-member-{run}", "members": [f"E2E-LISTED-{run}"]},
        ):
            assert owner.post("/api/v1/groups", json=body).status_code == 201
    matched = _ready(stack, f"E2E-PAT-{run}-0001")
    listed = _ready(stack, f"E2E-LISTED-{run}")
    for credential, group in ((matched, f"by-pattern-{run}"), (listed, f"by-member-{run}")):
        new = stack.onboard(credential, run=lambda argv: (0, b"", b"")).credential
        assert _record(stack, str(new.guid))["group"] == group


def test_credential_from_before_the_serial_was_kept_still_onboards(stack: Stack) -> None:
    credential = _ready(stack, f"E2E-OLD-{next(_n):04d}", keep_serial=False)
    new = stack.onboard(credential, run=lambda argv: (0, b"", b"")).credential
    assert new.serial is None
    record = _record(stack, str(new.guid))
    assert record["serial"] is None and record["devmod"].get("sn") is None  # as before


def test_devmod_over_the_owner_limit_is_split_over_http(stack: Stack) -> None:
    serial = f"E2E-BIG-{next(_n):04d}"
    credential = _ready(stack, serial)
    names = tuple(f"com.example.sensor-{i:03d}" for i in range(200))
    devmod = default_devmod(
        "kiosk-v2", serial=serial, modules=("devmod", "fdo.command", "fdo.download", "fdo.upload", *names)
    )
    size = sum(kv.size() for kv in devmod.to_kvs())
    assert size > 3 * 1300  # needs at least four DeviceServiceInfo messages at the owner's 1300
    files = stack.workdir / f"root-{serial}"
    before = _device_service_info_count(stack)
    result = stack.onboard(credential, devmod=devmod, root=files, run=lambda argv: (0, b"", b""))
    assert _device_service_info_count(stack) - before >= 4 + 1  # devmod's 68s, then at least one more
    assert (files / "etc" / "motd").read_text().startswith("Welcome")  # modules ran after devmod
    record = _record(stack, str(result.credential.guid))
    assert record["serial"] == serial
    assert record["devmod"]["modules"] == list(devmod.modules)
