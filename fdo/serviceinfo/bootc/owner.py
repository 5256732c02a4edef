"""Owner side of the bootc module, and the same assignment for stock clients (``fdo.download``,
``fdo.command``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from typing import Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import InvalidMessageError
from fdo.serviceinfo.bootc.model import (
    AUTH_PATH,
    BOOTC,
    POLICY_PATH,
    REGISTRIES_D,
    ApplyMode,
    Assignment,
    BootcStatus,
    ImageRef,
    Item,
    ItemKind,
    ItemResult,
    items,
)
from fdo.serviceinfo.command import COMMAND, CommandOwner
from fdo.serviceinfo.devmod import Devmod
from fdo.serviceinfo.download import DOWNLOAD, DownloadOwner
from fdo.serviceinfo.kv import ServiceInfoKV, max_bstr_data, service_info_size
from fdo.serviceinfo.owner import OwnerModule
from fdo.types import digest

# ---------------------------------------------------------------------------- owner


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
                    digest("sha384", item.content),
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


# ---------------------------------------------------------------------------- fallback

#: Where a unit's file goes; a unit whose file is in the assignment is enabled only once
#: that file was delivered.
UNIT_DIR = "/etc/systemd/system"


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One part of an assignment item the device did not get, and why.

    ``item`` is the item's label (:attr:`Item.label`), ``part`` what of it is missing
    (``content``, ``mode``, ``owner``, ``enable``, ``switch``, ``item``), ``needs`` the
    module the device lacked or declined (None when the device itself failed the item).
    """

    item: str
    part: str
    needs: str | None
    reason: str

    def to_json(self) -> dict[str, str | None]:
        return {"item": self.item, "part": self.part, "needs": self.needs, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Sent:
    """One part of an assignment item the owner sends, and through which module."""

    item: str
    part: str
    via: str

    def to_json(self) -> dict[str, str]:
        return {"item": self.item, "part": self.part, "via": self.via}


@dataclass(frozen=True, slots=True)
class StockPlan:
    """What :func:`stock_plan` sends (``modules``, ``sent``) and cannot send (``missing``)."""

    modules: list[OwnerModule]
    sent: list[Sent]
    missing: list[Shortfall]


def _lacks(module: str) -> str:
    return f"the device does not list {module}"


class _Planner:
    """Builds a :class:`StockPlan` for a device offering ``available`` modules."""

    def __init__(self, available: Collection[str]) -> None:
        self.download = DOWNLOAD in available
        self.command = COMMAND in available
        self.plan = StockPlan([], [], [])

    def file(
        self, item: Item, path: str, content: bytes, attrs: list[tuple[str, list[str]]], *, private: bool
    ) -> bool:
        """``content`` to ``path``, then each ``(part, argv)`` of ``attrs``; False when not sent.

        A ``private`` file (registry credentials, a file others may not read) is withheld
        unless its mode can be set: a stock client may store it readable by all.
        """
        if not self.download:
            self.missing(item, "content", DOWNLOAD, _lacks(DOWNLOAD))
            return False
        if private and not self.command:
            reason = f"others may not read it, and its mode cannot be set without {COMMAND}"
            self.missing(item, "content", COMMAND, reason)
            return False
        self.send(item, "content", DOWNLOAD, DownloadOwner(path, content))
        for part, argv in attrs:
            self.run(item, part, argv)
        return True

    def run(self, item: Item, part: str, argv: list[str]) -> bool:
        if not self.command:
            self.missing(item, part, COMMAND, _lacks(COMMAND))
            return False
        self.send(item, part, COMMAND, CommandOwner(argv[0], argv[1:]))
        return True

    def send(self, item: Item, part: str, via: str, module: OwnerModule) -> None:
        self.plan.modules.append(module)
        if not any(s.item == item.label and s.part == part for s in self.plan.sent):
            self.plan.sent.append(Sent(item.label, part, via))

    def missing(self, item: Item, part: str, needs: str | None, reason: str) -> None:
        self.plan.missing.append(Shortfall(item.label, part, needs, reason))


def stock_plan(assignment: Assignment, available: Collection[str]) -> StockPlan:
    """The assignment for a stock client offering the modules ``available``.

    Contents go through ``fdo.download``; modes and owners (``chmod``/``chown``), unit
    enabling (``systemctl enable``) and the image switch through ``fdo.command``. A part
    the device's modules cannot carry is a :class:`Shortfall`, and no command is sent
    about anything not delivered: no ``chmod`` of a file not sent, no ``systemctl
    enable`` of a unit whose file was not sent, no switch when the registry
    credentials, policy, registries.d or keys it pulls with were not sent. Files are
    never written through ``fdo.command`` (a shell ``printf``/``base64`` would put
    contents, secrets included, on the device's command line and in its logs, with no
    size limit or hash check); the report item is for the bootc module only.

    File names are the absolute target paths; a stock client stores them relative to
    its own download folder or as given, depending on the implementation, and sets no
    owner or mode of its own.
    """
    p = _Planner(available)
    unit_files: dict[str, bool] = {}
    pull_ok = True  # everything the image switch pulls with was delivered
    for item in items(assignment):
        meta = item.meta
        if item.kind == ItemKind.AUTH:
            attrs = [("mode", ["chmod", "0600", AUTH_PATH])]
            pull_ok &= p.file(item, AUTH_PATH, item.content, attrs, private=True)
        elif item.kind == ItemKind.POLICY:
            pull_ok &= p.file(item, POLICY_PATH, item.content, [], private=False)
        elif item.kind == ItemKind.REGISTRIES_D:
            pull_ok &= p.file(item, f"{REGISTRIES_D}/{meta['name']}", item.content, [], private=False)
        elif item.kind == ItemKind.KEY:
            pull_ok &= p.file(item, str(meta["path"]), item.content, [], private=False)
        elif item.kind == ItemKind.FILE:
            path, owner, group = str(meta["path"]), str(meta["owner"]), meta.get("group")
            mode = codec.as_int(meta["mode"], "mode")
            attrs = [("mode", ["chmod", f"{mode:04o}", path])]
            if (owner, group or "root") != ("root", "root"):  # a stock client writes as root
                attrs.append(("owner", ["chown", f"{owner}:{group or owner}", path]))
            sent = p.file(item, path, item.content, attrs, private=not mode & 0o004)
            if path.startswith(UNIT_DIR + "/"):
                unit_files[path[len(UNIT_DIR) + 1 :]] = sent
        elif item.kind == ItemKind.UNIT:
            name = str(meta["name"])
            if unit_files.get(name, True):
                p.run(item, "enable", ["systemctl", "enable", name])
            else:
                p.missing(item, "enable", None, f"its unit file {UNIT_DIR}/{name} was not delivered")
        elif item.kind == ItemKind.SSH_KEYS:
            user = str(meta["user"])
            path = authorized_keys_path(user)
            attrs = [
                ("mode", ["chmod", "0600", path]),
                ("owner", ["chown", "-R", f"{user}:{user}", path.rsplit("/", 1)[0]]),
            ]
            p.file(item, path, item.content, attrs, private=False)  # public keys
        elif item.kind == ItemKind.IMAGE and assignment.image is not None:
            if not p.command:
                p.missing(item, "switch", COMMAND, _lacks(COMMAND))
            elif not pull_ok:
                reason = "what the switch pulls with (registry credentials, policy, keys) was not delivered"
                p.missing(item, "switch", None, reason)
            else:
                for argv in switch_commands(assignment.image):
                    p.run(item, "switch", argv)
    return p.plan


def fallback_modules(assignment: Assignment) -> list[OwnerModule]:
    """The assignment for a stock client with both ``fdo.download`` and ``fdo.command``."""
    return stock_plan(assignment, (DOWNLOAD, COMMAND)).modules


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
