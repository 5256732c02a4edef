"""Settings from TOML files (``--config``/``FDO_<SERVICE>_CONFIG``) and the environment,
their checks at ``serve`` time, and ``docs/configuration.md`` listing every setting."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic_settings import BaseSettings, NoDecode
from typer.testing import CliRunner

from fdo.crypto import generate_key, make_ca, private_key_to_pem
from fdo_cli.main import app
from fdo_server import uvserver
from fdo_server.config import ConfigError, env_prefix, load_settings
from manufacturer.settings import ManufacturerSettings
from owner.settings import OwnerSettings
from rendezvous.settings import RendezvousSettings
from tests.conftest import REPO, config_seen

runner = CliRunner()

CLASSES: dict[str, type[BaseSettings]] = {
    "manufacturer": ManufacturerSettings,
    "rendezvous": RendezvousSettings,
    "owner": OwnerSettings,
}
SERVICES = list(CLASSES)


def _key(folder: Path, name: str, kind: str = "ec256") -> Path:
    path = folder / name
    path.write_bytes(private_key_to_pem(generate_key(kind)))
    return path


def _toml(service: str, folder: Path) -> str:
    """A complete settings file for ``service`` with its keys in ``folder``."""
    db = f'database_url = "sqlite:///{folder / (service + ".db")}"\n'
    if service == "rendezvous":
        return db + "port = 9041\nmax_wait_seconds = 3600\n"
    if service == "owner":
        key = _key(folder, "owner-ec256.pem")
        return db + f'to2_urls = ["http://owner.example:8043"]\n\n[keys]\nec256 = "{key}"\n'
    ca_key = generate_key("ec384")
    ca_key_path = folder / "ca.key"
    ca_key_path.write_bytes(private_key_to_pem(ca_key))
    ca_cert = folder / "ca.pem"
    ca_cert.write_bytes(make_ca(ca_key, "test CA", datetime.now(UTC)).public_bytes(Encoding.PEM))
    key = _key(folder, "mfg-ec256.pem")
    return (
        db
        + f'device_ca_key = "{ca_key_path}"\ndevice_ca_cert = "{ca_cert}"\n'
        + 'rendezvous = ["http://rv.example:8041"]\nsession_ttl_seconds = 900\n\n'
        + f'[keys]\nec256 = "{key}"\n'
    )


def _clean_env(service: str, **extra: str | None) -> dict[str, str | None]:
    """CliRunner env: no settings file variable (restored after the run) plus ``extra``."""
    return {f"FDO_{service.upper()}_CONFIG": None, **extra}


def _invoke_serve(service: str, args: list[str], env: dict[str, str | None], seen: dict[str, Any]) -> Any:
    """Run ``fdo <service> serve``; the fake server run records what a worker would load."""

    def fake_run(config: Any, sockets: Any = None) -> bool:
        seen.update(config_seen(config))
        seen["settings"] = load_settings(CLASSES[service])  # what app_from_env reads
        return True

    mp = pytest.MonkeyPatch()
    mp.setattr(uvserver, "run", fake_run)
    try:
        return runner.invoke(app, [service, "serve", *args], env=env)
    finally:
        mp.undo()


# ------------------------------------------------------------------ TOML files


@pytest.mark.parametrize("service", SERVICES)
def test_serve_reads_the_config_file(service: str, tmp_path: Path) -> None:
    config = tmp_path / f"{service}.toml"
    config.write_text(_toml(service, tmp_path))
    seen: dict[str, Any] = {}
    result = _invoke_serve(service, ["--config", str(config)], _clean_env(service), seen)
    assert result.exit_code == 1 and f"run `fdo {service} db upgrade`" in result.output
    upgrade = runner.invoke(app, [service, "db", "upgrade", "--config", str(config)], env=_clean_env(service))
    assert upgrade.exit_code == 0, upgrade.output
    result = _invoke_serve(service, ["--config", str(config)], _clean_env(service), seen)
    assert result.exit_code == 0, result.output
    assert isinstance(seen["settings"], CLASSES[service])
    settings: Any = seen["settings"]
    assert settings.database_url == f"sqlite:///{tmp_path / (service + '.db')}"
    if service == "rendezvous":
        assert settings.max_wait_seconds == 3600 and seen["port"] == 9041
    elif service == "owner":
        assert settings.to2_urls == ["http://owner.example:8043"] and set(settings.keys) == {"ec256"}
    else:
        assert settings.session_ttl_seconds == 900 and set(settings.keys) == {"ec256"}


@pytest.mark.parametrize("service", SERVICES)
def test_config_file_from_the_environment(service: str, tmp_path: Path) -> None:
    config = tmp_path / f"{service}.toml"
    config.write_text(_toml(service, tmp_path))
    seen: dict[str, Any] = {}
    env: dict[str, str | None] = {f"FDO_{service.upper()}_CONFIG": str(config)}
    upgrade = runner.invoke(app, [service, "db", "upgrade"], env=env)
    assert upgrade.exit_code == 0 and "upgraded from an empty database" in upgrade.output, upgrade.output
    result = _invoke_serve(service, [], env, seen)
    assert result.exit_code == 0, result.output
    assert seen["settings"].database_url.endswith(f"{service}.db")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "manufacturer.toml"
    config.write_text(_toml("manufacturer", tmp_path))
    extra = _key(tmp_path, "mfg-ec384.pem", "ec384")
    monkeypatch.delenv("FDO_MANUFACTURER_CONFIG", raising=False)
    monkeypatch.setenv("FDO_MANUFACTURER_SESSION_TTL_SECONDS", "1200")
    monkeypatch.setenv("FDO_MANUFACTURER_KEYS__EC384", str(extra))
    settings = load_settings(ManufacturerSettings, config)
    assert type(settings) is ManufacturerSettings
    assert settings.session_ttl_seconds == 1200  # the environment wins
    assert settings.rendezvous == ["http://rv.example:8041"]  # the file
    assert set(settings.keys) == {"ec256", "ec384"}  # nested values merge
    assert settings.max_body == 65535  # the default


@pytest.mark.parametrize("service", SERVICES)
def test_config_file_named_by_variable(service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"FDO_{service.upper()}_"
    config = tmp_path / f"{service}.toml"
    config.write_text('port = 9999\nhost = "127.0.0.2"\n')
    monkeypatch.setenv(f"{prefix}CONFIG", str(config))
    monkeypatch.delenv(f"{prefix}PORT", raising=False)
    monkeypatch.delenv(f"{prefix}HOST", raising=False)
    settings = load_settings(CLASSES[service])
    assert (settings.port, settings.host) == (9999, "127.0.0.2")  # type: ignore[attr-defined]
    monkeypatch.setenv(f"{prefix}PORT", "9998")
    assert load_settings(CLASSES[service]).port == 9998  # type: ignore[attr-defined]
    monkeypatch.setenv(f"{prefix}PORT", "0")
    with pytest.raises(ConfigError, match=f"^{prefix}PORT: "):
        load_settings(CLASSES[service])


@pytest.mark.parametrize("service", SERVICES)
def test_serve_listens_where_the_settings_say_unless_told(service: str, tmp_path: Path) -> None:
    config = tmp_path / f"{service}.toml"
    top = 'port = 9123\nhost = "127.0.0.3"\n'  # before the file's tables
    config.write_text(top + _toml(service, tmp_path).replace("port = 9041\n", ""))
    env = _clean_env(service)
    assert runner.invoke(app, [service, "db", "upgrade", "--config", str(config)], env=env).exit_code == 0
    seen: dict[str, Any] = {}
    result = _invoke_serve(service, ["--config", str(config)], env, seen)
    assert result.exit_code == 0, result.output
    assert (seen["port"], seen["host"]) == (9123, "127.0.0.3")
    result = _invoke_serve(service, ["--config", str(config), "--port", "9124", "--host", "::1"], env, seen)
    assert result.exit_code == 0, result.output
    assert (seen["port"], seen["host"]) == (9124, "::1")


@pytest.mark.parametrize("service", SERVICES)
def test_unknown_key_in_the_file(service: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('databse_url = "sqlite://"\n')
    result = _invoke_serve(service, ["--config", str(config)], _clean_env(service), {})
    assert result.exit_code == 2
    assert result.output.strip() == f"error: settings file {config}: unknown setting(s) databse_url"


@pytest.mark.parametrize("service", SERVICES)
def test_missing_file(service: str, tmp_path: Path) -> None:
    config = tmp_path / "nope.toml"
    result = _invoke_serve(service, ["--config", str(config)], _clean_env(service), {})
    assert result.exit_code == 2
    assert result.output.strip() == f"error: settings file {config}: no such file"


def test_invalid_toml(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("port = \n")
    with pytest.raises(ConfigError, match=r"^settings file .*bad\.toml: not valid TOML"):
        load_settings(RendezvousSettings, config)


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("url", ["notaurl", "sqlite:////nonexistent-folder/x/service.db"])
def test_bad_database_url(service: str, url: str, tmp_path: Path) -> None:
    config = tmp_path / f"{service}.toml"
    config.write_text(_toml(service, tmp_path))
    env = _clean_env(service, **{f"FDO_{service.upper()}_DATABASE_URL": url})
    result = _invoke_serve(service, ["--config", str(config)], env, {})
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: FDO_{service.upper()}_DATABASE_URL: "), lines


def test_bad_database_url_from_the_file(tmp_path: Path) -> None:
    config = tmp_path / "owner.toml"
    config.write_text('database_url = "sqlite:///nowhere/at/all/owner.db"\n')
    with pytest.raises(ConfigError, match=r"^FDO_OWNER_DATABASE_URL: .*folder nowhere/at/all does not exist"):
        load_settings(OwnerSettings, config)


def test_good_database_urls() -> None:
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///relative.db", "postgresql+psycopg://u@h/db"):
        assert RendezvousSettings(database_url=url).database_url == url


@pytest.mark.parametrize(
    ("service", "name", "value"),
    [
        ("rendezvous", "PORT", "not-a-port"),
        ("manufacturer", "MAX_BODY", "1"),
        ("owner", "TO0_RENEW_FRACTION", "2"),
        ("owner", "UI_IDLE_SECONDS", "0"),
        ("owner", "TRUSTED_PROXIES", '["proxy.example"]'),
        ("rendezvous", "TRUSTED_PROXIES", "10.0.0.0/33"),
    ],
)
def test_bad_value_names_the_setting(service: str, name: str, value: str, tmp_path: Path) -> None:
    config = tmp_path / f"{service}.toml"
    config.write_text(_toml(service, tmp_path))
    env = _clean_env(service, **{f"FDO_{service.upper()}_{name}": value})
    result = _invoke_serve(service, ["--config", str(config)], env, {})
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: FDO_{service.upper()}_{name}"), lines


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    ("name", "value", "good"),
    [
        ("MAX_BODY", "1023", False),
        ("MAX_BODY", "1024", True),
        ("MAX_BODY", str(16 * 1024 * 1024), True),
        ("MAX_BODY", str(16 * 1024 * 1024 + 1), False),
        ("SESSION_TTL_SECONDS", "9", False),
        ("SESSION_TTL_SECONDS", "10", True),
        ("SESSION_TTL_SECONDS", "86400", True),
        ("SESSION_TTL_SECONDS", "86401", False),
    ],
)
def test_shared_settings_have_the_same_bounds_in_every_service(
    service: str, name: str, value: str, good: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = CLASSES[service]
    monkeypatch.setenv(f"FDO_{service.upper()}_{name}", value)
    if good:
        assert getattr(load_settings(cls), name.lower()) == int(value)
    else:
        with pytest.raises(ConfigError, match=f"^FDO_{service.upper()}_{name}: "):
            load_settings(cls)


def test_missing_key_file_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "owner.toml"
    config.write_text(_toml("owner", tmp_path).replace("owner-ec256.pem", "gone.pem"))
    result = _invoke_serve("owner", ["--config", str(config)], _clean_env("owner"), {})
    assert result.exit_code == 2
    assert result.output.startswith("error: FDO_OWNER_KEYS: ") and "gone.pem" in result.output


# ------------------------------------------------------------------ the documentation


def _doc_default(value: Any) -> str:
    if value is None:
        return "unset"
    if value in ([], {}):
        return "empty"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


@pytest.mark.parametrize("service", SERVICES)
def test_docs_list_every_setting_with_its_default(service: str) -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    cls = CLASSES[service]
    for name, field in cls.model_fields.items():
        variable = f"{env_prefix(cls)}{name.upper()}"
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{variable}` |")]
        assert len(rows) == 1, f"{variable} is not in docs/configuration.md"
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
        assert cells[1] == f"`{name}`", rows[0]
        assert cells[2] == _doc_default(default), f"{variable}: default {default!r}, doc {cells[2]}"
    # The documented rows of this service are exactly its settings.
    documented = set(re.findall(rf"^\| `({env_prefix(cls)}[A-Z0-9_]+)` \|", doc, flags=re.MULTILINE))
    assert documented == {f"{env_prefix(cls)}{n.upper()}" for n in cls.model_fields}


def test_docs_mention_the_other_options() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for word in ("--config", "--tls-cert", "--tls-key", "FDO_LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR"):
        assert word in doc
    for service in SERVICES:
        assert f"FDO_{service.upper()}_" in doc


# ------------------------------------------------------------------ list and map settings


def _complex_fields() -> list[tuple[str, str]]:
    """(service, field) of every list, set or map setting that pydantic settings reads
    from the environment as JSON (those marked ``NoDecode`` take plain text too)."""
    out = []
    for service, cls in CLASSES.items():
        for name, info in cls.model_fields.items():
            shown = str(info.annotation)
            if any(isinstance(m, NoDecode) or m is NoDecode for m in info.metadata):
                continue
            if any(kind in shown for kind in ("list[", "dict[", "set[", "Mapping[", "Sequence[")):
                out.append((service, name))
    return out


@pytest.mark.parametrize(("service", "field"), _complex_fields())
def test_a_list_or_map_setting_written_as_plain_text_is_one_line_and_exit_2(
    service: str, field: str, tmp_path: Path
) -> None:
    name = f"{env_prefix(CLASSES[service])}{field.upper()}"
    env = _clean_env(service, **{name: "http://plain.example"})
    result = runner.invoke(app, [service, "db", "current"], env=env)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {name}: not valid JSON") and "e.g." in line
    assert "Traceback" not in result.output


def test_every_service_has_list_or_map_settings_to_check() -> None:
    assert {service for service, _ in _complex_fields()} == set(SERVICES)
