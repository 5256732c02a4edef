"""Check-in messages, without I/O (docs/checkin.md): the device's saved check-in state,
what it sends, how it reads the owner's answer, its apply state and when to try again.

:mod:`device.agent` does the I/O (state files, ``bootc status``, HTTP, applying).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from fdo.errors import FdoError
from fdo.serviceinfo.bootc import Assignment, Report

APPLY_STATES = ("none", "applying", "staged", "applied", "failed", "rolled-back")
_SECRET = re.compile(r"^fdc1\.[0-9]{1,19}\.[A-Za-z0-9_-]{43}$")
_LEGACY_REPORT = "/api/v1/report"


class CheckinProtocolError(Exception):
    """The owner's answer (or the saved state) is not what the protocol allows."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def checkin_url(report: Report) -> str:
    """Where to check in: the URL TO2 gave, or, from an owner that gave only a report
    URL, the check-in path beside it."""
    if report.checkin:
        return report.checkin
    base = report.url[: -len(_LEGACY_REPORT)] if report.url.endswith(_LEGACY_REPORT) else report.url
    return base.rstrip("/").removesuffix("/device/v1/report") + "/device/v1/checkin"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinState:
    """What the device keeps between check-ins (``checkin.json`` in the state folder).

    ``origin`` is the hash of the secret TO2 delivered: a new TO2 (a new secret in the
    stored assignment) starts a fresh state. ``seq`` is the last sequence number used.
    ``previous`` is the secret used before ``secret`` (the owner's previous answer
    rotated it): should the owner have lost the commit that made ``secret`` its current
    one (a power cut), the previous one still works once.
    """

    url: str
    secret: str
    seq: int = 0
    origin: str
    generation: int = 0
    applied_revision: int | None = None
    previous: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(obj: object) -> CheckinState:
        if not isinstance(obj, Mapping):
            raise CheckinProtocolError("the check-in state is not an object")
        try:
            state = CheckinState(
                url=str(obj["url"]),
                secret=str(obj["secret"]),
                seq=int(obj["seq"]),
                origin=str(obj["origin"]),
                generation=int(obj.get("generation", 0)),
                applied_revision=None
                if obj.get("applied_revision") is None
                else int(obj["applied_revision"]),
                previous=None if obj.get("previous") is None else str(obj["previous"]),
            )
        except (KeyError, TypeError, ValueError):
            raise CheckinProtocolError("the check-in state is incomplete") from None
        return state


def state_for(saved: CheckinState | None, report: Report) -> CheckinState:
    """The state to use with the stored assignment's ``report`` item: the saved one when
    it belongs to the same TO2, else a fresh one from the TO2 secret."""
    origin = token_hash(report.token)
    if saved is not None and saved.origin == origin:
        return saved
    return CheckinState(url=checkin_url(report), secret=report.token, seq=0, origin=origin)


def health_of(greenboot_status: str | None) -> str:
    """``healthy``/``unhealthy`` from greenboot's boot status (``/run/motd.d/boot-status``:
    "Boot Status is GREEN ..." / "... RED ..."), ``unknown`` without greenboot."""
    if greenboot_status is None:
        return "unknown"
    if "GREEN" in greenboot_status:
        return "healthy"
    if "RED" in greenboot_status:
        return "unhealthy"
    return "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatus:
    """The deployments ``bootc status --json`` shows (digests and image names)."""

    booted_image: str | None = None
    booted_digest: str | None = None
    staged_image: str | None = None
    staged_digest: str | None = None
    rollback_digest: str | None = None


def host_status(obj: object) -> HostStatus:
    """Read ``bootc status --json`` (org.containers.bootc/v1 BootcHost); empty when not
    a bootc host."""

    def slot(status: Mapping[str, Any], key: str) -> tuple[str | None, str | None]:
        entry = status.get(key)
        image = entry.get("image") if isinstance(entry, Mapping) else None
        if not isinstance(image, Mapping):
            return None, None
        ref = image.get("image")
        name = ref.get("image") if isinstance(ref, Mapping) else None
        digest = image.get("imageDigest")
        return (name if isinstance(name, str) else None, digest if isinstance(digest, str) else None)

    status = obj.get("status") if isinstance(obj, Mapping) else None
    if not isinstance(status, Mapping):
        return HostStatus()
    booted, booted_digest = slot(status, "booted")
    staged, staged_digest = slot(status, "staged")
    return HostStatus(
        booted_image=booted,
        booted_digest=booted_digest,
        staged_image=staged,
        staged_digest=staged_digest,
        rollback_digest=slot(status, "rollback")[1],
    )


def apply_state(target: str | None, host: HostStatus, *, complete: bool, failed: bool) -> tuple[str, bool]:
    """The state of applying the image pinned to digest ``target`` and whether it was
    rolled back (greenboot or ``bootc rollback`` booted the previous deployment again)."""
    if target is None:
        return "none", False
    if failed:
        return "failed", False
    if host.booted_digest == target:
        return "applied", False
    if complete and host.rollback_digest == target:
        return "rolled-back", True
    if host.staged_digest == target:
        return "staged", False
    return "applying", False


def _digest_or_none(value: str | None) -> str | None:
    return value if value is not None and re.fullmatch(r"sha256:[0-9a-f]{64}", value) else None


def build_request(
    state: CheckinState,
    seq: int,
    assignment: Assignment | None,
    host: HostStatus,
    *,
    complete: bool,
    error: tuple[str, str] | None,
    health: str,
    utc_offset: int | None = None,
) -> tuple[dict[str, Any], CheckinState]:
    """The check-in body with sequence number ``seq`` and the state to keep after it;
    ``utc_offset`` (seconds east of UTC) lets update windows use device-local time."""
    image = None if assignment is None else assignment.image
    revision = image.revision if image is not None and isinstance(image.revision, int) else None
    state_name, rolled_back = apply_state(
        None if image is None else image.digest, host, complete=complete, failed=error is not None
    )
    applied = revision if state_name == "applied" else state.applied_revision
    body: dict[str, Any] = {
        "seq": seq,
        "booted_image": host.booted_image,
        "booted_digest": _digest_or_none(host.booted_digest),
        "staged_image": host.staged_image,
        "staged_digest": _digest_or_none(host.staged_digest),
        "revision": revision,
        "generation": state.generation,
        "applied_revision": applied,
        "state": state_name,
        "health": health,
        "error_step": None if error is None else error[0][:256],
        "error": None if error is None else error[1][:2000],
        "rolled_back": rolled_back,
    }
    if utc_offset is not None:
        body["utc_offset"] = utc_offset
    return body, replace(state, seq=seq, applied_revision=applied)


@dataclass(frozen=True, slots=True)
class Desired:
    """A revision the owner wants the device to run."""

    revision: int
    generation: int
    image: str
    assignment: Assignment


@dataclass(frozen=True, slots=True)
class Answer:
    """The owner's answer to a check-in."""

    interval: int
    next_secret: str
    desired: Desired | None


def parse_answer(obj: object) -> Answer:
    """Validate the owner's JSON answer."""
    if not isinstance(obj, Mapping):
        raise CheckinProtocolError("the answer is not a JSON object")
    interval, secret, action = obj.get("interval"), obj.get("next_secret"), obj.get("action")
    if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= 7 * 24 * 3600:
        raise CheckinProtocolError("the answer has no valid interval")
    if not isinstance(secret, str) or not _SECRET.match(secret):
        raise CheckinProtocolError("the answer has no valid next secret")
    if action == "none":
        return Answer(interval, secret, None)
    desired = obj.get("desired")
    if action != "apply" or not isinstance(desired, Mapping):
        raise CheckinProtocolError("the answer has an unknown action")
    revision, generation, image = desired.get("revision"), desired.get("generation"), desired.get("image")
    if not (isinstance(revision, int) and isinstance(generation, int) and isinstance(image, str)):
        raise CheckinProtocolError("the desired revision is incomplete")
    try:
        assignment = Assignment.decode(base64.b64decode(str(desired.get("assignment")), validate=True))
    except (binascii.Error, ValueError, FdoError) as exc:
        raise CheckinProtocolError(f"the desired assignment is invalid: {exc}") from None
    if assignment.image is None or assignment.image.ref != image:
        raise CheckinProtocolError("the desired assignment does not carry the desired image")
    return Answer(interval, secret, Desired(revision, generation, image, assignment))


def next_delay(interval: float, failures: int, fraction: float) -> float:
    """Seconds until the next attempt: the interval with ±10 % jitter, or after
    ``failures`` failed attempts in a row a back-off from 5 s doubling up to the
    interval (at least 5 min). ``fraction`` is a random number in [0, 1)."""
    if failures <= 0:
        return interval * (0.9 + 0.2 * fraction)
    cap = max(interval, 300.0)
    backoff: float = 5.0 * 2.0 ** min(failures - 1, 20)
    return min(cap, backoff) * (0.5 + 0.5 * fraction)


def dumps_state(state: CheckinState) -> bytes:
    return json.dumps(state.to_json(), indent=2).encode()
