"""The device side of ``make bench``'s check-in phase (docs/checkin.md).

Devices onboard with our bootc module (:class:`fdo.serviceinfo.bootc.BootcDevice`),
whose status comes from an in-process provider saying the host is booted on the
group's image: no ``bootc`` program runs, real or fake, so the load generator forks
nothing. The assignment TO2 delivered gives each device its check-in URL and secret.

A check-in is what ``fdo device check-in`` sends, without its state files: the pure
helpers of :mod:`device.checkin` build the body with the next sequence number, the
answer is read by ``parse_answer`` and its ``next_secret`` kept for the next one. Each
check-in opens a new connection, as the agent's ``httpx.post`` does; the client object is
kept per thread without keep-alive, since building one (its TLS context and CA bundle)
costs the load generator some 40 ms of CPU and the owner nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field

import httpx

from device.checkin import CheckinState, HostStatus, build_request, parse_answer, state_for
from fdo.serviceinfo.bootc import Assignment, BootcDevice, BootcStatus

#: The image of the bench group's revision (pinned by digest; never pulled).
IMAGE = "registry.example/bench@sha256:" + "be" * 32
DIGEST = IMAGE.rpartition("@")[2]
#: The model of the check-in phase's devices and its group (the onboarding phase's
#: devices, model ``bench``, match no group, so that phase is unchanged).
MODEL = "bench-checkin"

_local = threading.local()


def _client() -> httpx.Client:
    """This thread's HTTP client: no keep-alive, so one new connection per check-in."""
    client: httpx.Client | None = getattr(_local, "client", None)
    if client is None:
        client = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        _local.client = client
    return client


def bootc_module() -> BootcDevice:
    """The bootc module of a host booted on :data:`IMAGE`."""
    return BootcDevice(lambda: BootcStatus(is_bootc=True, image=IMAGE, digest=DIGEST))


@dataclass
class CheckinDevice:
    """One onboarded device's check-in state (what ``checkin.json`` holds)."""

    assignment: Assignment
    state: CheckinState
    host: HostStatus = field(default_factory=lambda: HostStatus(booted_image=IMAGE, booted_digest=DIGEST))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def from_assignment(assignment: Assignment | None) -> CheckinDevice:
        if assignment is None or assignment.report is None or assignment.image is None:
            raise RuntimeError("TO2 delivered no bootc assignment with a check-in secret")
        if assignment.image.ref != IMAGE:
            raise RuntimeError(f"TO2 delivered image {assignment.image.ref}, not the bench group's")
        return CheckinDevice(assignment, state_for(None, assignment.report))

    def check_in(self) -> str:
        """One check-in; returns the state it reported. Raises unless the owner answers
        200 with nothing to change."""
        with self.lock:  # one check-in at a time per device, as the agent's lock does
            body, after = build_request(
                self.state,
                self.state.seq + 1,
                self.assignment,
                self.host,
                complete=True,
                error=None,
                health="unknown",
            )
            resp = _client().post(
                self.state.url, json=body, headers={"Authorization": f"Bearer {self.state.secret}"}
            )
            if resp.status_code != 200:
                raise RuntimeError(f"check-in answered {resp.status_code}: {resp.text[:200]}")
            answer = parse_answer(resp.json())
            if answer.desired is not None:
                raise RuntimeError(f"check-in asked to apply revision {answer.desired.revision}")
            self.state = dataclasses.replace(after, secret=answer.next_secret)
            return str(body["state"])


__all__ = ["DIGEST", "IMAGE", "MODEL", "CheckinDevice", "bootc_module"]
