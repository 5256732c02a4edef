"""ServiceInfo key-value pairs, MTU-aware chunking and reassembly (spec §3.8, reference §7.1-7.2).

``ServiceInfo = [* ServiceInfoKV]`` and ``ServiceInfoKV = [key: tstr "module:message",
value: bstr .cbor any]``. :class:`ServiceInfoKV` keeps the value as the raw CBOR bytes
inside the bstr, so a value can be sized, split and forwarded without re-encoding.

Sizes. Each side announces the largest ServiceInfo it accepts (66/67; null means
:data:`DEFAULT_MTU`). Like go-fdo we count the encoded ``[* kv]`` array plus a few
bytes of *slack* for the message envelope: 3 on the owner side (``[bool, bool, SI]``,
go ``serviceinfo.NewProducer``) and 5 on the device side (go ``exchangeServiceInfo``).

Splitting. A single value too large for one message is cut, as go-fdo does
(``serviceinfo/chunk.go``), into consecutive KVs with the same key whose values are
byte fragments of the one CBOR item. Values are only split when they cannot fit in an
empty message, so peers that do not reassemble (java, rs) never see fragments as long
as each value stays below the MTU.

Reassembly. go's receivers join consecutive same-key KVs into one byte stream and read
it as a sequence of CBOR items (``ChunkWriter.WriteChunk``). :class:`Reassembler` does
the same: it yields every complete item and keeps an unterminated tail, even across
messages, until the rest arrives. Framing is found with a resumable scanner
(:mod:`fdo.serviceinfo._framing`), so a long run of fragments costs linear time; each
complete item is then decoded by :func:`fdo.codec.decode`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import FdoUsageError, MessageBodyError
from fdo.serviceinfo._framing import Framer

#: ServiceInfo size assumed when the peer's limit is null (spec; go-fdo used 1300 until
#: it raised its own default to 14000 in newer releases).
DEFAULT_MTU = 1300
#: Envelope bytes reserved on top of the ServiceInfo array in OwnerServiceInfo (69).
OWNER_SLACK = 3
#: Envelope bytes reserved on top of the ServiceInfo array in DeviceServiceInfo (68).
DEVICE_SLACK = 5
#: Smallest limit honoured: a peer announcing less is treated as announcing this.
MIN_MTU = 256
#: Default cap on one reassembled value.
MAX_VALUE_SIZE = 16 * 1024 * 1024
#: Default bound on 68/69 round trips (go stops at 10^6, rs at 1000).
MAX_ROUNDS = 10_000


def _largest_fit(avail: int) -> int:
    """Largest ``n`` with ``head(n) + n <= avail``, or -1 if not even ``n = 0`` fits."""
    for head in (1, 2, 3, 5, 9):
        n = avail - head
        if n < 0:
            return -1
        if codec.head_length(n) <= head:
            return n
    return -1  # pragma: no cover - avail beyond 2**64


def effective_mtu(mtu: int | None) -> int:
    """The limit to use for a peer's announced size: null means 1300, tiny values are raised."""
    if mtu is None:
        return DEFAULT_MTU
    return max(int(mtu), MIN_MTU)


@dataclass(frozen=True, slots=True)
class ServiceInfoKV:
    """One ``[ServiceInfoKey, ServiceInfoVal]``; ``value`` is the CBOR inside the bstr.

    A fragment produced by splitting (see module docstring) is also a ServiceInfoKV
    whose value is not, on its own, a complete CBOR item.
    """

    key: str
    value: bytes

    @classmethod
    def of(cls, module: str, message: str, obj: CborValue) -> Self:
        """Build ``module:message`` with ``obj`` encoded as the value."""
        if ":" in module or not module:
            raise FdoUsageError(f"invalid ServiceInfo module name {module!r}")
        return cls(f"{module}:{message}", codec.encode(obj))

    @property
    def module(self) -> str:
        """The part of the key before the first ``:``."""
        return self.key.partition(":")[0]

    @property
    def message(self) -> str:
        """The part of the key after the first ``:``."""
        return self.key.partition(":")[2]

    def decoded(self) -> CborValue:
        """The value as an object (raises MessageBodyError for a fragment or bad CBOR)."""
        return codec.decode(self.value)

    def size(self) -> int:
        """Encoded size of ``[key, value]``."""
        key_len = len(self.key.encode("utf-8"))
        return 1 + codec.head_length(key_len) + key_len + codec.head_length(len(self.value)) + len(self.value)

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.key, self.value]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "ServiceInfoKV", 2)
        # Like go (strings.Cut) a key without ':' is read, as module name only.
        key = codec.as_str(items[0], "ServiceInfoKey")
        return cls(key, codec.as_bytes(items[1], "ServiceInfoVal"))


def encode_service_info(kvs: Iterable[ServiceInfoKV]) -> list[CborValue]:
    """The ``ServiceInfo`` array as a CBOR object; empty is always ``[]``."""
    return [kv.to_cbor_obj() for kv in kvs]


def _is_empty_placeholder(obj: CborValue) -> bool:
    # Old java wrote an empty ServiceInfo as [[[]]] (pri-fidoiot PR #291): the KV
    # slot holds [] or [[]] instead of [key, value].
    return isinstance(obj, list | tuple) and all(
        isinstance(item, list | tuple) and len(item) == 0 for item in obj
    )


def decode_service_info(obj: CborValue) -> list[ServiceInfoKV]:
    """Parse a ``ServiceInfo`` array (``[* ServiceInfoKV]``).

    Empty forms other implementations write all read as ``[]``: ``null`` (Go encoders
    that write a nil slice as null) and java's old ``[[[]]]``.
    """
    items = codec.as_list_or_null(obj, "ServiceInfo")
    return [ServiceInfoKV.from_cbor_obj(item) for item in items if not _is_empty_placeholder(item)]


def service_info_size(kvs: Sequence[ServiceInfoKV]) -> int:
    """Encoded size of the ``[* kv]`` array (go ``ArraySizeCBOR``)."""
    return codec.head_length(len(kvs)) + sum(kv.size() for kv in kvs)


def max_value_size(key: str, budget: int) -> int:
    """Largest value length (CBOR bytes) for which ``[[key, value]]`` fits in ``budget``.

    ``budget`` is a ServiceInfo size with the envelope slack already taken off. Returns
    -1 when not even an empty value fits.
    """
    key_len = len(key.encode("utf-8"))
    return _largest_fit(budget - 1 - 1 - codec.head_length(key_len) - key_len)


def max_bstr_data(key: str, budget: int) -> int:
    """Largest ``len(data)`` such that ``[[key, bstr .cbor bstr(data)]]`` fits in ``budget``.

    Modules use it to size data chunks (fdo.download, fdo.upload) so that each one fits
    in a message of its own without being split.
    """
    return _largest_fit(max_value_size(key, budget))


class OutQueue:
    """KVs waiting to be sent, taken in MTU-sized chunks; serialisable.

    A value that cannot fit even in an empty chunk is split: the fragment that fits is
    sent and the remainder stays at the head of the queue with the same key.
    """

    __slots__ = ("_queue",)

    def __init__(self, kvs: Iterable[ServiceInfoKV] = ()) -> None:
        self._queue: deque[ServiceInfoKV] = deque(kvs)

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def push(self, kvs: Iterable[ServiceInfoKV]) -> None:
        """Append KVs to the end of the queue."""
        self._queue.extend(kvs)

    def fits(self, budget: int) -> bool:
        """True when everything queued goes out in one chunk of ``budget`` bytes."""
        return codec.head_length(len(self._queue)) + sum(kv.size() for kv in self._queue) <= budget

    def clear(self) -> None:
        """Drop everything queued."""
        self._queue.clear()

    def take(self, budget: int) -> list[ServiceInfoKV]:
        """Remove and return the next chunk: a list whose encoded array fits in ``budget``.

        Raises FdoUsageError if ``budget`` cannot hold even one byte of the head KV's
        value next to its key.
        """
        out: list[ServiceInfoKV] = []
        content = 0
        while self._queue:
            kv = self._queue[0]
            size = kv.size()
            if codec.head_length(len(out) + 1) + content + size <= budget:
                out.append(self._queue.popleft())
                content += size
                continue
            if out:
                break  # start the next chunk with it rather than splitting it
            n = max_value_size(kv.key, budget)
            if n < 1:
                raise FdoUsageError(f"ServiceInfo limit {budget} too small for key {kv.key[:64]!r}")
            out.append(ServiceInfoKV(kv.key, kv.value[:n]))
            self._queue[0] = ServiceInfoKV(kv.key, kv.value[n:])
            break
        return out

    def to_state(self) -> list[CborValue]:
        return encode_service_info(self._queue)

    @classmethod
    def from_state(cls, state: CborValue) -> Self:
        items = codec.as_list(state, "OutQueue")
        return cls(ServiceInfoKV(codec.as_str(k, "key"), codec.as_bytes(v, "value")) for k, v in items)


def chunk_kvs(
    kvs: Iterable[ServiceInfoKV], mtu: int = DEFAULT_MTU, *, slack: int = DEVICE_SLACK
) -> list[list[ServiceInfoKV]]:
    """Split ``kvs`` into chunks whose ``[* kv]`` array plus ``slack`` is at most ``mtu``.

    Order is kept. A value too large for any chunk is split into consecutive same-key
    fragments (go-fdo ``serviceinfo/chunk.go``); :class:`Reassembler` joins them.
    """
    queue = OutQueue(kvs)
    chunks: list[list[ServiceInfoKV]] = []
    while queue:
        chunks.append(queue.take(mtu - slack))
    return chunks


class ServiceInfoMessage(NamedTuple):
    """One complete ServiceInfo message: module, message name and decoded value."""

    module: str
    message: str
    value: CborValue


class Reassembler:
    """Join same-key fragments back into CBOR items, in order.

    Feed every received KV in order with :meth:`feed`; it returns the complete messages
    it can. A value left unterminated at the end of a message is kept (and serialised
    with :meth:`to_state`) until its next fragment arrives in a later message. A KV
    with another key while a value is unterminated, a value over ``max_size`` bytes,
    or malformed CBOR raises MessageBodyError. Call :meth:`finish` when the exchange
    ends to reject a value that never completed.
    """

    __slots__ = ("_key", "_buf", "_framer", "max_size")

    def __init__(self, max_size: int = MAX_VALUE_SIZE) -> None:
        self.max_size = max_size
        self._key: str | None = None
        self._buf = bytearray()
        self._framer = Framer(max_size)

    @property
    def pending(self) -> bool:
        """True while a value is incomplete."""
        return self._key is not None

    def feed(self, kv: ServiceInfoKV) -> list[ServiceInfoMessage]:
        """Add one KV; return the messages it completes (possibly none, possibly several)."""
        if self._key is not None and kv.key != self._key:
            raise MessageBodyError(f"ServiceInfo value for {self._key[:64]!r} ended incomplete")
        if self._key is None and not kv.value:
            raise MessageBodyError(f"empty ServiceInfo value for {kv.key[:64]!r}")
        if len(self._buf) + len(kv.value) > self.max_size:
            raise MessageBodyError(f"ServiceInfo value for {kv.key[:64]!r} exceeds {self.max_size} bytes")
        module, _, message = kv.key.partition(":")
        out: list[ServiceInfoMessage] = []
        start = 0
        for end in self._framer.feed(kv.value):
            self._buf += kv.value[start:end]
            out.append(ServiceInfoMessage(module, message, codec.decode(self._buf)))
            self._buf.clear()
            start = end
        self._buf += kv.value[start:]
        self._key = kv.key if self._buf else None
        return out

    def feed_all(self, kvs: Iterable[ServiceInfoKV]) -> list[ServiceInfoMessage]:
        """:meth:`feed` each KV in turn and return all completed messages."""
        out: list[ServiceInfoMessage] = []
        for kv in kvs:
            out.extend(self.feed(kv))
        return out

    def finish(self) -> None:
        """Raise MessageBodyError if a value is still incomplete."""
        if self._key is not None:
            raise MessageBodyError(f"ServiceInfo value for {self._key[:64]!r} never completed")

    def to_state(self) -> CborValue:
        return None if self._key is None else [self._key, bytes(self._buf)]

    @classmethod
    def from_state(cls, state: CborValue, max_size: int = MAX_VALUE_SIZE) -> Self:
        self = cls(max_size)
        if state is not None:
            items = codec.as_list(state, "Reassembler", 2)
            key = codec.as_str(items[0], "key")
            buf = codec.as_bytes(items[1], "buffer")
            if not buf or self._framer.feed(buf):
                raise MessageBodyError("Reassembler state is not an incomplete value")
            self._key, self._buf = key, bytearray(buf)
        return self
