"""``fdo_server.ratelimit`` and the network settings: token buckets (rate, burst, bounded
memory), the client address behind trusted proxies, the network list parser."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from fdo_server.config import parse_networks
from fdo_server.ratelimit import TokenBuckets, client_address, first_message_routes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(2.0, 3, max_keys=10, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert buckets.take("b") == 0.0  # another address has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.now += 3600  # refilled up to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_first_refusal_is_reported_once_per_episode() -> None:
    clock = Clock()
    buckets = TokenBuckets(1.0, 1, max_keys=10, clock=clock)
    buckets.take("a")
    assert buckets.take("a") > 0 and buckets.first_refusal("a")
    assert buckets.take("a") > 0 and not buckets.first_refusal("a")
    clock.now += 1
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0 and buckets.first_refusal("a")


def test_memory_is_bounded_least_recently_seen_forgotten() -> None:
    clock = Clock()
    buckets = TokenBuckets(0.001, 1, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        buckets.take(key)
    assert buckets.take("a") > 0  # "a" is now the most recently seen
    buckets.take("d")  # forgets "b"
    assert len(buckets) == 3
    assert buckets.take("a") > 0 and buckets.take("c") > 0
    assert buckets.take("b") == 0.0  # forgotten: a fresh bucket


def _scope(peer: str, *forwarded: str) -> dict[str, object]:
    return {"client": (peer, 5000), "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded]}


TRUSTED = [ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8")]


def test_client_address_believes_only_trusted_proxies() -> None:
    # No trusted proxies: the peer, whatever the header says.
    assert client_address(_scope("127.0.0.1", "198.51.100.7"), []) == "127.0.0.1"
    # An untrusted peer's header is ignored.
    assert client_address(_scope("192.0.2.1", "198.51.100.7"), TRUSTED) == "192.0.2.1"
    # Through trusted proxies: the first untrusted address from the right.
    scope = _scope("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.2.3")
    assert client_address(scope, TRUSTED) == "198.51.100.7"
    # Repeated headers are one list; a trusted proxy without the header: the peer.
    assert client_address(_scope("127.0.0.1", "203.0.113.1", "10.0.0.9"), TRUSTED) == "203.0.113.1"
    assert client_address(_scope("127.0.0.1"), TRUSTED) == "127.0.0.1"
    # Garbage is untrusted, so it is the address (a key of its own, in no network).
    assert client_address(_scope("127.0.0.1", "not-an-ip"), TRUSTED) == "not-an-ip"
    assert client_address({"headers": []}, TRUSTED) == "unknown"


def test_network_lists_parse_from_text_json_and_lists() -> None:
    expected = [ip_network("10.20.0.0/16"), ip_network("192.0.2.7/32"), ip_network("2001:db8::/32")]
    assert parse_networks("10.20.0.0/16, 192.0.2.7 2001:db8::/32") == expected
    assert parse_networks('["10.20.0.0/16", "192.0.2.7", "2001:db8::/32"]') == expected
    assert parse_networks(["10.20.1.2/16"]) == [ip_network("10.20.0.0/16")]
    assert parse_networks("") == []
    with pytest.raises(ValueError, match="'10.0.0.300' is not a network"):
        parse_networks("10.0.0.300")


def test_a_first_message_type_may_have_a_limit_of_its_own() -> None:
    """The rendezvous's TO0.Hello (owners registering in bulk) with its own rate and
    burst; the other first messages keep the common one."""
    routes = {
        r.name: (r.rate, r.burst, r.path)
        for r in first_message_routes([20, 30], rate=20.0, burst=100, rates={20: (200.0, 1000)})
    }
    assert routes == {"fdo/20": (200.0, 1000, "/fdo/101/msg/20"), "fdo/30": (20.0, 100, "/fdo/101/msg/30")}
    # 0 turns that type's limit off (the route is then not guarded at all).
    (route,) = first_message_routes([20], rate=20.0, burst=100, rates={20: (0.0, 1)})
    assert route.rate == 0.0
