"""The whole system on one machine: manufacturer, rendezvous and owner as real servers.

:class:`Stack` generates throw-away keys and a device CA into a work folder, migrates the
databases (SQLite files in the work folder unless database URLs are given) and creates
admin tokens, starts the three services under uvicorn on free local ports, and offers
the operator steps the demo, the end-to-end tests and the benchmark share: DI for a
device, the hand-off (the manufacturer extends the voucher to the owner's key, the owner
imports it), waiting for the owner's TO0, and onboarding (TO1 then TO2) with the real device client.

With ``split_admin`` each service serves its admin plane on a listener of its own
(:mod:`fdo_server.planes`): :meth:`Stack.url` is then the device listener only and
:meth:`Stack.admin_url` the admin one; :meth:`Stack.admin` always uses the latter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.serialization import Encoding
from sqlmodel import Session

from device.modules import standard_modules
from device.onboard import OnboardResult, default_client_factory, onboard, run_di
from fdo.credential import DeviceCredential
from fdo.crypto import (
    KEY_KINDS,
    PrivateKeyT,
    generate_key,
    make_ca,
    private_key_to_pem,
    public_key_to_pem,
)
from fdo.kex import CipherSuite, KexSuite
from fdo.serviceinfo import Devmod
from fdo_server.auth import Role, create_token
from fdo_server.db import make_engine, sqlite_url
from fdo_server.launcher import ServiceProcess, free_ports
from fdo_server.migrate import upgrade
from fdo_server.tls import TlsFiles, write_test_tls
from transport.client import tls_verify

SERVICES = ("manufacturer", "rendezvous", "owner")

#: What the owner delivers to every device in the demo (fdo.download then fdo.command).
DEMO_SERVICE_INFO = """\
[[download]]
path = "etc/motd"
source = "motd"

[[command]]
command = "true"
args = []
"""


def without_address_limits(service: str) -> dict[str, str]:
    """``service``'s environment with the per-address rate limit and the connection limit
    off, for a :class:`Stack` (``env``) whose every device comes from 127.0.0.1, as no real
    fleet does: the benchmarks (``docs/benchmarks.md``)."""
    prefix = f"FDO_{service.upper()}_"
    return {f"{prefix}FIRST_MESSAGE_RATE": "0", f"{prefix}MAX_CONNECTIONS": "0"}


@dataclass
class Stack:
    """Three running services and what an operator holds to drive them."""

    workdir: Path
    database_urls: Mapping[str, str] = field(default_factory=dict)
    workers: Mapping[str, int] = field(default_factory=dict)
    owner_env: Mapping[str, str] = field(default_factory=dict)
    #: More environment of each service by name (applied last, over ``owner_env`` too).
    env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    owner_keys: dict[str, PrivateKeyT] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    #: Serve all three services over HTTPS with a throw-away CA made in the work folder;
    #: the credential then carries https rendezvous and TO2 addresses.
    tls_ca: bool = False
    tls: TlsFiles | None = None
    #: Serve each service's admin plane on a port of its own (``serve --admin-port``).
    split_admin: bool = False

    # ------------------------------------------------------------------ life cycle

    def start(self) -> Stack:
        """Generate material, create tokens and start the three servers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        free = iter(free_ports(2 * len(SERVICES)))
        ports = {name: next(free) for name in SERVICES}
        admin_ports = {name: next(free) for name in SERVICES}
        if self.tls_ca:
            self.tls = write_test_tls(self.workdir / "tls")
        scheme = "https" if self.tls else "http"
        urls = {name: f"{scheme}://127.0.0.1:{ports[name]}" for name in SERVICES}
        db = {
            name: self.database_urls.get(name) or sqlite_url(self.workdir / f"{name}.db") for name in SERVICES
        }

        mfr_keys = self._write_keys("manufacturer", {kind: generate_key(kind) for kind in KEY_KINDS})
        self.owner_keys = {kind: generate_key(kind) for kind in KEY_KINDS}
        owner_key_files = self._write_keys("owner", self.owner_keys)
        ca_key = generate_key("ec384")
        ca_cert = make_ca(ca_key, "fdo-bootc demo device CA", datetime.now(UTC))
        (self.workdir / "device-ca.key").write_bytes(private_key_to_pem(ca_key))
        (self.workdir / "device-ca.key").chmod(0o600)
        (self.workdir / "device-ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
        (self.workdir / "motd").write_text("Welcome to a device onboarded by fdo-bootc\n")
        (self.workdir / "service-info.toml").write_text(DEMO_SERVICE_INFO)

        envs: dict[str, dict[str, str]] = {
            "manufacturer": {
                "FDO_MANUFACTURER_DATABASE_URL": db["manufacturer"],
                "FDO_MANUFACTURER_KEYS": json.dumps(mfr_keys),
                "FDO_MANUFACTURER_DEVICE_CA_KEY": str(self.workdir / "device-ca.key"),
                "FDO_MANUFACTURER_DEVICE_CA_CERT": str(self.workdir / "device-ca.pem"),
                "FDO_MANUFACTURER_RENDEZVOUS": urls["rendezvous"],
            },
            "rendezvous": {
                "FDO_RENDEZVOUS_DATABASE_URL": db["rendezvous"],
                "FDO_RENDEZVOUS_MAX_WAIT_SECONDS": "86400",
            },
            "owner": {
                "FDO_OWNER_DATABASE_URL": db["owner"],
                "FDO_OWNER_KEYS": json.dumps(owner_key_files),
                "FDO_OWNER_TO2_URLS": json.dumps([urls["owner"]]),
                "FDO_OWNER_TO0_RETRY_SECONDS": "1",
                "FDO_OWNER_SERVICE_INFO": str(self.workdir / "service-info.toml"),
                **({"FDO_OWNER_TLS_CA": str(self.tls.ca)} if self.tls else {}),
                **self.owner_env,
            },
        }
        for name, extra in self.env.items():
            envs[name].update(extra)
        for name in SERVICES:
            self.tokens[name] = _bootstrap_token(name, db[name])
        for name in SERVICES:
            proc = ServiceProcess(
                name=name,
                factory=f"{name}.app:app_from_env",
                env=envs[name],
                workers=self.workers.get(name, 1),
                port=ports[name],
                log_path=self.workdir / f"{name}.log",
                tls_cert=self.tls.cert if self.tls else None,
                tls_key=self.tls.key if self.tls else None,
                tls_ca=self.tls.ca if self.tls else None,
                admin_port=admin_ports[name] if self.split_admin else None,
            )
            self.services[name] = proc
        try:
            for proc in self.services.values():
                proc.spawn()
            for proc in self.services.values():
                proc.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.services.values():
            proc.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_keys(self, who: str, keys: Mapping[str, PrivateKeyT]) -> dict[str, str]:
        paths = {}
        for kind, key in keys.items():
            path = self.workdir / f"{who}-{kind}.key"
            path.write_bytes(private_key_to_pem(key))
            path.chmod(0o600)
            paths[kind] = str(path)
        return paths

    def url(self, service: str) -> str:
        """The service's device listener (both planes unless ``split_admin``)."""
        return self.services[service].url

    def admin_url(self, service: str) -> str:
        """The service's admin listener (:meth:`url` unless ``split_admin``)."""
        return self.services[service].admin_url

    @property
    def verify(self) -> bool | str:
        """What clients verify the services with: the throw-away CA file, or the system CAs."""
        return str(self.tls.ca) if self.tls else True

    def admin(self, service: str) -> httpx.Client:
        """An HTTP client for a service's admin API, with its admin token."""
        return httpx.Client(
            base_url=self.admin_url(service),
            headers={"Authorization": f"Bearer {self.tokens[service]}"},
            timeout=30,
            verify=tls_verify(self.verify),  # one context per process: loading CAs costs some 20 ms
        )

    # ------------------------------------------------------------------ operator steps

    def manufacture(self, *, key_type: str = "ec256", serial: str, model: str) -> DeviceCredential:
        """DI: the device (or a factory station for it) gets its credential."""
        return run_di(
            self.url("manufacturer"),
            key_type=key_type,
            serial=serial,
            model=model,
            http_client_factory=default_client_factory(verify=self.verify),
        )

    def hand_off(self, guid: str, key_type: str) -> str:
        """The manufacturer extends the voucher to the owner's key; the owner imports it."""
        owner_pub = public_key_to_pem(self.owner_keys[key_type].public_key()).decode()
        with self.admin("manufacturer") as mfr:
            resp = mfr.post(f"/api/v1/vouchers/{guid}/extend", json={"owner_key_pem": owner_pub})
            resp.raise_for_status()
            pem = str(resp.json()["pem"])
        with self.admin("owner") as owner:
            resp = owner.post("/api/v1/vouchers", content=pem, headers={"Content-Type": "text/plain"})
            if resp.status_code != 200:
                raise RuntimeError(f"owner refused the voucher: {resp.text}")
        return pem

    def wait_for_to0(self, guid: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the owner's TO0 scheduler has registered the voucher."""
        deadline = time.monotonic() + timeout
        with self.admin("owner") as owner:
            while True:
                info: dict[str, Any] = owner.get(f"/api/v1/vouchers/{guid}").json()
                to0 = info.get("to0") or {}
                if to0.get("registered_until"):
                    return info
                if time.monotonic() > deadline:
                    raise TimeoutError(f"TO0 did not complete for {guid}: {to0}")
                time.sleep(0.1)

    def onboard(
        self,
        credential: DeviceCredential,
        *,
        kex: KexSuite | None = None,
        cipher: CipherSuite = CipherSuite.A128GCM,
        root: Path | None = None,
        run: Callable[[list[str]], tuple[int, bytes, bytes]] | None = None,
        verify: bool | str | None = None,
        devmod: Devmod | None = None,
    ) -> OnboardResult:
        """First boot: TO1 then TO2 with the real device client.

        ``verify`` overrides what the device verifies HTTPS with (default :attr:`verify`);
        ``devmod`` replaces the one the client builds from this machine and the credential.
        """
        files = root or (self.workdir / "device-root")
        files.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {} if run is None else {"run": run}
        return onboard(
            credential,
            kex=kex,
            cipher=cipher,
            devmod=devmod,
            modules=lambda: standard_modules(files, **kwargs),
            verify=self.verify if verify is None else verify,
            max_attempts=3,
            sleep=lambda s: time.sleep(min(s, 0.5)),
        )


def _bootstrap_token(service: str, database_url: str) -> str:
    """Migrate the service's database (as `db upgrade`), then make the first admin token
    locally on it (as `token create`)."""
    engine = make_engine(database_url)
    try:
        upgrade(engine, service)
        with Session(engine) as db:
            token = create_token(db, f"{service}-bootstrap", Role.ADMIN)
            db.commit()
        return token
    finally:
        engine.dispose()
