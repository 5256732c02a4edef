"""The settings ``serve`` hands the workers that serve only devices (:mod:`fdo_server.handed`):
read back, they are the settings class's values, name for name and type for type; they
are only ever standard-library values; a worker started without them reads the
environment itself."""

from __future__ import annotations

import base64
import importlib
import json
import os
import pickle
import subprocess
import sys
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from fdo.crypto import generate_key, public_key_to_pem
from fdo_server.config import load_settings, settings_values
from fdo_server.handed import HANDED_ENV, HandedSettings, hand_over, handed
from tests.conftest import REPO
from tests.test_import_isolation import _service_env


def _loaded(service: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(importlib.import_module(f"{service}.app").settings_class())


@pytest.mark.parametrize("service", ["manufacturer", "rendezvous", "owner"])
def test_handed_settings_are_the_settings_classes_values(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _service_env(service, tmp_path)
    prefix = f"FDO_{service.upper()}_"
    env.update(
        {
            f"{prefix}TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::/32",
            f"{prefix}SESSION_SWEEP_SECONDS": "12.5",
            f"{prefix}ADMIN_PORT": "8099",
            f"{prefix}ADMIN_PROCESS": "true",
        }
    )
    if service == "rendezvous":
        owner = tmp_path / "owner.pem"
        owner.write_bytes(public_key_to_pem(generate_key("ec256").public_key()))
        env[f"{prefix}TRUSTED_OWNER_KEYS"] = json.dumps([str(owner)])
    settings = _loaded(service, env, monkeypatch)
    text = hand_over(service, settings_values(settings))
    assert text is not None
    monkeypatch.setenv(HANDED_ENV, text)
    got = handed(service)
    assert isinstance(got, HandedSettings)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        assert getattr(got, name) == value, name
        assert type(getattr(got, name)) is type(value), name
    assert got.trusted_proxies == [IPv4Network("10.0.0.0/8"), IPv6Network("2001:db8::/32")]
    if service == "rendezvous":
        assert got.trusted_owner_keys == [tmp_path / "owner.pem"]
    else:
        assert got.keys == {"ec256": tmp_path / "key.pem"}
    if service == "owner":
        assert got.to2_urls == ["http://owner:8043"]


def test_a_worker_started_otherwise_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HANDED_ENV, raising=False)
    assert handed("rendezvous") is None
    text = hand_over("manufacturer", {"port": 8038})
    assert text is not None
    monkeypatch.setenv(HANDED_ENV, text)
    assert handed("rendezvous") is None  # handed to another service's workers
    got = handed("manufacturer")
    assert got is not None and got.port == 8038


def test_values_of_other_types_are_not_handed_over() -> None:
    """A setting that is not a standard-library value (a secret, any object) is never
    pickled for the workers: they then read the environment themselves."""

    class Local:
        pass

    assert hand_over("owner", {"token": SecretStr("s3cret")}) is None
    assert hand_over("owner", {"thing": Local()}) is None


def test_only_settings_values_are_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the variable holds, reading it runs no code: a pickle naming anything
    but the settings' own value types is refused."""

    class Runs:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("true",))

    monkeypatch.setenv(HANDED_ENV, base64.b64encode(pickle.dumps(("rendezvous", {"x": Runs()}))).decode())
    with pytest.raises(pickle.UnpicklingError, match="posix.system is not a settings value"):
        handed("rendezvous")


def test_the_settings_are_read_in_a_process_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m fdo_server.handed``: what ``python -m fdo_server.serve`` runs, so its
    supervisor never loads pydantic; a bad setting is one line and exit status 2."""
    env = _service_env("rendezvous", tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "fdo_server.handed", "rendezvous", "8099"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv(HANDED_ENV, done.stdout.strip())
    got = handed("rendezvous")
    assert (
        got is not None and got.admin_port == 8099 and got.database_url == env["FDO_RENDEZVOUS_DATABASE_URL"]
    )
    monkeypatch.setenv("FDO_RENDEZVOUS_MAX_BODY", "1")
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "fdo_server.handed", "rendezvous", "8099"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: FDO_RENDEZVOUS_MAX_BODY: ")
