"""What a request says about the original client, believed only from trusted proxies.

A reverse proxy that ends TLS tells the service the scheme the browser used in
``X-Forwarded-Proto``. Anybody can send that header, so it counts only when the peer of
the TCP connection (``request.client``) is in one of the configured trusted networks;
from any other peer the connection's own scheme is the answer.

The services run uvicorn with its own proxy-header handling off (``serve`` and
:mod:`fdo_server.launcher`), so ``request.client`` and ``request.url.scheme`` are the
connection's own and the trusted-network setting is the only place proxies are trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # in_networks serves the FDO path, which imports no web framework
    from starlette.requests import HTTPConnection

Network = IPv4Network | IPv6Network


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    """``address`` (text, IPv6 possibly in brackets; an IPv4-mapped IPv6 address counts as
    its IPv4 address) is in one of ``networks``; False for anything that is not an address
    (a Unix socket, a test client's made-up name)."""
    try:
        parsed = ip_address(address.strip("[]"))
    except ValueError:
        return False
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        parsed = parsed.ipv4_mapped
    return any(parsed.version == net.version and parsed in net for net in networks)


def peer_is_trusted(request: HTTPConnection, trusted: Sequence[Network]) -> bool:
    """The connection's peer address is in one of the ``trusted`` networks."""
    return bool(trusted) and request.client is not None and in_networks(request.client.host, trusted)


def original_scheme(request: HTTPConnection, trusted: Sequence[Network]) -> str:
    """``https`` or ``http``: how the client reached us.

    The connection's scheme, unless the peer is a trusted proxy that sent
    ``X-Forwarded-Proto``; of a comma-separated list the last value counts (the one the
    trusted proxy added itself).
    """
    scheme = "https" if request.url.scheme in ("https", "wss") else "http"
    if scheme == "https" or not peer_is_trusted(request, trusted):
        return scheme
    forwarded = request.headers.get("x-forwarded-proto", "")
    last = forwarded.rsplit(",", 1)[-1].strip().lower()
    return "https" if last == "https" else scheme


def is_https(request: HTTPConnection, trusted: Sequence[Network]) -> bool:
    """The client reached us over HTTPS, directly or through a trusted proxy."""
    return original_scheme(request, trusted) == "https"
