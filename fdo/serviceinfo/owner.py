"""Owner half of the ServiceInfo exchange, TO2 messages 68/69 (spec §3.8, reference §7.2-7.4).

:class:`OwnerServiceInfoDriver` turns each DeviceServiceInfo (68) into the
OwnerServiceInfo (69) to send back, and runs the :class:`OwnerModule` s it was given::

    driver = OwnerServiceInfoDriver(modules, mtu=max_owner_service_info_sz)  # from 66
    # or OwnerServiceInfoDriver(None, mtu=...) and handle(..., select=choose) below
    # for each 68 = [is_more, ServiceInfo]:
    reply = driver.handle(is_more, decode_service_info(service_info))
    # 69 = [reply.is_more, reply.is_done, encode_service_info(reply.service_info)]
    state = driver.to_state()          # persist; next request:
    driver = OwnerServiceInfoDriver.from_state(state, restore)

The flow, one call per 68:

1. Device KVs are reassembled (:class:`~fdo.serviceinfo.kv.Reassembler`) and
   dispatched. Until devmod is complete only ``devmod:*`` is accepted
   (go: "device must only send devmod as the first module").
2. While the device says IsMoreServiceInfo, the reply is ``[false, false, []]``.
3. When devmod is complete the module list is fixed (chosen then by ``select(devmod)``
   if the driver was built without modules): modules whose name the device did not
   list are skipped, unless ``unlisted=UnlistedModules.ACTIVATE``.
4. Modules run one at a time, in order. Before its first use a module name gets
   ``name:active = true``. For a module the device listed in devmod, the module is
   started (:meth:`OwnerModule.start`) at once and its first messages follow
   ``active`` in the same OwnerServiceInfo, as go's owner modules do, which saves a
   round trip per module; a module the device did not list (``UnlistedModules.ACTIVATE``)
   waits for the device's answer instead, because go's device fails TO2 on messages
   for a module it lacks. The device's ``name:active = false`` skips every module of
   that name (dropping what is still queued for it). A name already activated is not
   activated again (go's device answers ``active`` only once per name).
5. A running module's :meth:`~OwnerModule.produce` is called whenever nothing is
   queued, and again while everything it queued still fits in this reply (so a small
   file's header and data, or a batch and its end marker, share one message and a
   round trip is saved); its messages are queued and sent in chunks of at most the
   device's maxOwnerServiceInfoSz (less 3 bytes of envelope), with IsMoreServiceInfo
   set while more is queued. An empty list with ``done`` false means "waiting for the device";
   the reply is then ``[false, false, []]`` and the device polls. Device messages for
   the running module go to :meth:`~OwnerModule.handle`; messages for any other
   module are ignored.
6. With every module done or skipped and nothing queued, the reply is
   ``[false, true, []]`` and the driver is finished.

Any :class:`~fdo.errors.FdoError` raised (by a module or by a check here) ends the
exchange: the TO2 machine reports it and drops the driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import (
    FdoUsageError,
    InternalError,
    InvalidMessageError,
    MessageBodyError,
    UnexpectedMessageError,
)
from fdo.serviceinfo.devmod import DEVMOD, Devmod, DevmodParser
from fdo.serviceinfo.kv import (
    MAX_ROUNDS,
    MAX_VALUE_SIZE,
    OWNER_SLACK,
    OutQueue,
    Reassembler,
    ServiceInfoKV,
    ServiceInfoMessage,
    effective_mtu,
)


class OwnerModule(ABC):
    """One owner-side ServiceInfo module (FSIM), driven by :class:`OwnerServiceInfoDriver`.

    Contract:

    * ``name`` (class or instance attribute): the module name, e.g. ``"fdo.download"``.
    * :meth:`start` is called once, after the device confirmed ``name:active = true``.
    * :meth:`produce` is called whenever the driver has nothing queued. It returns the
      next messages as ``(message, value)`` pairs (message names without the module
      prefix; values are CBOR objects the driver encodes). Return ``[]`` while waiting
      for a device reply. Keep values below the MTU given to :meth:`start` (see
      :func:`~fdo.serviceinfo.kv.max_bstr_data`); larger ones are split go-style,
      which only go-based devices reassemble.
    * :meth:`handle` receives each device message for this module except ``active``.
    * ``done`` becomes true when the module has nothing more to do; the driver moves on
      once ``done`` is true and :meth:`produce` returns ``[]``. Messages that arrive
      after ``done`` should be ignored.
    * :meth:`to_state` / :meth:`from_state` persist the module between HTTP requests.
    * Failures raise :class:`~fdo.errors.FdoError` subclasses; that fails TO2.
    * Outcomes are exposed as attributes (``result``) for the service to record.
    """

    name: str
    done: bool = False

    def start(self, devmod: Devmod, mtu: int) -> None:  # noqa: B027 - optional hook
        """The device activated the module. ``mtu`` is the largest ServiceInfo array the
        driver sends per message (envelope slack already subtracted)."""

    @abstractmethod
    def produce(self) -> list[tuple[str, CborValue]]:
        """The next messages to send, or ``[]`` while waiting for the device."""

    @abstractmethod
    def handle(self, message: str, value: CborValue) -> None:
        """A device message for this module (never ``active``)."""

    @abstractmethod
    def to_state(self) -> CborValue:
        """The module's state as a CBOR object."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: CborValue) -> Self:
        """Rebuild a module from :meth:`to_state`."""


Restore = Callable[[str, CborValue], OwnerModule]
"""Rebuilds an owner module from its name and :meth:`OwnerModule.to_state`."""


def module_restorer(*classes: type[OwnerModule]) -> Restore:
    """A :data:`Restore` that maps each class's ``name`` to its ``from_state``."""
    by_name = {cls.name: cls for cls in classes}

    def restore(name: str, state: CborValue) -> OwnerModule:
        cls = by_name.get(name)
        if cls is None:
            raise InternalError(f"no owner module class for {name[:64]!r}")
        return cls.from_state(state)

    return restore


class ModuleStatus(IntEnum):
    PENDING = 0  # not reached yet
    ACTIVATING = 1  # active=true sent, waiting for the device's answer (unlisted module)
    ACTIVE = 2  # started: listed in devmod (active sent with its first messages) or confirmed
    DONE = 3
    SKIPPED = 4  # not listed in devmod, or the device answered active=false


class UnlistedModules(IntEnum):
    """What to do with a module whose name the device did not list in devmod."""

    SKIP = 0
    ACTIVATE = 1  # ask anyway; the device answers active=false if it lacks it


class _Phase(IntEnum):
    DEVMOD = 0
    MODULES = 1
    DONE = 2


class OwnerReply(NamedTuple):
    """The content of OwnerServiceInfo (69)."""

    is_more: bool
    is_done: bool
    service_info: list[ServiceInfoKV]


@dataclass(slots=True)
class _Entry:
    module: OwnerModule
    status: ModuleStatus = ModuleStatus.PENDING


SelectModules = Callable[[Devmod], Sequence[OwnerModule]]
"""Chooses the owner modules once the device's devmod is known."""


class OwnerServiceInfoDriver:
    """Runs the owner side of the 68/69 loop; see the module docstring for the flow.

    ``modules`` run in order. Pass ``None`` to choose them from the devmod instead:
    :meth:`handle` then calls its ``select`` argument once, in the round that
    completes devmod. ``mtu`` is the device's maxOwnerServiceInfoSz from 66 (None
    means 1300). Serialisable with :meth:`to_state` / :meth:`from_state`.
    """

    def __init__(
        self,
        modules: Sequence[OwnerModule] | None = None,
        *,
        mtu: int | None = None,
        unlisted: UnlistedModules = UnlistedModules.SKIP,
        slack: int = OWNER_SLACK,
        max_rounds: int = MAX_ROUNDS,
        max_value_size: int = MAX_VALUE_SIZE,
    ) -> None:
        self.mtu = effective_mtu(mtu)
        self.slack = slack
        self.unlisted = unlisted
        self.max_rounds = max_rounds
        self.rounds = 0
        self._selected = modules is not None
        self._entries = [_Entry(m) for m in modules or ()]
        self._index = 0
        self._phase = _Phase.DEVMOD
        self._parser = DevmodParser()
        self._devmod: Devmod | None = None
        self._reasm = Reassembler(max_value_size)
        self._queue = OutQueue()
        self._active: set[str] = set()
        self._inactive: set[str] = set()

    # ------------------------------------------------------------------ queries

    @property
    def done(self) -> bool:
        """True once IsDone has been sent."""
        return self._phase == _Phase.DONE

    @property
    def devmod(self) -> Devmod | None:
        """The device's devmod once complete."""
        return self._devmod

    @property
    def modules(self) -> list[tuple[OwnerModule, ModuleStatus]]:
        """Every module with its status, in order."""
        return [(e.module, e.status) for e in self._entries]

    @property
    def _budget(self) -> int:
        return self.mtu - self.slack

    # ------------------------------------------------------------------ the round

    def handle(
        self,
        is_more: bool,
        service_info: Sequence[ServiceInfoKV],
        *,
        select: SelectModules | None = None,
    ) -> OwnerReply:
        """Process one DeviceServiceInfo (68) and return the OwnerServiceInfo (69).

        ``select`` is needed only when the driver was built without modules; it is
        called once, with the devmod, in the round that completes devmod (and may be
        passed on every call). Its modules are persisted with the driver.
        """
        if self._phase == _Phase.DONE:
            raise UnexpectedMessageError("DeviceServiceInfo after the owner sent IsDone")
        self.rounds += 1
        if self.rounds > self.max_rounds:
            raise InvalidMessageError(f"ServiceInfo exceeded {self.max_rounds} rounds")
        for msg in self._reasm.feed_all(service_info):
            self._dispatch(msg)
        if is_more:
            return OwnerReply(False, False, [])
        if self._phase == _Phase.DEVMOD:
            if not self._parser.complete:
                return OwnerReply(False, False, [])  # go waits too
            self._begin_modules(self._parser.result(), select)
        if not self._queue:
            self._advance()
        if self._queue:
            chunk = self._queue.take(self._budget)
            return OwnerReply(bool(self._queue), False, chunk)
        if self._index < len(self._entries):
            return OwnerReply(False, False, [])
        self._reasm.finish()
        self._phase = _Phase.DONE
        return OwnerReply(False, True, [])

    def _begin_modules(self, devmod: Devmod, select: SelectModules | None) -> None:
        if not self._selected:
            if select is None:
                raise FdoUsageError("OwnerServiceInfoDriver has no modules and handle() got no select")
            self._entries = [_Entry(m) for m in select(devmod)]
            self._selected = True
        self._devmod = devmod
        self._phase = _Phase.MODULES
        if self.unlisted == UnlistedModules.SKIP:
            listed = set(devmod.modules)
            for entry in self._entries:
                if entry.module.name not in listed:
                    entry.status = ModuleStatus.SKIPPED

    def _current(self) -> _Entry | None:
        return self._entries[self._index] if self._index < len(self._entries) else None

    def _dispatch(self, msg: ServiceInfoMessage) -> None:
        if self._phase == _Phase.DEVMOD:
            if msg.module != DEVMOD:
                raise InvalidMessageError(f"{msg.module[:64]!r} message before devmod was complete")
            self._parser.feed_value(msg.message, msg.value)
            return
        entry = self._current()
        if entry is None or msg.module != entry.module.name:
            return  # not for the running module: ignored
        if msg.message == "active":
            active = codec.as_bool(msg.value, f"{msg.module}:active")
            if active and entry.status == ModuleStatus.ACTIVATING:
                self._active.add(msg.module)
                self._start(entry)
            elif not active and entry.status in (ModuleStatus.ACTIVATING, ModuleStatus.ACTIVE):
                self._active.discard(msg.module)
                self._inactive.add(msg.module)
                entry.status = ModuleStatus.SKIPPED
                self._queue.clear()  # only the running module's messages are ever queued
            return
        if entry.status == ModuleStatus.ACTIVE:
            entry.module.handle(msg.message, msg.value)

    def _start(self, entry: _Entry) -> None:
        if self._devmod is None:  # pragma: no cover - modules only start after devmod
            raise FdoUsageError("module started before devmod")
        entry.status = ModuleStatus.ACTIVE
        entry.module.start(self._devmod, self._budget)

    def _listed(self, name: str) -> bool:
        return self._devmod is not None and name in self._devmod.modules

    def _advance(self) -> None:
        """Walk the modules until one queues output or has to wait for the device."""
        while (entry := self._current()) is not None:
            name = entry.module.name
            if entry.status == ModuleStatus.PENDING:
                if name in self._inactive:
                    entry.status = ModuleStatus.SKIPPED
                elif name in self._active:
                    self._start(entry)
                else:
                    self._queue.push([ServiceInfoKV.of(name, "active", True)])
                    if not self._listed(name):
                        entry.status = ModuleStatus.ACTIVATING
                        return
                    self._active.add(name)
                    self._start(entry)
            if entry.status == ModuleStatus.ACTIVATING:
                return
            if entry.status == ModuleStatus.ACTIVE:
                out = entry.module.produce()
                if out:
                    self._queue.push(ServiceInfoKV.of(name, message, value) for message, value in out)
                    if not entry.module.done and self._queue.fits(self._budget):
                        continue  # room left in this reply: the module may add more
                    return
                if not entry.module.done:
                    return
                entry.status = ModuleStatus.DONE
            self._index += 1

    # ------------------------------------------------------------------ persistence

    def to_state(self) -> CborValue:
        """The whole driver, modules included, as a CBOR object."""
        return {
            "v": 1,
            "mtu": self.mtu,
            "slack": self.slack,
            "unlisted": int(self.unlisted),
            "max_rounds": self.max_rounds,
            "max_value": self._reasm.max_size,
            "rounds": self.rounds,
            "phase": int(self._phase),
            "index": self._index,
            "selected": self._selected,
            "parser": self._parser.to_state(),
            "reasm": self._reasm.to_state(),
            "queue": self._queue.to_state(),
            "active": sorted(self._active),
            "inactive": sorted(self._inactive),
            "modules": [[e.module.name, int(e.status), e.module.to_state()] for e in self._entries],
        }

    @classmethod
    def from_state(cls, state: CborValue, restore: Restore) -> Self:
        """Rebuild a driver from :meth:`to_state`; ``restore`` rebuilds each module."""
        try:
            return cls._from_state(state, restore)
        except (MessageBodyError, InvalidMessageError) as exc:
            raise InternalError(f"corrupt ServiceInfo driver state: {exc.message}") from None
        except KeyError as exc:
            raise InternalError(f"corrupt ServiceInfo driver state: no {exc}") from None

    @classmethod
    def _from_state(cls, state: CborValue, restore: Restore) -> Self:
        st = codec.as_map(state, "OwnerServiceInfoDriver state")
        if st.get("v") != 1:
            raise MessageBodyError("unknown state version")
        entries = []
        for item in codec.as_list(st["modules"], "modules"):
            name, status, module_state = codec.as_list(item, "module", 3)
            module = restore(codec.as_str(name, "module name"), module_state)
            if module.name != name:
                raise FdoUsageError(f"restore returned {module.name!r} for {name!r}")
            entries.append(_Entry(module, ModuleStatus(codec.as_int(status, "status", 0, 4))))
        self = cls(
            [],
            mtu=codec.as_uint(st["mtu"], "mtu"),
            unlisted=UnlistedModules(codec.as_int(st["unlisted"], "unlisted", 0, 1)),
            slack=codec.as_uint(st["slack"], "slack"),
            max_rounds=codec.as_uint(st["max_rounds"], "max_rounds"),
            max_value_size=codec.as_uint(st["max_value"], "max_value"),
        )
        self._entries = entries
        self._selected = codec.as_bool(st["selected"], "selected")
        self.rounds = codec.as_uint(st["rounds"], "rounds")
        self._phase = _Phase(codec.as_int(st["phase"], "phase", 0, 2))
        self._index = codec.as_int(st["index"], "index", 0, len(entries))
        self._parser = DevmodParser.from_state(st["parser"])
        if self._phase != _Phase.DEVMOD:
            if not self._parser.complete:
                raise MessageBodyError("devmod incomplete after the devmod phase")
            self._devmod = self._parser.result()
        self._reasm = Reassembler.from_state(st["reasm"], self._reasm.max_size)
        self._queue = OutQueue.from_state(st["queue"])
        self._active = {codec.as_str(n, "name") for n in codec.as_list(st["active"], "active")}
        self._inactive = {codec.as_str(n, "name") for n in codec.as_list(st["inactive"], "inactive")}
        return self
