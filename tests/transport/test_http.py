"""The real core machines over HTTP: FdoHttpClient against fdo_router via FastAPI's TestClient."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from httpx import Response as HttpxResponse

from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, PublicKey
from fdo.errors import MessageBodyError, PeerError
from fdo.messages import ErrorMessage
from fdo.rvinfo import RVTO2Addr, RVTO2AddrEntry, TransportProtocol
from fdo.to0.owner import TO0Owner
from fdo.to0.rendezvous import TO0Rendezvous
from fdo.to1.device import TO1Device
from fdo.to1.rendezvous import TO1Rendezvous
from fdo.voucher import OwnershipVoucher
from tests.conftest import KeyPool
from tests.fdo.flow import Rendezvous, make_manufacturer, run_di
from transport.client import FdoHttpClient, TransportError
from transport.server import AnyServerMachine, MemorySessionStore, ProtocolHandler, fdo_router, mount_fdo

CBOR = {"Content-Type": "application/cbor"}
BASE = "http://testserver"


@dataclass
class Setup:
    credential: DeviceCredential
    voucher: OwnershipVoucher
    owner_key: PrivateKeyT


@pytest.fixture(scope="module")
def setup(key_pool: KeyPool) -> Setup:
    mfr_keys = {"ec256": key_pool.get("ec256", 0), "ec384": key_pool.get("ec384", 0)}
    owner_key = key_pool.get("ec256", 2)
    credential, voucher = run_di(make_manufacturer(mfr_keys), key_pool.get("ec256", 1))
    extended = voucher.extend(mfr_keys["ec256"], PublicKey.from_key(owner_key.public_key()))
    return Setup(credential, extended, owner_key)


@dataclass
class Server:
    rv: Rendezvous
    store: MemorySessionStore
    http: TestClient


@pytest.fixture(params=["route", "fast path", "fast path inline"])
def server(request: pytest.FixtureRequest) -> Server:
    rv = Rendezvous(max_wait_seconds=3600)
    store = MemorySessionStore()

    def register(machine: AnyServerMachine) -> None:
        assert isinstance(machine, TO0Rendezvous) and machine.registration is not None
        rv.registrations[machine.registration.guid] = machine.registration

    handlers = {
        20: ProtocolHandler(
            new=lambda: TO0Rendezvous(rv), restore=lambda s: TO0Rendezvous.from_state(s, rv), on_done=register
        ),
        30: ProtocolHandler(new=lambda: TO1Rendezvous(rv), restore=lambda s: TO1Rendezvous.from_state(s, rv)),
    }
    app = FastAPI()
    # Through the router's route, or as the services mount it: in front of the app's
    # middleware and routing, in the thread pool or inline on the event loop.
    router = fdo_router(handlers, store, max_body=4096, inline=request.param.endswith("inline"))
    if request.param == "route":
        app.include_router(router)
    else:
        mount_fdo(app, router)
    return Server(rv, store, TestClient(app, base_url=BASE))


def to0_owner(setup: Setup) -> TO0Owner:
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    return TO0Owner(voucher=setup.voucher, owner_key=setup.owner_key, rv_to2_addr=addr, wait_seconds=7200)


def assert_error(response: HttpxResponse, code: int, prev: int) -> None:
    assert response.status_code == 500
    assert response.headers["Message-Type"] == "255"
    assert response.headers["Content-Type"] == "application/cbor"
    err = ErrorMessage.decode(response.content)
    assert (err.code, err.prev_msg_type) == (code, prev)


def test_to0_then_to1_over_http(server: Server, setup: Setup) -> None:
    client = FdoHttpClient(BASE, client=server.http)
    owner = to0_owner(setup)
    client.run(owner)
    assert owner.accepted_wait_seconds == 3600
    assert setup.voucher.guid in server.rv.registrations
    assert client.token is not None and client.token.startswith("Bearer ")

    device = TO1Device(setup.credential)
    client.run(device)
    assert device.to1d is not None and device.done
    assert len(server.store) == 0  # finished sessions are gone


def test_peer_error_reaches_client(server: Server, setup: Setup) -> None:
    client = FdoHttpClient(BASE, client=server.http)
    with pytest.raises(PeerError) as info:
        client.run(TO1Device(setup.credential))  # no TO0 yet: ResourceNotFound
    assert info.value.peer_code == 6
    assert len(server.store) == 0


def test_wrong_content_type(server: Server, setup: Setup) -> None:
    _, body = to0_owner(setup).start()
    r = server.http.post("/fdo/101/msg/20", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 100, 20)
    r = server.http.post(
        "/fdo/101/msg/20", content=body, headers={"Content-Type": "application/cbor; charset=utf-8"}
    )
    assert_error(r, 100, 20)


def test_oversized_body(server: Server) -> None:
    r = server.http.post("/fdo/101/msg/20", content=b"\x00" * 5000, headers=CBOR)
    assert_error(r, 100, 20)


def test_oversized_body_without_length(server: Server) -> None:
    # Sent in chunks with no Content-Length: the limit holds while reading.
    chunks = (b"\x00" * 1000 for _ in range(5))
    r = server.http.post("/fdo/101/msg/20", content=chunks, headers=CBOR)
    assert "content-length" not in r.request.headers
    assert_error(r, 100, 20)


def test_other_requests_reach_the_app(server: Server) -> None:
    assert server.http.get("/fdo/101/msg/20").status_code == 405
    assert server.http.post("/fdo/101/msg/20/x", content=b"\x80", headers=CBOR).status_code == 404
    assert server.http.post("/fdo/100/msg/20", content=b"\x80", headers=CBOR).status_code == 404


@pytest.mark.parametrize("path", ["40", "0", "abc", "10", "60"])
def test_unknown_message_type(server: Server, path: str) -> None:
    r = server.http.post(f"/fdo/101/msg/{path}", content=b"\x80", headers=CBOR)
    assert r.status_code == 500 and r.headers["Message-Type"] == "255"
    assert ErrorMessage.decode(r.content).code == 100


def _hello(server: Server, setup: Setup) -> tuple[TO0Owner, str, bytes]:
    """Send TO0.Hello; return the owner machine, the token header and its TO0.OwnerSign."""
    owner = to0_owner(setup)
    _, body = owner.start()
    r = server.http.post("/fdo/101/msg/20", content=body, headers={**CBOR, "Authorization": "Bearer stale"})
    assert r.status_code == 200 and r.headers["Message-Type"] == "21"
    token = r.headers["Authorization"]
    assert token.startswith("Bearer ") and len(server.store) == 1
    nxt = owner.receive(21, r.content)
    assert nxt is not None and nxt[0] == 22
    return owner, token, nxt[1]


@pytest.mark.parametrize("auth", [None, "Bearer nope", "nope", ""])
def test_later_message_needs_live_token(server: Server, setup: Setup, auth: str | None) -> None:
    _, _, sign = _hello(server, setup)
    headers = dict(CBOR) if auth is None else {**CBOR, "Authorization": auth}
    assert_error(server.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)


def test_bare_token_accepted(server: Server, setup: Setup) -> None:
    _, token, sign = _hello(server, setup)
    bare = token.removeprefix("Bearer ")
    r = server.http.post("/fdo/101/msg/22", content=sign, headers={**CBOR, "Authorization": bare})
    assert r.status_code == 200 and r.headers["Message-Type"] == "23"
    assert r.headers["Authorization"] == token


def test_out_of_order_message(server: Server, setup: Setup) -> None:
    _, token, _ = _hello(server, setup)
    r = server.http.post("/fdo/101/msg/32", content=b"\x80", headers={**CBOR, "Authorization": token})
    assert_error(r, 1, 32)  # a TO0 token is no TO1 session
    assert len(server.store) == 0


def test_wrong_message_in_session_is_an_error(server: Server, setup: Setup) -> None:
    _, token, _ = _hello(server, setup)
    r = server.http.post("/fdo/101/msg/22", content=b"\x80", headers={**CBOR, "Authorization": token})
    assert_error(r, 100, 22)
    assert len(server.store) == 0  # the session died with the error


def test_replay_after_session_finished(server: Server, setup: Setup) -> None:
    _, token, sign = _hello(server, setup)
    headers = {**CBOR, "Authorization": token}
    r = server.http.post("/fdo/101/msg/22", content=sign, headers=headers)
    assert r.status_code == 200 and r.headers["Message-Type"] == "23"
    assert_error(server.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)


def test_client_error_message_deletes_session(server: Server, setup: Setup) -> None:
    _, token, sign = _hello(server, setup)
    headers = {**CBOR, "Authorization": token}
    err = ErrorMessage.from_error(MessageBodyError("bye"), 21, now=0).encode()
    r = server.http.post("/fdo/101/msg/255", content=err, headers=headers)
    assert r.status_code == 200 and r.content == b""
    assert len(server.store) == 0
    assert_error(server.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)


# ---------------------------------------------------------------------------- client only


def _fake(reply: Response, seen: list[tuple[str, dict[str, str], bytes]]) -> TestClient:
    app = FastAPI()

    @app.post("/fdo/101/msg/{msg_type}")
    async def any_message(msg_type: str, request: Request) -> Response:
        seen.append((msg_type, dict(request.headers), await request.body()))
        return Response(b"", status_code=200) if msg_type == "255" else reply

    return TestClient(app, base_url=BASE)


def test_client_reports_local_failure(setup: Setup) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []
    garbage = Response(
        b"\x01", media_type="application/cbor", headers={"Message-Type": "21", "Authorization": "Bearer t1"}
    )
    client = FdoHttpClient(BASE, client=_fake(garbage, seen))
    with pytest.raises(MessageBodyError):
        client.run(to0_owner(setup))
    assert [s[0] for s in seen] == ["20", "255"]
    assert "authorization" not in seen[0][1]
    assert seen[1][1]["authorization"] == "Bearer t1"
    assert ErrorMessage.decode(seen[1][2]).prev_msg_type == 21


@pytest.mark.parametrize(
    "reply",
    [
        Response(b"not found", status_code=404, media_type="text/plain"),
        Response(b"\x80", status_code=200, media_type="application/cbor"),  # no Message-Type
        Response(b"\x00" * 200, media_type="application/cbor", headers={"Message-Type": "21"}),
    ],
)
def test_client_transport_errors(setup: Setup, reply: Response) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []
    client = FdoHttpClient(BASE, client=_fake(reply, seen), max_body=100)
    with pytest.raises(TransportError):
        client.run(to0_owner(setup))
