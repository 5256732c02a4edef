"""fdo.command, both sides (FIDO FSIM repository ``fdo.command.md``, reference §7.5).

Owner → device: ``command`` tstr (the program, e.g. ``sh``), ``args`` **bstr .cbor
[* tstr]**, ``may_fail``, ``return_stdout``, ``return_stderr`` (bool), ``execute``
(null), ``sig`` (int). Device → owner: ``stdout`` / ``stderr`` (bstr, possibly many
blocks) and ``exitcode`` (int). As in go-fdo (``fsim/command_device.go``) the device
runs ``[command, *args]`` directly and, when the command fails and ``may_fail`` is
false, fails TO2 instead of reporting the exit code. The device side also reads
``args`` sent as a plain array (java, pri-fidoiot issue #719).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import InternalError, InvalidMessageError
from fdo.serviceinfo.device import DeviceModule
from fdo.serviceinfo.owner import OwnerModule

COMMAND = "fdo.command"
#: Output block size: the FSIM data block limit.
BLOCK_SIZE = 1014
#: Default cap on collected stdout/stderr, each.
MAX_OUTPUT = 1024 * 1024

Runner = Callable[[list[str]], tuple[int, bytes, bytes]]
"""Runs ``argv`` to completion and returns ``(exitcode, stdout, stderr)``.

Raise :class:`OSError` when the program cannot be started.
"""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What the device reported. Output past ``max_output`` is dropped (``truncated``)."""

    exitcode: int
    stdout: bytes
    stderr: bytes
    truncated: bool = False


class CommandOwner(OwnerModule):
    """Owner side: run one command on the device; :attr:`result` holds the outcome."""

    name = COMMAND

    def __init__(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        may_fail: bool = False,
        return_stdout: bool = True,
        return_stderr: bool = True,
        max_output: int = MAX_OUTPUT,
    ) -> None:
        self.command = command
        self.args = list(args)
        self.may_fail = may_fail
        self.return_stdout = return_stdout
        self.return_stderr = return_stderr
        self.max_output = max_output
        self.result: CommandResult | None = None
        self.done = False
        self._sent = False
        self._truncated = False
        self._stdout = bytearray()
        self._stderr = bytearray()

    def produce(self) -> list[tuple[str, CborValue]]:
        if self._sent:
            return []
        self._sent = True
        return [
            ("command", self.command),
            ("args", codec.encode(self.args)),  # bstr .cbor [* tstr]
            ("may_fail", self.may_fail),
            ("return_stdout", self.return_stdout),
            ("return_stderr", self.return_stderr),
            ("execute", None),
        ]

    def handle(self, message: str, value: CborValue) -> None:
        if self.done:
            return
        if message in ("stdout", "stderr"):
            data = codec.as_bytes(value, f"{COMMAND}:{message}")
            buf = self._stdout if message == "stdout" else self._stderr
            room = max(0, self.max_output - len(buf))
            buf += data[:room]
            self._truncated |= len(data) > room
        elif message in ("exitcode", "exit_code"):  # the FSIM text uses both names
            code = codec.as_int(value, f"{COMMAND}:exitcode")
            self.result = CommandResult(code, bytes(self._stdout), bytes(self._stderr), self._truncated)
            self.done = True
        # anything else is ignored, for forward compatibility

    def to_state(self) -> CborValue:
        return [
            self.command,
            self.args,
            self.may_fail,
            self.return_stdout,
            self.return_stderr,
            self.max_output,
            self._sent,
            self._truncated,
            bytes(self._stdout),
            bytes(self._stderr),
            None if self.result is None else self.result.exitcode,
        ]

    @classmethod
    def from_state(cls, state: CborValue) -> Self:
        items = codec.as_list(state, "CommandOwner", 11)
        self = cls(
            codec.as_str(items[0], "command"),
            [codec.as_str(a, "arg") for a in codec.as_list(items[1], "args")],
            may_fail=codec.as_bool(items[2], "may_fail"),
            return_stdout=codec.as_bool(items[3], "return_stdout"),
            return_stderr=codec.as_bool(items[4], "return_stderr"),
            max_output=codec.as_uint(items[5], "max_output"),
        )
        self._sent = codec.as_bool(items[6], "sent")
        self._truncated = codec.as_bool(items[7], "truncated")
        self._stdout = bytearray(codec.as_bytes(items[8], "stdout"))
        self._stderr = bytearray(codec.as_bytes(items[9], "stderr"))
        if items[10] is not None:
            self.handle("exitcode", items[10])
        return self


def _parse_args(value: CborValue) -> list[str]:
    if isinstance(value, bytes):
        value = codec.decode(value)
    # [* tstr]: a Go owner with no arguments may send null (a nil slice).
    items = codec.as_list_or_null(value, f"{COMMAND}:args")
    return [codec.as_str(a, f"{COMMAND}:args item") for a in items]


def _blocks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class CommandDevice(DeviceModule):
    """Device side: runs the command through the injected ``run`` on ``execute``."""

    name = COMMAND

    def __init__(self, run: Runner, *, block_size: int = BLOCK_SIZE) -> None:
        self._run = run
        self._block_size = block_size
        self._reset()

    def _reset(self) -> None:
        self._command: str | None = None
        self._args: list[str] = []
        self._may_fail = False
        self._return_stdout = False
        self._return_stderr = False

    def activate(self, active: bool) -> None:
        self._reset()

    def handle(self, message: str, value: CborValue) -> list[tuple[str, CborValue]]:
        what = f"{COMMAND}:{message}"
        if message == "command":
            self._reset()
            self._command = codec.as_str(value, what)
        elif message == "args":
            self._args = _parse_args(value)
        elif message == "may_fail":
            self._may_fail = codec.as_bool(value, what)
        elif message == "return_stdout":
            self._return_stdout = codec.as_bool(value, what)
        elif message == "return_stderr":
            self._return_stderr = codec.as_bool(value, what)
        elif message == "execute":
            return self._execute()
        # "sig" needs nothing: run() has already returned. Unknown messages are ignored.
        return []

    def _execute(self) -> list[tuple[str, CborValue]]:
        if not self._command:
            raise InvalidMessageError(f"{COMMAND}: execute without a command")
        argv = [self._command, *self._args]
        try:
            code, out, err = self._run(argv)
        except OSError:
            raise InternalError(f"{COMMAND}: the command could not be started") from None
        if code != 0 and not self._may_fail:
            raise InternalError(f"{COMMAND}: the command failed with exit code {code}")
        replies: list[tuple[str, CborValue]] = []
        if self._return_stdout:
            replies += [("stdout", block) for block in _blocks(out, self._block_size)]
        if self._return_stderr:
            replies += [("stderr", block) for block in _blocks(err, self._block_size)]
        replies.append(("exitcode", code))
        self._reset()
        return replies
