"""The services' FDO endpoints fed arbitrary bodies, over HTTP, with their real databases.

The state machines are fuzzed in-process (``tests/fdo/test_properties.py``); this sends
what a hostile or broken peer might to each service's first message of every protocol,
through the router and into the database, on SQLite and PostgreSQL:

* any CBOR value at all;
* a DI.AppStart that is well formed but for what a device may put in it (serial and
  device info of any text, NULs and 300 characters included).

Every answer is the next protocol message or an ErrorMessage (type 255) whose code names
the peer's mistake, never 500 (INTERNAL_SERVER_ERROR), which would mean an exception
the service did not expect. ``FDO_TEST_FUZZ_EXAMPLES`` sets the examples per case.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdo.crypto import make_csr
from fdo.di.messages import DIAppStart, MfgInfo
from fdo.errors import ErrorCode
from fdo.messages import ErrorMessage
from tests.conftest import KeyPool
from tests.test_admin_api_fuzz import make_app

EXAMPLES = int(os.environ.get("FDO_TEST_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
FIRST = {"manufacturer": (10,), "rendezvous": (20, 30), "owner": (60,)}
CBOR = {"Content-Type": "application/cbor"}

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64) + 1, 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.binary(max_size=48)
    | st.text(max_size=48),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.integers(-300, 300) | st.text(max_size=8), inner, max_size=5)
        | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 16, 17, 18, 24, 55799]), inner)
    ),
    max_leaves=30,
)


@pytest.fixture(params=list(FIRST))
def service(
    request: pytest.FixtureRequest, database_factory: Callable[[str], str], key_pool: KeyPool, tmp_path: Path
) -> tuple[str, FastAPI]:
    name: str = request.param
    return name, make_app(name, database_factory(name), key_pool, tmp_path)


def _check(http: TestClient, msg_type: int, body: bytes, replies: set[int]) -> None:
    response = http.post(f"/fdo/101/msg/{msg_type}", content=body, headers=CBOR)
    kind = int(response.headers["Message-Type"])
    if kind == 255:
        error = ErrorMessage.decode(response.content)
        assert error.code != ErrorCode.INTERNAL_SERVER_ERROR, (msg_type, body.hex()[:200], error)
        assert response.status_code == 500  # what FDO clients expect with an ErrorMessage
    else:
        assert response.status_code == 200 and kind in replies, (msg_type, kind)


def test_any_cbor_body_gets_the_next_message_or_a_named_error(service: tuple[str, FastAPI]) -> None:
    name, app = service
    with TestClient(app, base_url="http://testserver") as http:
        for msg_type in FIRST[name]:

            @given(value=cbor_values, kind=st.just(msg_type))
            @FUZZ
            def post(value: object, kind: int) -> None:
                _check(http, kind, cbor2.dumps(value), {kind + 1})

            post()


@pytest.mark.parametrize("service", ["manufacturer"], indirect=True)
def test_di_app_start_with_any_device_text(service: tuple[str, FastAPI], key_pool: KeyPool) -> None:
    _, app = service
    csr = make_csr(key_pool.get("ec256", 21), "fuzz")
    # The samples: what found bugs (a NUL PostgreSQL cannot store; 40 two-byte characters,
    # too long for a certificate name in UTF-8 bytes), then the edges.
    samples = ["\x00", "kiosk\x00", "é" * 40, "\x80" * 65, "", "S" * 255, "S" * 256]
    device_text = st.sampled_from(samples) | st.text(max_size=300)
    with TestClient(app, base_url="http://testserver") as http:

        @given(serial=device_text | st.none(), info=st.just("kiosk-v2") | device_text | st.none())
        @FUZZ
        def post(serial: str | None, info: str | None) -> None:
            mfg = MfgInfo(pk_type=10, pk_enc=1, serial=serial, device_info=info, csr=csr)
            _check(http, 10, DIAppStart(mfg_info=mfg.to_bytes()).encode(), {11})

        post()
