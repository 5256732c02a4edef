"""Owner side of the bootc module, and the same assignment for stock clients (``fdo.download``,
``fdo.command``).
"""

from __future__ import annotations

import hashlib
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
    ItemResult,
    items,
)
from fdo.serviceinfo.command import CommandOwner
from fdo.serviceinfo.devmod import Devmod
from fdo.serviceinfo.download import DownloadOwner
from fdo.serviceinfo.kv import ServiceInfoKV, max_bstr_data, service_info_size
from fdo.serviceinfo.owner import OwnerModule

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
