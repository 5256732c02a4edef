"""Throw-away TLS material for tests and the demo: a CA and a server certificate.

:func:`write_test_tls` makes a fresh CA (:func:`fdo.crypto.make_ca`) and a server
certificate it signs for ``127.0.0.1`` / ``localhost`` (subjectAltName IP and DNS
entries), and writes ``tls-ca.pem``, ``tls-server.pem`` and ``tls-server.key`` into a
folder. The services serve HTTPS with the certificate and key; clients verify with the
CA file. Production deployments use certificates from their own PKI instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fdo.crypto import PrivateKeyT, generate_key, make_ca, private_key_to_pem, sig_alg_for


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the CA certificate, the server certificate and its private key."""

    ca: Path
    cert: Path
    key: Path


def make_server_cert(
    ca_key: PrivateKeyT,
    ca_cert: x509.Certificate,
    server_key: PrivateKeyT,
    *,
    ips: Sequence[str] = ("127.0.0.1",),
    dns: Sequence[str] = ("localhost",),
    now: datetime | None = None,
    days: int = 30,
) -> x509.Certificate:
    """A TLS server certificate signed by the CA, valid for ``ips`` and ``dns`` names."""
    now = now or datetime.now(UTC)
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    names += [x509.DNSName(name) for name in dns]
    common_name = (list(ips) + list(dns) + ["fdo-server"])[0]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
    )
    return builder.sign(ca_key, sig_alg_for(ca_key).hash)


def write_test_tls(folder: Path, *, ips: Sequence[str] = ("127.0.0.1",)) -> TlsFiles:
    """Write a throw-away CA and a server certificate/key for ``ips`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = generate_key("ec256")
    ca_cert = make_ca(ca_key, "fdo-bootc throw-away TLS CA", now, days=30)
    server_key = generate_key("ec256")
    cert = make_server_cert(ca_key, ca_cert, server_key, ips=ips, now=now)
    files = TlsFiles(ca=folder / "tls-ca.pem", cert=folder / "tls-server.pem", key=folder / "tls-server.key")
    files.ca.write_bytes(ca_cert.public_bytes(Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(Encoding.PEM))
    files.key.write_bytes(private_key_to_pem(server_key))
    files.key.chmod(0o600)
    return files
