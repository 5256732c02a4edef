"""Base URLs to rendezvous directives and TO2 addresses, and back (fdo/rvinfo.py)."""

from __future__ import annotations

import pytest

from fdo.rvinfo import RendezvousDirective, RVProtocol, RVTO2AddrEntry, TransportProtocol


@pytest.mark.parametrize(
    ("url", "dns", "ip", "protocol", "port"),
    [
        ("http://rv.example:8041", "rv.example", None, RVProtocol.HTTP, 8041),
        ("https://rv.example", "rv.example", None, RVProtocol.HTTPS, 443),
        ("http://10.0.0.5", None, "10.0.0.5", RVProtocol.HTTP, 80),
        ("https://[2001:db8::1]:8443", None, "2001:db8::1", RVProtocol.HTTPS, 8443),
    ],
)
def test_directive_from_url(
    url: str, dns: str | None, ip: str | None, protocol: RVProtocol, port: int
) -> None:
    directive = RendezvousDirective.from_url(url)
    assert (directive.dns, directive.ip, directive.protocol, directive.dev_port) == (dns, ip, protocol, port)
    assert directive.urls() == [url if ":" in url.split("//")[1].split("]")[-1] else f"{url}:{port}"]
    # Without RVOwnerPort the owner uses RVDevPort for TO0.
    assert directive.urls(for_owner=True) == directive.urls()


def test_to2_entry_from_url() -> None:
    entry = RVTO2AddrEntry.from_url("https://192.0.2.7:8443")
    assert entry.ip == bytes([192, 0, 2, 7]) and entry.dns is None
    assert entry.protocol == TransportProtocol.HTTPS and entry.urls() == ["https://192.0.2.7:8443"]
    assert RVTO2AddrEntry.from_url("http://owner.example").urls() == ["http://owner.example:80"]


@pytest.mark.parametrize("url", ["ftp://x", "http://", "owner.example:80", "http://h:99999", "http://h:abc"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        RendezvousDirective.from_url(url)
    with pytest.raises(ValueError):
        RVTO2AddrEntry.from_url(url)
