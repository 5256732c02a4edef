"""``fdo device onboard`` without typer (:mod:`fdo_cli.device_onboard`): the same options,
the same values, and typer for everything that is not plain."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import fdo_cli.device
from device.credfile import read_credential
from fdo_cli.device_onboard import OPTIONS, REQUIRED, CipherName, KexName, parse
from fdo_cli.main import app, main
from tests.device.test_cli import world  # noqa: F401 - the fixture
from tests.device.world import MFR_URL, World

runner = CliRunner()

_KINDS = {
    Path: "path", str: "str", int: "int", float: "float", bool: "flag", KexName: "kex", CipherName: "cipher"
}  # fmt: skip


def _base(annotation: Any) -> Any:
    """``Path`` from ``Annotated[Path | None, ...]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def test_the_table_says_what_the_typer_command_declares() -> None:
    command = typer.main.get_command(fdo_cli.device.app).commands["onboard"]  # type: ignore[attr-defined]
    hints = typing.get_type_hints(fdo_cli.device.onboard, include_extras=True)
    declared = {}
    for param in command.params:
        if param.name == "help":
            continue
        assert not param.secondary_opts and len(param.opts) == 1, param.opts
        declared[param.opts[0]] = param
    assert list(declared) == list(OPTIONS)
    for name, param in declared.items():
        option = OPTIONS[name]
        assert option.dest == param.name, name
        assert option.envvar == param.envvar, name
        assert option.kind == _KINDS[_base(hints[param.name])], name
        assert (option.default is REQUIRED) == param.required, name
        if option.default is not REQUIRED:
            assert option.default == param.default, name


def _typer_kwargs(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(fdo_cli.device, "run_onboard", lambda **kw: seen.update(kw))
    out = runner.invoke(app, ["device", "onboard", *args], env=env)
    assert out.exit_code == 0, out.output
    return seen


PLAIN: list[tuple[list[str], dict[str, str]]] = [
    (["--credential", "c.bin"], {}),
    (["--credential=c.bin", "--json", "--no-bootc", "--no-command"], {}),
    (
        [],
        {"FDO_DEVICE_CREDENTIAL": "/c.bin", "FDO_DEVICE_FILES_ROOT": "/root", "FDO_DEVICE_MAX_ATTEMPTS": "0"},
    ),
    (["--credential", "c", "--max-attempts", "7"], {"FDO_DEVICE_MAX_ATTEMPTS": "3", "FDO_DEVICE_SERIAL": ""}),
    (["--credential", "c.bin", "--kex", "ECDH384", "--cipher", "A256GCM", "--deadline", "2.5"], {}),
    (["--credential", "a", "--credential", "b", "--modules", "fdo.command,fdo.download"], {}),
    (
        [
            "--credential",
            "c",
            "--dry-run",
            "p.json",
            "--apply-root",
            "/r",
            "--state-dir",
            "/s",
            "--bootc",
            "b",
        ],
        {"FDO_DEVICE_SYSTEMCTL": "sc", "FDO_DEVICE_ONBOARDED_FILE": "/o", "FDO_DEVICE_CA_BUNDLE": "ca.pem"},
    ),
    (["--serial", "SN-1", "--onboarded-file", "o", "--ca-bundle", "x.pem"], {"FDO_DEVICE_CREDENTIAL": "c"}),
]


@pytest.mark.parametrize(("args", "env"), PLAIN)
def test_plain_arguments_give_what_typer_gives(
    args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in OPTIONS.values() if n.envvar]:
        monkeypatch.delenv(str(name.envvar), raising=False)
    parsed = parse(args, env)
    assert parsed is not None
    assert parsed == _typer_kwargs(args, env, monkeypatch)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        ([], {}),  # --credential missing
        (["--credential"], {}),
        (["--credential", "c", "--help"], {}),
        (["--credential", "c", "extra"], {}),
        (["--credential", "c", "--json=yes"], {}),
        (["--credential", "c", "--max-attempts", "-1"], {}),
        (["--credential", "c", "--max-attempts", "+3"], {}),
        (["--credential", "c", "--deadline", "1e3"], {}),
        (["--credential", "c", "--kex", "ecdh256"], {}),
        (["--credential", "c", "--serial", ""], {}),
        (["--credential", "c", "--modules", ""], {}),
        (["--credential", "-c"], {}),
        (["--credential", "c", "--"], {}),
        (["--cred", "c"], {}),
        (["--credential", "c"], {"FDO_DEVICE_MAX_ATTEMPTS": "many"}),
    ],
)
def test_anything_else_is_left_to_typer(args: list[str], env: dict[str, str]) -> None:
    assert parse(args, env) is None


def test_main_onboards_without_typer(
    world: World,  # noqa: F811 - the fixture
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "cred.bin"
    out = runner.invoke(app, ["device", "di", "--url", MFR_URL, "--credential", str(path), "--serial", "S1"])
    assert out.exit_code == 0, out.output
    before = read_credential(path)
    world.hand_over(world.vouchers[-1])
    with pytest.raises(SystemExit) as done:
        main(["device", "onboard", "--credential", str(path), "--root", str(tmp_path / "root"), "--json"])
    assert done.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["previous_guid"] == str(before.guid) and printed["guid"] == str(read_credential(path).guid)


def test_main_fails_as_typer_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.bin"
    with pytest.raises(SystemExit) as done:
        main(["device", "onboard", "--credential", str(missing)])
    assert done.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and str(missing) in captured.err
    typer_way = runner.invoke(app, ["device", "onboard", "--credential", str(missing)])
    assert typer_way.exit_code == 1 and typer_way.output == captured.err
