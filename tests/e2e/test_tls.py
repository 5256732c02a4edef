"""HTTPS end to end: the three services behind a throw-away CA, the device verifying with it.

The stack serves manufacturer, rendezvous and owner over HTTPS with a server
certificate for 127.0.0.1 (subjectAltName IP) from a fresh CA. The manufacturer writes
an https rendezvous directive (RVProtocol HTTPS) into the credential, the owner's TO0
scheduler registers over https and verifies the rendezvous with ``FDO_OWNER_TLS_CA``,
and the device runs TO1 and TO2 over https verifying with the CA file. Without the CA
(system CAs only) the device refuses the servers and never falls back to http.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from device.onboard import OnboardError
from fdo.rvinfo import RVProtocol
from fdo_cli.main import app
from fdo_server import uvserver
from fdo_server.stack import Stack
from fdo_server.tls import write_test_tls
from tests.conftest import config_seen

_serial = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack-tls"), tls_ca=True) as running:
        yield running


def test_services_serve_https_only(stack: Stack) -> None:
    assert stack.tls is not None
    ctx = ssl.create_default_context(cafile=str(stack.tls.ca))
    for name in ("manufacturer", "rendezvous", "owner"):
        url = stack.url(name)
        assert url.startswith("https://127.0.0.1:")
        assert httpx.get(url + "/health", verify=ctx).status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url + "/health")  # system CAs do not know the throw-away CA
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/health")  # no plain HTTP


def test_device_onboards_over_https(stack: Stack) -> None:
    serial = f"TLS-{next(_serial):04d}"
    credential = stack.manufacture(key_type="ec256", serial=serial, model="kiosk-tls")
    guid = str(credential.guid)

    # The credential carries an https rendezvous directive (RVProtocol HTTPS).
    (directive,) = credential.rv_info.directives
    assert directive.protocol == RVProtocol.HTTPS
    assert directive.urls() == [stack.url("rendezvous")]

    stack.hand_off(guid, "ec256")
    info = stack.wait_for_to0(guid)  # the owner's TO0 ran over https
    assert info["to0"]["registered_until"]

    root = stack.workdir / f"root-{serial}"
    result = stack.onboard(credential, root=root, run=lambda argv: (0, b"", b""))
    assert result.rv_url == stack.url("rendezvous") and result.rv_url.startswith("https://")
    assert result.owner_url == stack.url("owner") and result.owner_url.startswith("https://")
    assert (root / "etc" / "motd").read_text().startswith("Welcome")
    assert result.credential.guid != credential.guid


def test_device_without_the_ca_refuses_and_never_uses_http(stack: Stack) -> None:
    serial = f"TLS-{next(_serial):04d}"
    credential = stack.manufacture(key_type="ec256", serial=serial, model="kiosk-tls")
    guid = str(credential.guid)
    stack.hand_off(guid, "ec256")
    stack.wait_for_to0(guid)

    with pytest.raises(OnboardError) as caught:
        stack.onboard(credential, root=stack.workdir / f"root-{serial}", verify=True)
    attempts = caught.value.attempts
    assert attempts
    for attempt in attempts:
        assert attempt.url.startswith("https://"), attempt
        assert attempt.error is not None and "TLS certificate verification failed" in attempt.error
    assert "TLS certificate verification failed" in str(caught.value)

    # The voucher is untouched: the same device with the CA still onboards.
    result = stack.onboard(credential, root=stack.workdir / f"root-{serial}")
    assert result.owner_url.startswith("https://")


# ------------------------------------------------------------------ the serve options

runner = CliRunner()


@pytest.mark.parametrize("service", ["manufacturer", "rendezvous", "owner"])
def test_serve_lists_tls_options(service: str) -> None:
    result = runner.invoke(app, [service, "serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--tls-cert" in result.output and "--tls-key" in result.output
    assert f"FDO_{service.upper()}_TLS_CERT" in result.output
    assert f"FDO_{service.upper()}_TLS_KEY" in result.output


@pytest.mark.parametrize("service", ["manufacturer", "rendezvous", "owner"])
def test_serve_passes_tls_files_to_uvicorn(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_test_tls(tmp_path)
    seen: dict[str, object] = {}
    monkeypatch.setattr(
        uvserver, "run", lambda config, _sockets=None: seen.update(config_seen(config)) or True
    )
    # Skip each service's settings check: this test is about the option wiring only.
    monkeypatch.setattr(f"{service}.cli._settings_or_die", _FakeSettings, raising=False)
    monkeypatch.setattr(f"{service}.cli._config", _FakeSettings, raising=False)
    monkeypatch.setattr(f"{service}.cli._settings", lambda _db: _FakeSettings(), raising=False)
    env = {f"FDO_{service.upper()}_TLS_KEY": str(files.key)}
    result = runner.invoke(app, [service, "serve", "--tls-cert", str(files.cert)], env=env)
    assert result.exit_code == 0, result.output
    assert seen["ssl_certfile"] == str(files.cert) and seen["ssl_keyfile"] == str(files.key)


@pytest.mark.parametrize("service", ["manufacturer", "rendezvous", "owner"])
def test_serve_needs_both_tls_files(service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_test_tls(tmp_path)
    monkeypatch.setattr(uvserver, "run", lambda *a, **kw: pytest.fail("must not start"))
    monkeypatch.setattr(f"{service}.cli._settings_or_die", _FakeSettings, raising=False)
    monkeypatch.setattr(f"{service}.cli._config", _FakeSettings, raising=False)
    monkeypatch.setattr(f"{service}.cli._settings", lambda _db: _FakeSettings(), raising=False)
    result = runner.invoke(app, [service, "serve", "--tls-cert", str(files.cert)], env={})
    assert result.exit_code == 2
    assert "--tls-cert and --tls-key must be given together" in result.output
    result = runner.invoke(
        app, [service, "serve", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(files.key)]
    )
    assert result.exit_code == 2 and "no such file" in result.output


class _FakeSettings:
    host = "127.0.0.1"
    port = 8041
    admin_host = "127.0.0.1"
    admin_port = None
    admin_process = False
    database_url = "sqlite://"  # in memory: serve's schema check migrates it on the spot

    @property
    def settings(self) -> _FakeSettings:  # stands in for the owner's checked config too
        return self


def test_owner_to0_client_uses_the_configured_ca(tmp_path: Path) -> None:
    from owner.settings import OwnerConfig, OwnerSettings, SettingsError, load_config
    from owner.to0 import default_http_factory, http_factory_for

    files = write_test_tls(tmp_path)
    with_ca = OwnerConfig(settings=OwnerSettings(tls_ca=files.ca), keys={}, to2_addr=None)
    client = http_factory_for(with_ca)("https://127.0.0.1:1")
    assert client.base_url == "https://127.0.0.1:1"
    client.close()
    without = OwnerConfig(settings=OwnerSettings(), keys={}, to2_addr=None)
    assert http_factory_for(without) is default_http_factory
    from fdo.crypto import generate_key, private_key_to_pem

    key = tmp_path / "owner.key"
    key.write_bytes(private_key_to_pem(generate_key("ec256")))
    with pytest.raises(SettingsError, match="FDO_OWNER_TLS_CA"):
        load_config(OwnerSettings(keys={"ec256": key}, tls_ca=tmp_path / "missing.pem"))
