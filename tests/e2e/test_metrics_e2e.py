"""``/metrics`` of the three real servers after one end-to-end onboarding (issue 5).

Manufacturer, rendezvous and owner run as uvicorn servers with two workers each, and
the device opens a new connection for every message, so messages (and scrapes) land on
either process: the counts below are only right when every worker writes to the
service's ``PROMETHEUS_MULTIPROC_DIR`` (which :class:`fdo_server.launcher.ServiceProcess`
makes) and ``/metrics`` adds them up. The
test records every FDO message the device sends, runs DI, the hand-off, the owner's TO0,
TO1 and TO2, sends one bad message to each service, then scrapes each service and
checks the exact value of every series: messages by type and result, errors by FDO error
code, sessions started and completed, the per-protocol duration histograms, and the
owner's TO0 pending and expiring gauges.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from device.modules import standard_modules
from device.onboard import onboard, run_di
from fdo.messages import ErrorMessage
from fdo.to1.messages import TO1HelloRV
from fdo.types import Guid, SgType, SigInfo
from fdo.voucher import OwnershipVoucher
from fdo_server.stack import SERVICES, Stack
from tests.conftest import database_backends, open_database
from transport.client import FdoHttpClient

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

WORKERS = 2
#: TO0 lifetime the owner asks for: well inside the owner's one-day "expiring" window.
TO0_WAIT_SECONDS = 3600


class Sent:
    """An HTTP client factory for the device that notes every FDO message type it posts."""

    def __init__(self) -> None:
        self.types: dict[str, Counter[str]] = {}
        self.clients: list[httpx.Client] = []

    def __call__(self, url: str) -> FdoHttpClient:
        seen = self.types.setdefault(url, Counter())

        def note(request: httpx.Request) -> None:
            seen[request.url.path.rsplit("/", 1)[-1]] += 1

        client = httpx.Client(
            timeout=30,
            event_hooks={"request": [note]},
            limits=httpx.Limits(max_keepalive_connections=0),  # any worker may answer
        )
        self.clients.append(client)
        return FdoHttpClient(url, client=client)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def scrape(url: str) -> Series:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser."""
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: Series = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            assert "pid" not in sample.labels, f"per-process series {key}"
            out[key] = sample.value
    return out


def fdo_series(series: Series, service: str) -> Series:
    """The ``fdo_*`` samples of counters and histograms (without ``_created``)."""
    out: Series = {}
    for (name, labels), v in series.items():
        if name.startswith("fdo_") and not name.endswith("_created") and not name.startswith("fdo_to0_"):
            assert dict(labels)["service"] == service, (name, labels)
            out[name, labels - {("service", service)}] = v
    return out


def owner_gauges(series: Series) -> dict[str, float]:
    gauges = {name: v for (name, labels), v in series.items() if name.startswith("fdo_to0_")}
    assert all(not labels for (name, labels) in series if name.startswith("fdo_to0_"))
    return gauges


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def expected(
    messages: dict[tuple[str, str], int], errors: dict[str, int], sessions: dict[str, int]
) -> Series:
    """The exact ``fdo_*`` series a service should show (histogram buckets checked apart)."""
    out: Series = {}
    for (msg_type, result), n in messages.items():
        out[key("fdo_messages_total", msg_type=msg_type, result=result)] = n
    for code, n in errors.items():
        out[key("fdo_errors_total", code=code)] = n
    for protocol, n in sessions.items():
        out[key("fdo_sessions_started_total", protocol=protocol)] = n
        out[key("fdo_sessions_completed_total", protocol=protocol)] = n
        out[key("fdo_protocol_duration_seconds_count", protocol=protocol)] = n
    return out


def without_buckets_and_sums(series: Series) -> Series:
    return {
        k: v
        for k, v in series.items()
        if k[0] not in ("fdo_protocol_duration_seconds_bucket", "fdo_protocol_duration_seconds_sum")
    }


def check_histograms(series: Series, sessions: dict[str, int]) -> None:
    for protocol, n in sessions.items():
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (name, labels), v in series.items()
            if name == "fdo_protocol_duration_seconds_bucket" and dict(labels)["protocol"] == protocol
        )
        assert buckets and buckets[-1] == (float("inf"), n), (protocol, buckets)
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        total = series[key("fdo_protocol_duration_seconds_sum", protocol=protocol)]
        assert 0 < total < 60 * n, (protocol, total)


@pytest.fixture(params=database_backends())
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    dbs = [open_database(request.param, tmp_path, name) for name in SERVICES]
    try:
        urls = {name: db.__enter__() for name, db in zip(SERVICES, dbs, strict=True)}
        with Stack(
            tmp_path / "stack",
            database_urls=urls,
            workers=dict.fromkeys(SERVICES, WORKERS),
            # Exact message counts: the replacement voucher is not registered by TO0 here
            # (tests/e2e/test_lost_done2.py covers that).
            owner_env={
                "FDO_OWNER_TO0_WAIT_SECONDS": str(TO0_WAIT_SECONDS),
                "FDO_OWNER_TO0_REPLACEMENTS": "false",
            },
        ) as running:
            yield running
    finally:
        for db in dbs:
            db.__exit__()


def test_metrics_after_end_to_end_onboarding(stack: Stack) -> None:
    for proc in stack.services.values():
        assert proc.metrics_dir is not None and proc.metrics_dir.is_dir()
    sent = Sent()
    try:
        credential = run_di(
            stack.url("manufacturer"),
            key_type="ec256",
            serial="MET-0001",
            model="kiosk-v2",
            http_client_factory=sent,
        )
        guid = str(credential.guid)
        (voucher,) = OwnershipVoucher.from_pem(stack.hand_off(guid, "ec256"))
        stack.wait_for_to0(guid)
        # Registered for an hour: live, and expiring within the owner's one-day window.
        assert owner_gauges(scrape(stack.url("owner"))) == {"fdo_to0_pending": 0, "fdo_to0_expiring": 1}
        result = onboard(
            credential,
            modules=lambda: standard_modules(stack.workdir / "device-root", run=lambda argv: (0, b"", b"")),
            http_client_factory=sent,
            max_attempts=1,
        )
    finally:
        sent.close()
    assert result.credential.guid != credential.guid

    # One deliberate error at each service.
    unknown = TO1HelloRV(guid=Guid.new(), ea_sig_info=SigInfo(SgType.ES256)).encode()
    bad = {
        "manufacturer": ("12", b"\x80", {"Authorization": "Bearer not-a-session"}),
        "rendezvous": ("30", unknown, {}),
        "owner": ("64", b"\x80", {"Authorization": "Bearer not-a-session"}),
    }
    codes: dict[str, str] = {}
    for service, (msg_type, body, headers) in bad.items():
        resp = httpx.post(
            f"{stack.url(service)}/fdo/101/msg/{msg_type}",
            content=body,
            headers={"Content-Type": "application/cbor", **headers},
        )
        assert resp.status_code == 500 and resp.headers["Message-Type"] == "255"
        codes[service] = str(int(ErrorMessage.decode(resp.content).code))
    assert codes == {"manufacturer": "1", "rendezvous": "6", "owner": "1"}

    di = sent.types[stack.url("manufacturer")]
    to1 = sent.types[stack.url("rendezvous")]
    to2 = sent.types[stack.url("owner")]
    assert di == {"10": 1, "12": 1}
    assert to1 == {"30": 1, "32": 1}
    assert to2["60"] == to2["64"] == to2["66"] == to2["70"] == 1
    assert to2["62"] == len(voucher.entries)  # GetOVNextEntry once per voucher entry
    assert to2["68"] >= 1 and set(to2) == {"60", "62", "64", "66", "68", "70"}

    want = {
        "manufacturer": (
            {("10", "ok"): 1, ("12", "ok"): 1, ("12", "error"): 1},
            {"1": 1},
            {"DI": 1},
        ),
        "rendezvous": (
            # TO0 by the owner's scheduler (once: TO0_REPLACEMENTS is off).
            {("20", "ok"): 1, ("22", "ok"): 1, ("30", "ok"): 1, ("32", "ok"): 1, ("30", "error"): 1},
            {"6": 1},
            {"TO0": 1, "TO1": 1},
        ),
        "owner": (
            {**{(t, "ok"): n for t, n in to2.items()}, ("64", "error"): 1},
            {"1": 1},
            {"TO2": 1},
        ),
    }
    for service, (messages, errors, sessions) in want.items():
        series = scrape(stack.url(service))
        # Whichever worker answers the scrape (a new connection each time), the same sums.
        for _ in range(3):
            assert scrape(stack.url(service)) == series, service
        fdo = fdo_series(series, service)
        assert without_buckets_and_sums(fdo) == expected(messages, errors, sessions), service
        check_histograms(fdo, sessions)
        if service == "owner":
            # The old voucher stays registered (for TO0_WAIT_SECONDS, so expiring within a
            # day) until the device confirms its replacement (owner.lifecycle); the
            # replacement gets no TO0 work with TO0_REPLACEMENTS off.
            assert owner_gauges(series) == {"fdo_to0_pending": 0, "fdo_to0_expiring": 1}
        else:
            assert owner_gauges(series) == {}
