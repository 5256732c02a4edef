"""The devmod ServiceInfo module (spec §3.8.3, reference §7.3).

The device opens ServiceInfo with ``devmod:active = true`` and its description, then
``devmod:nummodules`` and the module list as ``devmod:modules = [start, count, *names]``,
split over several KVs when long. Writing follows go-fdo ``serviceinfo/devmod.go``
(field order, modules in KVs of their own, each within the MTU). Reading follows go's
owner (``devmodOwnerModule``): an unknown devmod name fails; ``sn`` may be tstr or
bstr; ``modules`` before ``nummodules`` fails; a chunk whose ``start`` is not the first
empty slot is placed at that slot (go tolerates implementations that always send 0);
and once all ``nummodules`` names have arrived the required fields are checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import FdoUsageError, InvalidMessageError, MessageBodyError
from fdo.serviceinfo.kv import DEFAULT_MTU, DEVICE_SLACK, ServiceInfoKV, service_info_size

DEVMOD = "devmod"

#: devmod messages in the order go writes them; all are tstr except ``sn``.
FIELD_ORDER = (
    "os",
    "arch",
    "version",
    "device",
    "sn",
    "pathsep",
    "sep",
    "nl",
    "tmp",
    "dir",
    "progenv",
    "bin",
    "mudurl",
)
REQUIRED = ("os", "arch", "version", "device", "sep", "bin")

#: Bounds on what a device may announce (memory safety, not spec limits).
MAX_MODULES = 1024
MAX_TEXT = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class Devmod:
    """A device's devmod description. ``nummodules`` is ``len(modules)``.

    ``modules`` lists every module the device supports, devmod included.
    """

    os: str
    arch: str
    version: str
    device: str
    sep: str
    bin: str
    sn: str | bytes | None = None
    pathsep: str | None = None
    nl: str | None = None
    tmp: str | None = None
    dir: str | None = None
    progenv: str | None = None
    mudurl: str | None = None
    modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept any sequence but store a tuple, so the dataclass stays hashable.
        object.__setattr__(self, "modules", tuple(self.modules))

    @property
    def nummodules(self) -> int:
        return len(self.modules)

    def to_kvs(self, mtu: int = DEFAULT_MTU, *, slack: int = DEVICE_SLACK) -> list[ServiceInfoKV]:
        """The devmod messages, go's order; each ``modules`` KV fits alone in ``mtu - slack``."""
        for name in REQUIRED:
            if not getattr(self, name):
                raise FdoUsageError(f"devmod: required field {name!r} is empty")
        if DEVMOD not in self.modules:
            raise FdoUsageError("devmod: the module list must include 'devmod'")
        kvs = [ServiceInfoKV.of(DEVMOD, "active", True)]
        for name in FIELD_ORDER:
            value = getattr(self, name)
            if value:  # go skips empty optional fields
                kvs.append(ServiceInfoKV.of(DEVMOD, name, value))
        kvs.append(ServiceInfoKV.of(DEVMOD, "nummodules", len(self.modules)))
        kvs.extend(_module_kvs(self.modules, mtu - slack))
        return kvs


def _module_kvs(modules: Sequence[str], budget: int) -> list[ServiceInfoKV]:
    # go writeModuleMessages: grow a chunk until [[key, chunk]] would exceed the MTU.
    kvs: list[ServiceInfoKV] = []
    start, names = 0, list(modules)
    while names:
        count = 1
        while count < len(names) and _fits(start, names[: count + 1], budget):
            count += 1
        if not _fits(start, names[:count], budget):
            raise FdoUsageError(f"ServiceInfo limit too small for module name {names[0][:64]!r}")
        kvs.append(ServiceInfoKV.of(DEVMOD, "modules", [start, count, *names[:count]]))
        start, names = start + count, names[count:]
    return kvs


def _fits(start: int, names: list[str], budget: int) -> bool:
    kv = ServiceInfoKV.of(DEVMOD, "modules", [start, len(names), *names])
    return service_info_size([kv]) <= budget


def _text(value: CborValue, what: str) -> str:
    """A devmod string: at most MAX_TEXT characters and no NUL (control characters such as
    ``nl`` = "\\n" are fine; a NUL is in no real value and PostgreSQL cannot store one)."""
    text = codec.as_str(value, what, max_size=MAX_TEXT)
    if "\x00" in text:
        raise MessageBodyError(f"{what}: contains a NUL character")
    return text


class DevmodParser:
    """Incremental owner-side reader of the device's devmod messages.

    Feed each complete devmod message (:meth:`feed` for a whole KV, :meth:`feed_value`
    after reassembly). :attr:`complete` turns true once ``nummodules`` names have
    arrived; at that moment the required fields are checked (InvalidMessageError),
    and :meth:`result` returns the :class:`Devmod`. Wrong types raise MessageBodyError.
    Serialisable with :meth:`to_state`/:meth:`from_state` so an owner can resume
    between HTTP requests.
    """

    __slots__ = ("_fields", "_nummodules", "_modules")

    def __init__(self) -> None:
        self._fields: dict[str, str | bytes] = {}
        self._nummodules: int | None = None
        self._modules: list[str | None] = []

    @property
    def complete(self) -> bool:
        """True once every one of ``nummodules`` module names has arrived."""
        return self._nummodules is not None and None not in self._modules

    def feed(self, kv: ServiceInfoKV) -> None:
        """Read one whole devmod KV (not a fragment)."""
        if kv.module != DEVMOD:
            raise InvalidMessageError(f"expected a devmod message, got {kv.key[:64]!r}")
        self.feed_value(kv.message, kv.decoded())

    def feed_value(self, message: str, value: CborValue) -> None:
        """Read one devmod message given its decoded value."""
        what = f"devmod:{message}"
        if message == "active":
            codec.as_bool(value, what)
        elif message == "sn":
            if isinstance(value, bytes):
                self._fields["sn"] = codec.as_bytes(value, what, max_size=MAX_TEXT)
            else:
                self._fields["sn"] = _text(value, what)
        elif message in FIELD_ORDER:
            self._fields[message] = _text(value, what)
        elif message == "nummodules":
            self._set_nummodules(codec.as_int(value, what, 1, MAX_MODULES))
        elif message == "modules":
            self._add_modules(value)
        else:
            raise InvalidMessageError(f"unknown devmod message {message[:64]!r}")

    def _set_nummodules(self, count: int) -> None:
        if self._nummodules is not None and count != self._nummodules:
            raise InvalidMessageError("devmod:nummodules changed")
        if self._nummodules is None:
            self._nummodules = count
            self._modules = [None] * count

    def _add_modules(self, value: CborValue) -> None:
        items = codec.as_list(value, "devmod:modules", min_len=2)
        start = codec.as_uint(items[0], "devmod:modules start")
        count = codec.as_uint(items[1], "devmod:modules count")
        names = [_text(n, "devmod:modules name") for n in items[2:]]
        if self._nummodules is None:
            raise InvalidMessageError("devmod:modules arrived before devmod:nummodules")
        if count != len(names) or start > self._nummodules or "" in names:
            raise InvalidMessageError("invalid devmod:modules chunk")
        if None in self._modules:
            start = self._modules.index(None)  # go: tolerate a wrong start index
        if start + count > self._nummodules:
            raise InvalidMessageError("devmod:modules lists more than nummodules names")
        self._modules[start : start + count] = names
        if self.complete:
            self._check_required()

    def _check_required(self) -> None:
        for name in REQUIRED:
            if not self._fields.get(name):
                raise InvalidMessageError(f"devmod: required field {name!r} missing")

    def result(self) -> Devmod:
        """The devmod once :attr:`complete` (calling earlier is a usage error)."""
        if not self.complete:
            raise FdoUsageError("devmod is not complete")
        self._check_required()
        values = dict(self._fields)
        sn = values.pop("sn", None)
        text = {k: v for k, v in values.items() if isinstance(v, str)}
        return Devmod(
            os=text["os"],
            arch=text["arch"],
            version=text["version"],
            device=text["device"],
            sep=text["sep"],
            bin=text["bin"],
            sn=sn,
            pathsep=text.get("pathsep"),
            nl=text.get("nl"),
            tmp=text.get("tmp"),
            dir=text.get("dir"),
            progenv=text.get("progenv"),
            mudurl=text.get("mudurl"),
            modules=tuple(name for name in self._modules if name is not None),
        )

    def to_state(self) -> CborValue:
        return [dict(self._fields), self._nummodules, list(self._modules)]

    @classmethod
    def from_state(cls, state: CborValue) -> Self:
        items = codec.as_list(state, "DevmodParser", 3)
        self = cls()
        for key, value in codec.as_map(items[0], "devmod fields").items():
            self.feed_value(codec.as_str(key, "devmod field"), value)
        if items[1] is not None:
            self._set_nummodules(codec.as_int(items[1], "nummodules", 1, MAX_MODULES))
            names = codec.as_list(items[2], "modules", self._nummodules)
            self._modules = [None if n is None else codec.as_str(n, "module") for n in names]
        return self
