"""``transport.client.tls_verify``: one TLS context per CA source, shared by clients."""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from fdo.crypto import generate_key, make_ca
from transport.client import tls_verify


def _write_ca(path: Path, name: str) -> None:
    path.write_bytes(make_ca(generate_key("ec256"), name, datetime.now(UTC)).public_bytes(Encoding.PEM))


def test_contexts_are_made_once_per_source(tmp_path: Path) -> None:
    assert tls_verify(False) is False
    default = tls_verify(True)
    assert isinstance(default, ssl.SSLContext) and default.verify_mode == ssl.CERT_REQUIRED
    assert tls_verify(True) is default

    one, two = tmp_path / "one.pem", tmp_path / "two.pem"
    _write_ca(one, "one")
    _write_ca(two, "two")
    first = tls_verify(str(one))
    assert isinstance(first, ssl.SSLContext) and first is not default
    assert tls_verify(str(one)) is first
    assert tls_verify(str(two)) not in (first, default)
    assert [c["subject"] for c in first.get_ca_certs()] == [((("commonName", "one"),),)]


def test_a_changed_bundle_gets_a_new_context(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    _write_ca(bundle, "old")
    old = tls_verify(str(bundle))
    _write_ca(bundle, "new")
    stat = bundle.stat()
    os.utime(bundle, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    new = tls_verify(str(bundle))
    assert new is not old
    assert isinstance(new, ssl.SSLContext)
    assert [c["subject"] for c in new.get_ca_certs()] == [((("commonName", "new"),),)]


def test_ssl_cert_file_is_its_own_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "env.pem"
    _write_ca(bundle, "env")
    default = tls_verify(True)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    from_env = tls_verify(True)
    assert from_env is not default
