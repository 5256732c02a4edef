"""The bootc ServiceInfo module, both sides (vendor FSIM ``com.fdo-bootc.bootc``; docs/serviceinfo.md).

The name sits outside the ``fdo.*`` space the FIDO Alliance reserves for standard
modules; ``com.fdo-bootc`` is the project's reverse-DNS prefix.

Flow (all values CBOR)::

    owner  -> get-status  null
    device -> status      {"bootc": bool, "image", "digest", "staged-image", "staged-digest"}
    owner  -> item        [seq, kind, meta, length, sha-384]      } once per item, in the
    owner  -> data        bstr (repeated until ``length`` bytes)    } order of :func:`items`
    device -> result      [seq, ok, error-or-null]                  (one per item)
    owner  -> end         uint (number of items sent)
    device -> end         [ok, error-or-null]

Items go in the order the device applies them: registry credentials, signature policy
(``policy.json``, ``registries.d`` entries, public keys), configuration files, systemd
units, SSH authorized keys, the status report endpoint, and last the image pinned by
digest. Contents are split into ``data`` blocks that each fit the negotiated MTU
(:func:`~fdo.serviceinfo.kv.max_bstr_data`), so no value is ever fragmented.

The device side collects the accepted items into an :class:`Assignment`; it does no
system I/O (its status comes from an injected callable). Applying happens after TO2
(``device/apply.py``). :func:`fallback_modules` expresses the same assignment with
``fdo.download`` and ``fdo.command`` for stock clients that lack this module.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import InvalidMessageError, MessageBodyError
from fdo.serviceinfo.command import CommandOwner
from fdo.serviceinfo.device import DeviceModule
from fdo.serviceinfo.devmod import Devmod
from fdo.serviceinfo.download import DownloadOwner
from fdo.serviceinfo.kv import ServiceInfoKV, max_bstr_data, service_info_size
from fdo.serviceinfo.owner import OwnerModule

BOOTC = "com.fdo-bootc.bootc"
#: Default cap on one item's content held by the device.
MAX_ITEM_SIZE = 16 * 1024 * 1024

AUTH_PATH = "/etc/ostree/auth.json"
POLICY_PATH = "/etc/containers/policy.json"
REGISTRIES_D = "/etc/containers/registries.d"
TRANSPORTS = ("registry", "oci", "oci-archive", "containers-storage", "dir")

_DIGEST_REF = re.compile(r"^(?P<name>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")
_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|target|path|mount|automount|swap)$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class InvalidAssignmentError(MessageBodyError):
    """An assignment item is malformed: a path, mode, unit, user or image reference."""


class ApplyMode(StrEnum):
    """When the image takes effect."""

    STAGE = "stage"  # bootc switch: staged, booted at the next reboot
    SWITCH = "switch"  # bootc switch --apply: bootc reboots into it at once
    SWITCH_REBOOT = "switch-reboot"  # bootc switch, then a reboot once everything else is applied


class ItemKind(StrEnum):
    AUTH = "auth"
    POLICY = "policy"
    REGISTRIES_D = "registries-d"
    KEY = "key"
    FILE = "file"
    UNIT = "unit"
    SSH_KEYS = "ssh-keys"
    REPORT = "report"
    IMAGE = "image"


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path.startswith("/") or ".." in parts or "\x00" in path or path.endswith("/") or len(path) > 4096:
        raise InvalidAssignmentError(f"path {path[:128]!r} is not an absolute file path")
    return path


def split_digest_ref(ref: str) -> tuple[str, str]:
    """``name@sha256:<64 hex>`` → ``(name, "sha256:<hex>")``; raises InvalidAssignmentError."""
    m = _DIGEST_REF.match(ref)
    if m is None:
        raise InvalidAssignmentError(f"image {ref[:128]!r} is not pinned by digest (name@sha256:<64 hex>)")
    return m["name"], m["digest"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    """The image: ``ref`` pinned by digest, its transport, revision and apply mode."""

    ref: str
    transport: str = "registry"
    revision: int | str = 0
    apply: ApplyMode = ApplyMode.STAGE

    def __post_init__(self) -> None:
        split_digest_ref(self.ref)
        if self.transport not in TRANSPORTS:
            raise InvalidAssignmentError(f"unknown image transport {self.transport[:32]!r}")
        if isinstance(self.revision, bool) or not isinstance(self.revision, int | str):
            raise InvalidAssignmentError("revision must be an integer or a string")
        object.__setattr__(self, "apply", ApplyMode(self.apply))

    @property
    def digest(self) -> str:
        """``sha256:<hex>``."""
        return split_digest_ref(self.ref)[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileItem:
    """A configuration file."""

    path: str
    content: bytes = field(repr=False)
    mode: int = 0o644
    owner: str = "root"
    group: str | None = None

    def __post_init__(self) -> None:
        _check_path(self.path)
        if not 0 <= self.mode <= 0o7777:
            raise InvalidAssignmentError(f"mode {self.mode:o} out of range")
        for name in (self.owner, self.group or "root"):
            if not _USER.match(name):
                raise InvalidAssignmentError(f"owner/group {name[:32]!r} is not a valid name")


@dataclass(frozen=True, slots=True)
class SSHKeys:
    """Authorized keys for one user."""

    user: str
    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _USER.match(self.user):
            raise InvalidAssignmentError(f"user {self.user[:32]!r} is not a valid name")
        if any("\n" in k or not k.strip() for k in self.keys):
            raise InvalidAssignmentError("an SSH key is empty or spans lines")


@dataclass(frozen=True, slots=True)
class Report:
    """Where the device reports its apply status, and its per-device token."""

    url: str
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """Everything the owner hands a device. Sequences keep the owner's order."""

    auth_json: bytes | None = field(default=None, repr=False)
    policy_json: bytes | None = None
    registries_d: tuple[tuple[str, bytes], ...] = ()  # (file name, content)
    keys: tuple[tuple[str, bytes], ...] = ()  # (absolute path, content)
    files: tuple[FileItem, ...] = ()
    units: tuple[str, ...] = ()
    ssh_keys: SSHKeys | None = None
    image: ImageRef | None = None
    report: Report | None = None

    def __post_init__(self) -> None:
        for name, _ in self.registries_d:
            if not _FILE_NAME.match(name) or name in (".", ".."):
                raise InvalidAssignmentError(f"registries.d name {name[:64]!r} is not a file name")
        for path, _ in self.keys:
            _check_path(path)
        for unit in self.units:
            if not _UNIT.match(unit):
                raise InvalidAssignmentError(f"unit {unit[:64]!r} is not a systemd unit name")

    def to_cbor_obj(self) -> CborValue:
        """The items as ``[[kind, meta, content], ...]`` (also the stored form)."""
        return [[i.kind.value, dict(i.meta), i.content] for i in items(self)]

    @staticmethod
    def from_cbor_obj(obj: CborValue) -> Assignment:
        """Rebuild from :meth:`to_cbor_obj`, validating every item."""
        builder = _Builder()
        for entry in codec.as_list(obj, "assignment"):
            kind, meta, content = codec.as_list(entry, "assignment item", 3)
            builder.add(_kind(kind), codec.as_map(meta, "item meta"), codec.as_bytes(content, "content"))
        return builder.build()

    def encode(self) -> bytes:
        return codec.encode(self.to_cbor_obj())

    @staticmethod
    def decode(data: bytes) -> Assignment:
        return Assignment.from_cbor_obj(codec.decode(data))


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of transfer: kind, metadata and content bytes."""

    kind: ItemKind
    meta: Mapping[str, CborValue]
    content: bytes = field(repr=False)

    @property
    def label(self) -> str:
        """A short name for results and logs (never the content)."""
        for key in ("path", "name", "user", "ref"):
            if key in self.meta:
                return f"{self.kind.value}:{self.meta[key]}"
        return self.kind.value


def items(a: Assignment) -> list[Item]:
    """The assignment as items, in sending (and applying) order."""
    out: list[Item] = []
    if a.auth_json is not None:
        out.append(Item(ItemKind.AUTH, {}, a.auth_json))
    if a.policy_json is not None:
        out.append(Item(ItemKind.POLICY, {}, a.policy_json))
    out += [Item(ItemKind.REGISTRIES_D, {"name": n}, c) for n, c in a.registries_d]
    out += [Item(ItemKind.KEY, {"path": p}, c) for p, c in a.keys]
    for f in a.files:
        meta: dict[str, CborValue] = {"path": f.path, "mode": f.mode, "owner": f.owner}
        if f.group is not None:
            meta["group"] = f.group
        out.append(Item(ItemKind.FILE, meta, f.content))
    out += [Item(ItemKind.UNIT, {"name": u}, b"") for u in a.units]
    if a.ssh_keys is not None:
        content = "".join(k + "\n" for k in a.ssh_keys.keys).encode()
        out.append(Item(ItemKind.SSH_KEYS, {"user": a.ssh_keys.user}, content))
    if a.report is not None:
        out.append(Item(ItemKind.REPORT, {"url": a.report.url, "token": a.report.token}, b""))
    if a.image is not None:
        img = a.image
        meta = {
            "ref": img.ref,
            "transport": img.transport,
            "revision": img.revision,
            "apply": img.apply.value,
        }
        out.append(Item(ItemKind.IMAGE, meta, b""))
    return out


def _kind(obj: CborValue) -> ItemKind:
    try:
        return ItemKind(codec.as_str(obj, "item kind"))
    except ValueError:
        raise InvalidAssignmentError(f"unknown item kind {str(obj)[:32]!r}") from None


class _Builder:
    """Collects items into :class:`Assignment` fields, validating each one."""

    def __init__(self) -> None:
        self.auth_json: bytes | None = None
        self.policy_json: bytes | None = None
        self.registries_d: list[tuple[str, bytes]] = []
        self.keys: list[tuple[str, bytes]] = []
        self.files: list[FileItem] = []
        self.units: list[str] = []
        self.ssh_keys: SSHKeys | None = None
        self.image: ImageRef | None = None
        self.report: Report | None = None

    def build(self) -> Assignment:
        return Assignment(
            auth_json=self.auth_json,
            policy_json=self.policy_json,
            registries_d=tuple(self.registries_d),
            keys=tuple(self.keys),
            files=tuple(self.files),
            units=tuple(self.units),
            ssh_keys=self.ssh_keys,
            image=self.image,
            report=self.report,
        )

    def add(self, kind: ItemKind, meta: Mapping[CborValue, CborValue], content: bytes) -> None:
        def s(key: str) -> str:
            return codec.as_str(meta.get(key), f"{kind.value}:{key}", max_size=4096)

        if kind == ItemKind.AUTH:
            self.auth_json = content
        elif kind == ItemKind.POLICY:
            self.policy_json = content
        elif kind == ItemKind.REGISTRIES_D:
            Assignment(registries_d=((s("name"), content),))  # validates
            self.registries_d.append((s("name"), content))
        elif kind == ItemKind.KEY:
            self.keys.append((_check_path(s("path")), content))
        elif kind == ItemKind.FILE:
            group = meta.get("group")
            self.files.append(
                FileItem(
                    path=s("path"),
                    content=content,
                    mode=codec.as_int(meta.get("mode"), "file:mode", 0, 0o7777),
                    owner=s("owner"),
                    group=None if group is None else s("group"),
                ),
            )
        elif kind == ItemKind.UNIT:
            Assignment(units=(s("name"),))
            self.units.append(s("name"))
        elif kind == ItemKind.SSH_KEYS:
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidAssignmentError("SSH keys are not UTF-8") from None
            keys = tuple(line for line in text.splitlines() if line.strip())
            self.ssh_keys = SSHKeys(s("user"), keys)
        elif kind == ItemKind.REPORT:
            self.report = Report(s("url"), s("token"))
        else:
            revision = meta.get("revision")
            if isinstance(revision, bool) or not isinstance(revision, int | str):
                raise InvalidAssignmentError("image:revision must be an integer or a string")
            try:
                apply = ApplyMode(s("apply"))
            except ValueError:
                raise InvalidAssignmentError("image:apply is not stage, switch or switch-reboot") from None
            self.image = ImageRef(ref=s("ref"), transport=s("transport"), revision=revision, apply=apply)


# ---------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True, kw_only=True)
class BootcStatus:
    """What ``bootc status`` says: the booted (and staged) image and digest, if a bootc host."""

    is_bootc: bool
    image: str | None = None
    digest: str | None = None
    staged_image: str | None = None
    staged_digest: str | None = None

    def has(self, digest: str) -> bool:
        """True if ``digest`` is booted or staged."""
        return self.is_bootc and digest in (self.digest, self.staged_digest)

    def to_cbor_obj(self) -> CborValue:
        return {
            "bootc": self.is_bootc,
            "image": self.image,
            "digest": self.digest,
            "staged-image": self.staged_image,
            "staged-digest": self.staged_digest,
        }

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        m = codec.as_map(obj, f"{BOOTC}:status")

        def opt(key: str) -> str | None:
            v = m.get(key)
            return None if v is None else codec.as_str(v, f"status {key}", max_size=4096)

        return cls(
            is_bootc=codec.as_bool(m.get("bootc"), "status bootc"),
            image=opt("image"),
            digest=opt("digest"),
            staged_image=opt("staged-image"),
            staged_digest=opt("staged-digest"),
        )


NOT_BOOTC = BootcStatus(is_bootc=False)


def parse_bootc_status(obj: object) -> BootcStatus:
    """Read the output of ``bootc status --json`` (org.containers.bootc/v1 BootcHost)."""

    def entry(status: Mapping[str, object], key: str) -> tuple[str | None, str | None]:
        slot = status.get(key)
        if not isinstance(slot, Mapping):
            return None, None
        image = slot.get("image")
        if not isinstance(image, Mapping):
            return None, None
        ref = image.get("image")
        name = ref.get("image") if isinstance(ref, Mapping) else None
        digest = image.get("imageDigest")
        return (name if isinstance(name, str) else None, digest if isinstance(digest, str) else None)

    if not isinstance(obj, Mapping) or obj.get("kind") != "BootcHost":
        return NOT_BOOTC
    status = obj.get("status")
    if not isinstance(status, Mapping) or not isinstance(status.get("booted"), Mapping):
        return NOT_BOOTC
    image, digest = entry(status, "booted")
    staged_image, staged_digest = entry(status, "staged")
    return BootcStatus(
        is_bootc=True, image=image, digest=digest, staged_image=staged_image, staged_digest=staged_digest
    )


# ---------------------------------------------------------------------------- owner


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The device's answer to one item."""

    seq: int
    label: str
    ok: bool
    error: str | None = None


class _Phase(IntEnum):
    ASK_STATUS = 0
    WAIT_STATUS = 1
    ITEMS = 2
    END = 3
    WAIT_END = 4
    DONE = 5


class BootcOwner(OwnerModule):
    """Owner side: ask for the status, send the assignment's items, collect results.

    :attr:`status` is the device's bootc status, :attr:`results` one
    :class:`ItemResult` per item, :attr:`accepted` the device's final verdict.
    """

    name = BOOTC

    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment
        self._items = items(assignment)
        self.status: BootcStatus | None = None
        self.results: dict[int, ItemResult] = {}
        self.accepted: bool | None = None
        self.end_error: str | None = None
        self.done = False
        self._phase = _Phase.ASK_STATUS
        self._index = 0
        self._offset = -1  # -1: the item header is not sent yet
        self._mtu = 0
        self._chunk = 1

    @property
    def ok(self) -> bool:
        """Every item accepted and the device confirmed the whole assignment."""
        return bool(self.accepted) and all(r.ok for r in self.results.values())

    def start(self, devmod: Devmod, mtu: int) -> None:
        self._mtu = mtu
        self._chunk = max(1, max_bstr_data(f"{BOOTC}:data", mtu))

    def produce(self) -> list[tuple[str, CborValue]]:
        if self._phase == _Phase.ASK_STATUS:
            self._phase = _Phase.WAIT_STATUS
            return [("get-status", None)]
        if self._phase == _Phase.ITEMS:
            out = self._next_batch()
            if out:
                return out
            self._phase = _Phase.END
        if self._phase == _Phase.END:
            self._phase = _Phase.WAIT_END
            return [("end", len(self._items))]
        return []

    def _next_batch(self) -> list[tuple[str, CborValue]]:
        """Item headers and data blocks, at most one message's worth."""
        out: list[tuple[str, CborValue]] = []
        kvs: list[ServiceInfoKV] = []
        while self._index < len(self._items):
            item = self._items[self._index]
            msg: tuple[str, CborValue]
            if self._offset < 0:
                header = [
                    self._index,
                    item.kind.value,
                    dict(item.meta),
                    len(item.content),
                    hashlib.sha384(item.content).digest(),
                ]
                msg, step = ("item", header), 1
            else:
                block = item.content[self._offset : self._offset + self._chunk]
                msg, step = ("data", block), len(block)
            kvs.append(ServiceInfoKV.of(BOOTC, *msg))
            if len(kvs) > 1 and service_info_size(kvs) > self._mtu:
                break  # full; this one goes out next time
            out.append(msg)
            self._offset += step
            if self._offset >= len(item.content):
                self._index += 1
                self._offset = -1
        return out

    def handle(self, message: str, value: CborValue) -> None:
        if self.done:
            return
        if message == "status":
            self.status = BootcStatus.from_cbor_obj(value)
            if self._phase == _Phase.WAIT_STATUS:
                self._phase = _Phase.ITEMS
        elif message == "result":
            seq, ok, error = codec.as_list(value, f"{BOOTC}:result", 3)
            n = codec.as_int(seq, "result seq", 0, len(self._items) - 1)
            text = None if error is None else codec.as_str(error, "result error", max_size=1024)
            self.results[n] = ItemResult(n, self._items[n].label, codec.as_bool(ok, "result ok"), text)
        elif message == "end":
            if self._phase != _Phase.WAIT_END:
                raise InvalidMessageError(f"{BOOTC}: end before the owner finished")
            ok, error = codec.as_list(value, f"{BOOTC}:end", 2)
            self.accepted = codec.as_bool(ok, "end ok")
            self.end_error = None if error is None else codec.as_str(error, "end error", max_size=1024)
            self._phase = _Phase.DONE
            self.done = True
        # unknown messages are ignored, for forward compatibility

    def to_state(self) -> CborValue:
        return [
            self.assignment.to_cbor_obj(),
            int(self._phase),
            self._index,
            self._offset,
            self._mtu,
            self._chunk,
            None if self.status is None else self.status.to_cbor_obj(),
            [[r.seq, r.ok, r.error] for r in self.results.values()],
            self.accepted,
            self.end_error,
        ]

    @classmethod
    def from_state(cls, state: CborValue) -> Self:
        st = codec.as_list(state, "BootcOwner", 10)
        self = cls(Assignment.from_cbor_obj(st[0]))
        self._phase = _Phase(codec.as_int(st[1], "phase", 0, 5))
        self._index = codec.as_int(st[2], "index", 0, len(self._items))
        self._offset = codec.as_int(st[3], "offset", -1)
        self._mtu = codec.as_uint(st[4], "mtu")
        self._chunk = codec.as_int(st[5], "chunk", 1)
        if st[6] is not None:
            self.status = BootcStatus.from_cbor_obj(st[6])
        for r in codec.as_list(st[7], "results"):
            self.handle("result", r)
        self.accepted = None if st[8] is None else codec.as_bool(st[8], "accepted")
        self.end_error = None if st[9] is None else codec.as_str(st[9], "end error")
        self.done = self._phase == _Phase.DONE
        return self


# ---------------------------------------------------------------------------- device


StatusProvider = Callable[[], BootcStatus]
"""Reports this host's bootc status (``device.apply.read_bootc_status`` runs bootc)."""


class BootcDevice(DeviceModule):
    """Device side: report the status, reassemble and validate items, build the assignment.

    :attr:`assignment` is set once the owner's ``end`` arrives; it holds the accepted
    items (a rejected one is answered with an error result and left out).
    """

    name = BOOTC

    def __init__(self, status: StatusProvider, *, max_size: int = MAX_ITEM_SIZE) -> None:
        self._status = status
        self._max_size = max_size
        self.assignment: Assignment | None = None
        self.results: list[ItemResult] = []
        self._reset()

    def _reset(self) -> None:
        self._builder = _Builder()
        self._current: tuple[int, ItemKind | None, Mapping[CborValue, CborValue], int, bytes] | None = None
        self._buf = bytearray()
        self._received = 0
        self._error: str | None = None

    def activate(self, active: bool) -> None:
        self._reset()
        self.results = []
        if active:
            self.assignment = None

    def handle(self, message: str, value: CborValue) -> list[tuple[str, CborValue]]:
        if message == "get-status":
            return [("status", self._status().to_cbor_obj())]
        if message == "item":
            return self._on_item(value)
        if message == "data":
            return self._on_data(codec.as_bytes(value, f"{BOOTC}:data"))
        if message == "end":
            return self._on_end(codec.as_uint(value, f"{BOOTC}:end"))
        return []  # unknown messages are ignored

    def _on_item(self, value: CborValue) -> list[tuple[str, CborValue]]:
        seq, kind, meta, length, sha = codec.as_list(value, f"{BOOTC}:item", 5)
        n = codec.as_uint(seq, "item seq")
        digest = codec.as_bytes(sha, "item sha-384", 48)
        size = codec.as_uint(length, "item length")
        self._buf = bytearray()
        self._received = 0
        self._error = None
        item_kind: ItemKind | None = None
        try:
            item_kind = _kind(kind)
        except InvalidAssignmentError as exc:
            self._error = exc.message
        if size > self._max_size:
            self._error = f"item of {size} bytes exceeds the {self._max_size}-byte limit"
        self._current = (n, item_kind, codec.as_map(meta, "item meta"), size, digest)
        return self._finish() if size == 0 else []

    def _on_data(self, block: bytes) -> list[tuple[str, CborValue]]:
        if self._current is None:
            raise InvalidMessageError(f"{BOOTC}: data without an item")
        self._received += len(block)
        if self._error is None:
            self._buf += block
        if self._received >= self._current[3]:
            return self._finish()
        return []

    def _finish(self) -> list[tuple[str, CborValue]]:
        assert self._current is not None  # noqa: S101 - callers check
        seq, kind, meta, size, digest = self._current
        content = bytes(self._buf)
        error = self._error
        if error is None and (self._received != size or hashlib.sha384(content).digest() != digest):
            error = "length or sha-384 mismatch"
        label = kind.value if kind is not None else "unknown"
        if error is None and kind is not None:
            label = Item(kind, {str(k): v for k, v in meta.items()}, b"").label
            try:
                self._builder.add(kind, meta, content)
            except (InvalidAssignmentError, MessageBodyError) as exc:
                error = exc.message
        self._current = None
        self._buf = bytearray()
        self.results.append(ItemResult(seq, label, error is None, error))
        return [("result", [seq, error is None, error])]

    def _on_end(self, count: int) -> list[tuple[str, CborValue]]:
        error: str | None = None
        if self._current is not None:
            error = "the last item was incomplete"
        elif count != len(self.results):
            error = f"owner sent {count} items, device received {len(self.results)}"
        elif any(not r.ok for r in self.results):
            error = "some items were rejected"
        try:
            self.assignment = self._builder.build()
        except InvalidAssignmentError as exc:  # pragma: no cover - items are checked one by one
            error = exc.message
        return [("end", [error is None, error])]


# ---------------------------------------------------------------------------- fallback


def fallback_modules(assignment: Assignment) -> list[OwnerModule]:
    """The assignment for stock clients: ``fdo.download`` for contents, ``fdo.command`` for the rest.

    File names are the absolute target paths; a stock client stores them relative to
    its own download folder or as given, depending on the implementation, and sets no
    owner. Modes are set with ``chmod``/``chown`` commands. Units, SSH keys and the
    image switch run as commands; ``switch-reboot`` ends with ``systemctl reboot``.
    """
    mods: list[OwnerModule] = []
    if assignment.auth_json is not None:
        mods.append(DownloadOwner(AUTH_PATH, assignment.auth_json))
        mods.append(CommandOwner("chmod", ["0600", AUTH_PATH]))
    if assignment.policy_json is not None:
        mods.append(DownloadOwner(POLICY_PATH, assignment.policy_json))
    mods += [DownloadOwner(f"{REGISTRIES_D}/{n}", c) for n, c in assignment.registries_d]
    mods += [DownloadOwner(p, c) for p, c in assignment.keys]
    for f in assignment.files:
        mods.append(DownloadOwner(f.path, f.content))
        mods.append(CommandOwner("chmod", [f"{f.mode:04o}", f.path]))
        if (f.owner, f.group) != ("root", None):
            mods.append(CommandOwner("chown", [f"{f.owner}:{f.group or f.owner}", f.path]))
    mods += [CommandOwner("systemctl", ["enable", u]) for u in assignment.units]
    if assignment.ssh_keys is not None:
        user = assignment.ssh_keys.user
        path = authorized_keys_path(user)
        content = "".join(k + "\n" for k in assignment.ssh_keys.keys).encode()
        mods.append(DownloadOwner(path, content))
        mods.append(CommandOwner("chmod", ["0600", path]))
        mods.append(CommandOwner("chown", ["-R", f"{user}:{user}", path.rsplit("/", 1)[0]]))
    if assignment.image is not None:
        mods += [CommandOwner(argv[0], argv[1:]) for argv in switch_commands(assignment.image)]
    return mods


def authorized_keys_path(user: str) -> str:
    """Where a user's authorized keys go (``/root`` for root, else ``/var/home/<user>``)."""
    home = "/root" if user == "root" else f"/var/home/{user}"
    return f"{home}/.ssh/authorized_keys"


def switch_commands(
    image: ImageRef, *, bootc: str = "bootc", systemctl: str = "systemctl"
) -> list[list[str]]:
    """The commands that switch to ``image`` in its apply mode."""
    argv = [bootc, "switch", "--transport", image.transport]
    if image.apply == ApplyMode.SWITCH:
        argv.append("--apply")
    cmds = [[*argv, image.ref]]
    if image.apply == ApplyMode.SWITCH_REBOOT:
        cmds.append([systemctl, "reboot"])
    return cmds


def restore_bootc(name: str, state: CborValue) -> OwnerModule:
    """A :data:`~fdo.serviceinfo.owner.Restore` for :class:`BootcOwner` alone."""
    if name != BOOTC:
        raise InvalidMessageError(f"not the bootc module: {name[:64]!r}")
    return BootcOwner.from_state(state)


__all__: Sequence[str] = [
    "AUTH_PATH",
    "BOOTC",
    "NOT_BOOTC",
    "POLICY_PATH",
    "REGISTRIES_D",
    "ApplyMode",
    "Assignment",
    "BootcDevice",
    "BootcOwner",
    "BootcStatus",
    "FileItem",
    "ImageRef",
    "InvalidAssignmentError",
    "Item",
    "ItemKind",
    "ItemResult",
    "Report",
    "SSHKeys",
    "StatusProvider",
    "authorized_keys_path",
    "fallback_modules",
    "items",
    "parse_bootc_status",
    "restore_bootc",
    "split_digest_ref",
    "switch_commands",
]
