"""Device half of the ServiceInfo exchange, TO2 messages 68/69 (spec §3.8, reference §7.2-7.4).

:class:`DeviceServiceInfoDriver` produces each DeviceServiceInfo (68) and consumes each
OwnerServiceInfo (69)::

    driver = DeviceServiceInfoDriver(devmod, modules)
    driver.set_mtu(max_device_service_info_sz)     # from 67 (or pass mtu= above)
    while True:
        is_more, kvs = driver.next_request()        # send 68 = [is_more, kvs]
        ...                                         # receive 69 = [more, done, kvs]
        driver.handle_reply(more, done, owner_kvs)
        if driver.done:
            break                                   # send Done (70)

The devmod messages go first, chunked to the owner's maxDeviceServiceInfoSz (less 5
bytes of envelope, as go-fdo's device counts), with IsMoreServiceInfo true until the
last devmod chunk; the owner answers each of those with an empty OwnerServiceInfo. The
owner's limit is honoured as announced, however small: a value too large for one
message is cut go-style into same-key fragments (:class:`~fdo.serviceinfo.kv.OutQueue`),
and a limit too small to carry even a key fails TO2 with InvalidMessageError rather
than sending more than the owner accepts. Owner
messages are reassembled and dispatched: ``module:active = true`` is answered with
``module:active = true`` for a module the device has (after
:meth:`DeviceModule.activate`) and ``false`` for one it has not; ``active = false``
deactivates silently (as go does). Messages for a module that is unknown or not active
are ignored (go's device fails TO2 instead). Module replies are queued and sent in
the following 68s, IsMoreServiceInfo true while more is queued. The device never
needs to be persisted, so this driver has no state serialisation.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import FdoUsageError, InvalidMessageError, MessageBodyError
from fdo.serviceinfo.devmod import DEVMOD, Devmod
from fdo.serviceinfo.kv import (
    DEFAULT_MTU,
    DEVICE_SLACK,
    MAX_ROUNDS,
    MAX_VALUE_SIZE,
    OutQueue,
    Reassembler,
    ServiceInfoKV,
    ServiceInfoMessage,
    max_value_size,
)


def _owner_limit(mtu: int | None) -> int:
    """The owner's maxDeviceServiceInfoSz as announced (null means 1300).

    Unlike :func:`~fdo.serviceinfo.kv.effective_mtu` there is no floor: the device
    never sends more than the owner said it accepts.
    """
    return DEFAULT_MTU if mtu is None else int(mtu)


class DeviceModule(ABC):
    """One device-side ServiceInfo module, driven by :class:`DeviceServiceInfoDriver`.

    ``name`` is the module name. :meth:`activate` is told of ``active`` messages;
    :meth:`handle` gets every other message of an active module and returns the replies
    as ``(message, value)`` pairs (names without the module prefix, values as CBOR
    objects). Anything that touches the system (files, processes) is injected by the
    caller, so modules stay free of I/O. Failures that should end TO2 raise
    :class:`~fdo.errors.FdoError` subclasses.
    """

    name: str

    def activate(self, active: bool) -> None:  # noqa: B027 - optional hook
        """The owner (de)activated the module; reset any per-transfer state."""

    @abstractmethod
    def handle(self, message: str, value: CborValue) -> list[tuple[str, CborValue]]:
        """A message from the owner; return the replies to queue."""


class DeviceRequest(NamedTuple):
    """The content of DeviceServiceInfo (68)."""

    is_more: bool
    service_info: list[ServiceInfoKV]


class DeviceServiceInfoDriver:
    """Runs the device side of the 68/69 loop; see the module docstring for the flow.

    ``modules`` maps names to modules (or is a sequence of modules, keyed by ``name``).
    If ``devmod.modules`` is empty it is filled with ``devmod`` and the module names.
    ``mtu`` is the owner's maxDeviceServiceInfoSz from 67 (None means 1300).
    """

    def __init__(
        self,
        devmod: Devmod,
        modules: Mapping[str, DeviceModule] | Iterable[DeviceModule] = (),
        *,
        mtu: int | None = None,
        slack: int = DEVICE_SLACK,
        max_rounds: int = MAX_ROUNDS,
        max_value_size: int = MAX_VALUE_SIZE,
    ) -> None:
        if isinstance(modules, Mapping):
            self._modules: dict[str, DeviceModule] = dict(modules)
        else:
            self._modules = {m.name: m for m in modules}
        if DEVMOD in self._modules:
            raise FdoUsageError("devmod is built in, not a DeviceModule")
        if not devmod.modules:
            devmod = dataclasses.replace(devmod, modules=(DEVMOD, *self._modules))
        devmod.to_kvs()  # fail now, not at the first request, if devmod is unusable
        self.devmod = devmod
        self.mtu = _owner_limit(mtu)
        self.slack = slack
        self.max_rounds = max_rounds
        self.rounds = 0
        self._active: set[str] = set()
        self._reasm = Reassembler(max_value_size)
        self._queue = OutQueue()  # devmod is queued by the first next_request()
        self._done = False

    @property
    def done(self) -> bool:
        """True once the owner sent IsDone: the device sends Done (70) next."""
        return self._done

    @property
    def active_modules(self) -> frozenset[str]:
        """Names of the modules the owner has activated."""
        return frozenset(self._active)

    def set_mtu(self, mtu: int | None) -> None:
        """Set the owner's maxDeviceServiceInfoSz from 67 (None means 1300).

        For callers that build the driver before TO2 starts; call it before the first
        :meth:`next_request` so the devmod module list is split for this size too.
        """
        self.mtu = _owner_limit(mtu)

    def next_request(self) -> DeviceRequest:
        """The next DeviceServiceInfo (68): the next chunk of what is queued."""
        if self._done:
            raise FdoUsageError("ServiceInfo exchange already finished")
        try:
            if self.rounds == 0:
                self._queue.push(self.devmod.to_kvs(self.mtu, slack=self.slack))
            self.rounds += 1
            if self.rounds > self.max_rounds:
                raise InvalidMessageError(f"ServiceInfo exceeded {self.max_rounds} rounds")
            chunk = self._queue.take(self.mtu - self.slack)
        except FdoUsageError as exc:
            # A key (or a module name) longer than the owner's limit: sending it anyway
            # would exceed what the owner said it accepts.
            raise InvalidMessageError(
                f"the owner's maxDeviceServiceInfoSz {self.mtu} is too small: {exc}"
            ) from None
        return DeviceRequest(bool(self._queue), chunk)

    def handle_reply(self, is_more: bool, is_done: bool, service_info: Sequence[ServiceInfoKV]) -> None:
        """Process one OwnerServiceInfo (69).

        ``is_more`` needs no action: whether the owner has more or not, the next
        request carries whatever the device has queued, or nothing, to pull it.
        """
        for msg in self._reasm.feed_all(service_info):
            self._dispatch(msg)
        if is_done:
            self._reasm.finish()
            self._queue.clear()  # go discards device messages the owner will never read
            self._done = True

    def _dispatch(self, msg: ServiceInfoMessage) -> None:
        module = self._modules.get(msg.module)
        if msg.message == "active":
            active = codec.as_bool(msg.value, f"{msg.module}:active")
            if msg.module == DEVMOD or not msg.module:
                return
            if module is None:
                if active:
                    reply = ServiceInfoKV.of(msg.module, "active", False)
                    if max_value_size(reply.key, self.mtu - self.slack) < len(reply.value):
                        raise MessageBodyError("ServiceInfo module name too long to answer")
                    self._queue.push([reply])
                return
            module.activate(active)
            if active:
                self._active.add(msg.module)
                self._queue.push([ServiceInfoKV.of(msg.module, "active", True)])
            else:
                self._active.discard(msg.module)
            return
        if module is None or msg.module not in self._active:
            return  # unknown or inactive module: ignored
        replies = module.handle(msg.message, msg.value)
        self._queue.push(ServiceInfoKV.of(msg.module, name, value) for name, value in replies)
