"""TO0 at scale: from importing N vouchers at the owner to all N registered at the rendezvous.

:func:`measure_to0_bulk` needs a :class:`fdo_server.stack.Stack` whose owner runs its TO0
scheduler (``make bench`` starts one with the scheduler's default settings for this
phase alone). It makes ``count`` vouchers (:func:`make_vouchers`), imports them through
the owner's admin API (``POST /api/v1/vouchers``, PEM batches of :data:`BATCH`, two
requests at a time), then polls the rendezvous' admin API
(``GET /api/v1/registrations``, its ``total``) once a second until all are
registered or ``cap`` seconds have passed since the first import request. The figure is
the time from that first request to the poll that saw the last registration.

The vouchers are made cheaply but are real: one DI at the stack's manufacturer gives a
template (its zero-entry voucher: the device certificate chain, the rendezvous
directives, the manufacturer key); each voucher is a new OVHeader with a fresh GUID and
the template's other fields, an HMAC under a random secret (only a device could check
it, and no device onboards with these), and one entry signed with the manufacturer's
P-256 key extending it to the owner's P-256 key, as the manufacturer's hand-off does.
The owner verifies each at import and the rendezvous at TO0 as any other.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fdo.crypto import load_private_key
from fdo.types import Guid
from fdo.voucher import OVHeader, OwnershipVoucher
from fdo_server.stack import Stack

#: Vouchers per import request.
BATCH = 500
#: Seconds between polls of the rendezvous.
POLL_SECONDS = 1.0
#: Seconds between progress lines.
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class To0BulkResult:
    count: int
    #: Registrations the rendezvous held at the last poll.
    registered: int
    #: Seconds from the first import request to the last poll.
    seconds: float
    #: Seconds the import requests took (part of :attr:`seconds`).
    import_seconds: float
    cap: float

    @property
    def finished(self) -> bool:
        return self.registered >= self.count


def _template(stack: Stack) -> OwnershipVoucher:
    credential = stack.manufacture(
        key_type="ec256", serial=f"TO0-TEMPLATE-{os.urandom(3).hex()}", model="bench-to0"
    )
    with stack.admin("manufacturer") as mfr:
        resp = mfr.get(f"/api/v1/vouchers/{credential.guid}/pem")
        resp.raise_for_status()
    return OwnershipVoucher.from_pem(resp.text)[0]


def make_vouchers(stack: Stack, count: int) -> list[str]:
    """``count`` vouchers (PEM) for the stack's devices-to-be, extended to its owner's P-256 key."""
    template = _template(stack)
    key_files = json.loads(stack.services["manufacturer"].env["FDO_MANUFACTURER_KEYS"])
    manufacturer_key = load_private_key(Path(key_files["ec256"]).read_bytes())
    owner_key = stack.owner_keys["ec256"].public_key()
    head = template.header
    out = []
    for _ in range(count):
        header = OVHeader.build(
            guid=Guid.new(),
            rv_info=head.rv_info,
            device_info=head.device_info,
            public_key=head.public_key,
            cert_chain_hash=head.cert_chain_hash,
        )
        voucher = OwnershipVoucher.create(
            header=header, hmac=header.hmac(os.urandom(32), template.hmac.alg), cert_chain=template.cert_chain
        )
        out.append(voucher.extend(manufacturer_key, owner_key).to_pem())
    return out


def registered(stack: Stack) -> int:
    """How many registrations the rendezvous holds."""
    with stack.admin("rendezvous") as rv:
        resp = rv.get("/api/v1/registrations", params={"limit": 1})
        resp.raise_for_status()
        return int(resp.json()["total"])


def _import(stack: Stack, batch: list[str]) -> None:
    with stack.admin("owner") as owner:
        resp = owner.post("/api/v1/vouchers", content="".join(batch), headers={"Content-Type": "text/plain"})
    if resp.status_code != 200:
        raise RuntimeError(f"the owner refused vouchers ({resp.status_code}): {resp.text[:500]}")


def measure_to0_bulk(
    stack: Stack, count: int, *, cap: float, progress: Callable[[str], None] = print
) -> To0BulkResult:
    """Import ``count`` new vouchers and wait (at most ``cap`` seconds) until all are registered."""
    vouchers = make_vouchers(stack, count)
    batches = [vouchers[i : i + BATCH] for i in range(0, len(vouchers), BATCH)]
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        for _ in pool.map(lambda b: _import(stack, b), batches):
            pass
    imported = time.monotonic() - start
    progress(f"      {count:,} vouchers imported in {imported:.1f} s")
    next_line = start + PROGRESS_SECONDS
    while True:
        done = registered(stack)
        elapsed = time.monotonic() - start
        if done >= count or elapsed >= cap:
            break
        if time.monotonic() >= next_line:
            progress(f"      {done:,} of {count:,} registered after {elapsed:.0f} s")
            next_line = time.monotonic() + PROGRESS_SECONDS
        time.sleep(min(POLL_SECONDS, max(0.0, cap - elapsed)))
    progress(f"      {done:,} of {count:,} registered after {elapsed:.1f} s")
    return To0BulkResult(count, done, elapsed, imported, cap)


__all__ = ["BATCH", "To0BulkResult", "make_vouchers", "measure_to0_bulk", "registered"]
