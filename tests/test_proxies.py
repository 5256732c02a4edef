"""Forwarded headers count only from trusted proxies (:mod:`fdo_server.proxies`)."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from starlette.requests import Request

from fdo_server.proxies import Network, is_https, original_scheme, peer_is_trusted

TRUSTED: list[Network] = [ip_network("10.0.0.0/8"), ip_network("fd00::/8"), ip_network("127.0.0.2/32")]


def request(peer: str | None, scheme: str = "http", forwarded: str | None = None) -> Request:
    headers = [] if forwarded is None else [(b"x-forwarded-proto", forwarded.encode())]
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": scheme,
            "path": "/ui",
            "query_string": b"",
            "headers": [(b"host", b"owner.example"), *headers],
            "client": None if peer is None else (peer, 40000),
            "server": ("127.0.0.1", 8043),
        }
    )


@pytest.mark.parametrize(
    ("peer", "scheme", "forwarded", "expected"),
    [
        ("10.1.2.3", "http", "https", "https"),  # the trusted proxy ended TLS
        ("10.1.2.3", "http", "HTTPS ", "https"),
        ("10.1.2.3", "http", "http, https", "https"),  # the last value is the proxy's own
        ("10.1.2.3", "http", "https, http", "http"),
        ("10.1.2.3", "http", None, "http"),
        ("10.1.2.3", "http", "ftp", "http"),
        ("::ffff:10.1.2.3", "http", "https", "https"),  # IPv4-mapped peer
        ("fd12::1", "http", "https", "https"),
        ("127.0.0.2", "http", "https", "https"),
        ("127.0.0.1", "http", "https", "http"),  # anybody else: the header is ignored
        ("192.0.2.9", "http", "https", "http"),
        ("fe80::1", "http", "https", "http"),
        ("testclient", "http", "https", "http"),  # not an address
        (None, "http", "https", "http"),
        ("192.0.2.9", "https", None, "https"),  # TLS to us directly
        ("10.1.2.3", "https", "http", "https"),
    ],
)
def test_original_scheme(peer: str | None, scheme: str, forwarded: str | None, expected: str) -> None:
    got = request(peer, scheme, forwarded)
    assert original_scheme(got, TRUSTED) == expected
    assert is_https(got, TRUSTED) is (expected == "https")


def test_nobody_is_trusted_without_the_setting() -> None:
    assert not peer_is_trusted(request("127.0.0.1"), [])
    assert original_scheme(request("10.1.2.3", forwarded="https"), []) == "http"
