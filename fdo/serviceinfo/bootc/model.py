"""What the bootc module carries: the assignment, its items in order, the device's status."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import MessageBodyError

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
    #: Where the device checks in (``POST``, docs/checkin.md); None from older owners.
    checkin: str | None = None


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
        builder = ItemBuilder()
        for entry in codec.as_list(obj, "assignment"):
            kind, meta, content = codec.as_list(entry, "assignment item", 3)
            builder.add(
                parse_item_kind(kind), codec.as_map(meta, "item meta"), codec.as_bytes(content, "content")
            )
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
        report: dict[str, CborValue] = {"url": a.report.url, "token": a.report.token}
        if a.report.checkin is not None:
            report["checkin"] = a.report.checkin
        out.append(Item(ItemKind.REPORT, report, b""))
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


def parse_item_kind(obj: CborValue) -> ItemKind:
    try:
        return ItemKind(codec.as_str(obj, "item kind"))
    except ValueError:
        raise InvalidAssignmentError(f"unknown item kind {str(obj)[:32]!r}") from None


class ItemBuilder:
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
            self.report = Report(s("url"), s("token"), s("checkin") if "checkin" in meta else None)
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


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The device's answer to one item."""

    seq: int
    label: str
    ok: bool
    error: str | None = None
