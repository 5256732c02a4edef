"""A small, strict stand-in for systemd that boots the device units under a fake root.

systemd does not run in the test container, so :class:`Host` plays PID 1 for the few
directives the device units use, with systemd's semantics:

* Unit files are parsed like systemd does: ``[Section]`` headers, ``#``/``;`` comments,
  backslash continuations, repeated keys kept in order, and an empty value resetting a
  list (``After=``, ``Condition*=``, ``Exec*=``). A directive the harness does not
  implement raises :class:`HarnessError` unless it is listed as harmless, so a unit
  cannot change behaviour behind the test's back.
* ``Condition*=`` (``PathExists``, ``PathIsDirectory``, ``FileNotEmpty``) with ``!``
  negation and ``|`` triggering conditions are checked at every start, restarts
  included; a unit whose conditions fail is skipped (it is not a failure).
* ``ExecStartPre=``, ``ExecStart=`` (several, for ``Type=oneshot``) and
  ``ExecStartPost=`` run in order as real processes, each in its own process group, with
  systemd's clean environment (only ``PATH`` and ``LANG``) plus ``Environment=`` and
  then ``EnvironmentFile=`` (read at each start; ``-``: optional; later assignments
  win), and ``/`` (the fake root) as working directory. The prefixes ``-`` (failure
  ignored), ``@`` (argv[0] given), ``:`` (no ``$`` expansion), ``+``, ``!`` and ``!!``
  (privileges; the harness runs everything as itself) are understood. ``$VAR`` and
  ``%`` specifiers other than ``%%`` are not implemented and raise.
* ``Type=exec``: ``ExecStartPre=`` lines run first, then the ``ExecStart=`` process is
  started and the start job is done: the boot goes on to the next unit (units
  ``After=`` it start now, not when it exits) while the process runs in the background.
  When it exits, ``Restart=on-failure`` starts the unit again (conditions, start limit
  and ``ExecStartPre=`` again), in the background. :meth:`Host.wait` waits for a
  background unit to finish; the next :meth:`Host.boot` (or :meth:`Host.power_off`)
  kills what still runs, as a power cut would (``ExecStartPost=`` is not implemented
  for ``Type=exec``: systemd runs it right after the start, not after the exit).
* Every absolute path, in a condition, an Exec argument (also after ``--opt=``) or an
  environment value, is mapped into the fake root; executables map through :attr:`Host.executables`.
  ``/run`` is a tmpfs: it is emptied at every boot.
* ``Restart=no|on-failure`` with ``RestartSec=`` (slept for ``RestartSec * time_scale``
  but recorded unscaled), ``TimeoutStartSec=``, and the start rate limit
  (``StartLimitIntervalSec=``, ``StartLimitBurst=``) on a virtual clock that advances by
  the unscaled restart delays. A restarting unit keeps its start job, so units ordered
  ``After=`` it wait until it succeeds or gives up, as in systemd.
* A boot (:meth:`Host.boot`) first boots the fake bootc's staged deployment
  (``bootc fake-reboot``), empties ``/run``, then starts the enabled units one at a time
  in ``After=``/``Before=`` order.
* ``PATH`` starts with a folder holding a ``bootc`` wrapper around ``tests/fakes/bootc``
  and a fake ``systemctl``. ``systemctl reboot`` and a successful
  ``bootc switch --apply`` request a reboot: like the stop jobs of systemd's shutdown
  transaction, the request kills the calling unit's process group (SIGTERM), the unit
  is recorded as stopped (no restart, no later Exec lines) and no further unit starts
  in that boot. ``systemctl enable`` is recorded.

Simplifications, all harmless for these units: units start one after the other (no
parallel start), targets named in ``After=``/``Wants=`` (:data:`KNOWN_TARGETS`) count
as reached, a unit starts at most once per boot (so ``RemainAfterExit=`` is only
parsed), booted units must be ``WantedBy=multi-user.target``, and there is no
``User=``, cgroup or journal. Only paths written in the unit are mapped: a program's
own defaults (``fdo device onboard``'s ``--apply-root /``) are not, so tests must not
hand it anything that writes outside the fake root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

FAKE_BOOTC = Path(__file__).resolve().parents[1] / "fakes" / "bootc"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KNOWN_TARGETS = frozenset({"network-online.target", "network.target", "multi-user.target"})
CONDITIONS = ("ConditionPathExists", "ConditionPathIsDirectory", "ConditionFileNotEmpty")
EXEC_KEYS = ("ExecStartPre", "ExecStart", "ExecStartPost")
ENV_KEYS = ("Environment", "EnvironmentFile")
LIST_KEYS = frozenset(
    {"After", "Before", "Wants", "WantedBy", "Documentation", *CONDITIONS, *EXEC_KEYS, *ENV_KEYS}
)

#: Directives the harness implements, and ones that cannot change what runs.
IMPLEMENTED: Mapping[str, frozenset[str]] = {
    "Unit": frozenset({"After", "Before", "StartLimitIntervalSec", "StartLimitBurst", *CONDITIONS}),
    "Service": frozenset(
        {"Type", "RemainAfterExit", "Restart", "RestartSec", "TimeoutStartSec", *EXEC_KEYS, *ENV_KEYS}
    ),
    "Install": frozenset({"WantedBy"}),
}
HARMLESS: Mapping[str, frozenset[str]] = {
    "Unit": frozenset({"Description", "Documentation", "Wants"}),
    "Service": frozenset(),
    "Install": frozenset(),
}
#: Signals systemd counts as a clean exit for Restart=on-failure.
CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SPAN_UNITS = {
    "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "msec": 1e-3, "us": 1e-6, "usec": 1e-6,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0,
}  # fmt: skip


class HarnessError(Exception):
    """The unit uses something the harness does not implement, or a test guard tripped."""


# ---------------------------------------------------------------------------- parsing


def parse_timespan(text: str) -> float | None:
    """Seconds in a systemd time span (``60``, ``1min 30s``, ``500ms``); None for infinity."""
    text = text.strip()
    if text == "infinity":
        return None
    pos, total = 0, 0.0
    for match in _SPAN.finditer(text):
        if text[pos : match.start()].strip() or match.group(2) not in _SPAN_UNITS:
            raise HarnessError(f"bad time span {text!r}")
        total += float(match.group(1)) * _SPAN_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise HarnessError(f"bad time span {text!r}")
    return total


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "yes", "y", "true", "t", "on"}:
        return True
    if value in {"0", "no", "n", "false", "f", "off"}:
        return False
    raise HarnessError(f"bad boolean {text!r}")


def _specifiers(value: str, where: str) -> str:
    if re.search(r"%[^%]", value.replace("%%", "")):
        raise HarnessError(f"{where}: % specifiers are not implemented: {value!r}")
    return value.replace("%%", "%")


@dataclass(frozen=True, slots=True)
class ExecCommand:
    """One ``Exec*=`` line: its prefixes and words (executable first)."""

    line: str
    words: tuple[str, ...]
    ignore_failure: bool = False
    argv0: str | None = None  # the ``@`` prefix: argv[0] differs from the executable
    privileged: str = ""  # "+", "!" or "!!": recorded, not enforced

    @classmethod
    def parse(cls, value: str, where: str) -> ExecCommand:
        prefixes = re.match(r"[-@:+!]*", value)
        flags = prefixes.group(0) if prefixes else ""
        rest = value[len(flags) :]
        if not rest.strip():
            raise HarnessError(f"{where}: empty command")
        if ":" not in flags and "$" in rest:
            raise HarnessError(f"{where}: environment variable expansion is not implemented: {value!r}")
        words = shlex.split(_specifiers(rest, where), posix=True)
        if ";" in words:
            raise HarnessError(f"{where}: ';' separated commands are not supported by systemd")
        argv0 = None
        if "@" in flags:
            if len(words) < 2:
                raise HarnessError(f"{where}: '@' needs an argv[0] after the executable")
            argv0 = words.pop(1)
        if not words[0].startswith("/"):
            raise HarnessError(f"{where}: the harness wants absolute executables, got {words[0]!r}")
        privileged = "!!" if "!!" in flags else ("!" if "!" in flags else ("+" if "+" in flags else ""))
        return cls(value, tuple(words), "-" in flags, argv0, privileged)


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    path: str
    negate: bool
    trigger: bool

    def holds(self, resolve: Callable[[str], Path]) -> bool:
        target = resolve(self.path)
        if self.key == "ConditionPathExists":
            ok = target.exists() or target.is_symlink()
        elif self.key == "ConditionPathIsDirectory":
            ok = target.is_dir()
        else:  # ConditionFileNotEmpty
            ok = target.is_file() and target.stat().st_size > 0
        return ok != self.negate

    def __str__(self) -> str:
        return f"{self.key}={'|' if self.trigger else ''}{'!' if self.negate else ''}{self.path}"


@dataclass(frozen=True)
class UnitFile:
    """A parsed service unit: ``sections[section][key]`` is the list of values in order."""

    name: str
    sections: Mapping[str, Mapping[str, Sequence[str]]]

    @classmethod
    def load(cls, path: Path) -> UnitFile:
        if path.suffix != ".service":
            raise HarnessError(f"{path.name}: only .service units are implemented")
        sections: dict[str, dict[str, list[str]]] = {}
        current: dict[str, list[str]] | None = None
        section = ""
        logical: list[str] = []
        buf = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            if not buf and raw.lstrip()[:1] in ("#", ";"):
                continue
            if raw.endswith("\\"):
                buf += raw[:-1] + " "
                continue
            logical.append(buf + raw)
            buf = ""
        if buf:
            logical.append(buf)
        for line in (x.strip() for x in logical):
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                name = line[1:-1]
                if name not in IMPLEMENTED:
                    raise HarnessError(f"{path.name}: section [{name}] is not implemented")
                current, section = sections.setdefault(name, {}), name
                continue
            if current is None or "=" not in line:
                raise HarnessError(f"{path.name}: cannot parse {line!r}")
            key, _, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if key not in IMPLEMENTED[section] | HARMLESS[section]:
                raise HarnessError(f"{path.name}: [{section}] {key}= is not implemented by the harness")
            values = current.setdefault(key, [])
            if not value and key in LIST_KEYS:
                values.clear()  # systemd: an empty assignment resets the list
            elif key in LIST_KEYS and key in {"After", "Before", "Wants", "WantedBy"}:
                values.extend(value.split())
            elif key in LIST_KEYS:
                values.append(value)
            else:
                values[:] = [value]  # single-valued: the last assignment wins
        unit = cls(path.name, sections)
        unit.validate()
        return unit

    def values(self, section: str, key: str) -> list[str]:
        return list(self.sections.get(section, {}).get(key, []))

    def value(self, section: str, key: str, default: str) -> str:
        found = self.values(section, key)
        return found[-1] if found else default

    # ------------------------------------------------------------------ semantics

    @property
    def type(self) -> str:
        return self.value("Service", "Type", "simple")

    @property
    def restart(self) -> str:
        return self.value("Service", "Restart", "no")

    @property
    def restart_sec(self) -> float:
        return parse_timespan(self.value("Service", "RestartSec", "100ms")) or 0.0

    @property
    def timeout_start(self) -> float | None:
        # systemd disables the start timeout for Type=oneshot unless it is set.
        return parse_timespan(self.value("Service", "TimeoutStartSec", "infinity"))

    @property
    def start_limit(self) -> tuple[float, int]:
        interval = parse_timespan(self.value("Unit", "StartLimitIntervalSec", "10s")) or 0.0
        return interval, int(self.value("Unit", "StartLimitBurst", "5"))

    @property
    def remain_after_exit(self) -> bool:
        return parse_bool(self.value("Service", "RemainAfterExit", "no"))

    def conditions(self) -> list[Condition]:
        out = []
        for key in CONDITIONS:
            for value in self.values("Unit", key):
                trigger = value.startswith("|")
                value = value[1:] if trigger else value
                negate = value.startswith("!")
                value = _specifiers(value[1:] if negate else value, f"{self.name} {key}")
                if not value.startswith("/"):
                    raise HarnessError(f"{self.name}: {key}= needs an absolute path, got {value!r}")
                out.append(Condition(key, value, negate, trigger))
        return out

    def commands(self, key: str) -> list[ExecCommand]:
        return [ExecCommand.parse(v, f"{self.name} {key}") for v in self.values("Service", key)]

    def environment(self) -> list[tuple[str, str]]:
        """``Environment=`` assignments in order (quotes as systemd splits them)."""
        out = []
        for value in self.values("Service", "Environment"):
            for word in shlex.split(_specifiers(value, f"{self.name} Environment"), posix=True):
                key, eq, val = word.partition("=")
                if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise HarnessError(f"{self.name}: bad Environment= assignment {word!r}")
                out.append((key, val))
        return out

    def environment_files(self) -> list[tuple[str, bool]]:
        """``EnvironmentFile=`` paths in order, with whether the file is optional (``-``)."""
        out = []
        for value in self.values("Service", "EnvironmentFile"):
            optional = value.startswith("-")
            path = _specifiers(value[1:] if optional else value, f"{self.name} EnvironmentFile")
            if not path.startswith("/"):
                raise HarnessError(f"{self.name}: EnvironmentFile= needs an absolute path, got {path!r}")
            out.append((path, optional))
        return out

    def validate(self) -> None:
        if self.type not in ("oneshot", "exec"):
            raise HarnessError(f"{self.name}: Type={self.type} is not implemented (only oneshot and exec)")
        if self.type == "exec" and len(self.values("Service", "ExecStart")) != 1:
            raise HarnessError(f"{self.name}: Type=exec needs exactly one ExecStart=")
        if self.type == "exec" and self.values("Service", "ExecStartPost"):
            raise HarnessError(f"{self.name}: ExecStartPost= with Type=exec is not implemented")
        if self.restart not in ("no", "on-failure"):
            raise HarnessError(f"{self.name}: Restart={self.restart} is not implemented")
        if not self.values("Service", "ExecStart"):
            raise HarnessError(f"{self.name}: a oneshot service needs ExecStart=")
        for key in EXEC_KEYS:
            self.commands(key)
        self.conditions()
        self.environment()
        self.environment_files()
        _ = (self.restart_sec, self.timeout_start, self.start_limit, self.remain_after_exit)


def read_env_file(path: Path) -> list[tuple[str, str]]:
    """``KEY=VALUE`` lines as systemd reads an ``EnvironmentFile=`` (comments, quotes)."""
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise HarnessError(f"{path}:{number}: not an assignment: {raw!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif value[:1] in ("'", '"') or "$" in value or "\\" in value:
            raise HarnessError(f"{path}:{number}: quoting or expansion the harness does not implement")
        out.append((key, value))
    return out


def enabled_by_containerfile(containerfile: Path) -> list[str]:
    """The units a Containerfile enables with ``systemctl enable``."""
    text = containerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    names: list[str] = []
    for match in re.finditer(r"systemctl\s+enable\s+([^&;\n]+)", text):
        names += [w for w in match.group(1).split() if not w.startswith("-")]
    return names


def boot_order(units: Sequence[UnitFile]) -> list[UnitFile]:
    """Units sorted by ``After=``/``Before=`` (ties by name); raises on cycles or unknown units."""
    by_name = {u.name: u for u in units}
    after: dict[str, set[str]] = {u.name: set() for u in units}
    for u in units:
        for key in ("Wants", "After", "Before"):
            for other in u.values("Unit", key):
                if other not in by_name and other not in KNOWN_TARGETS:
                    raise HarnessError(f"{u.name}: {key}={other} is neither booted nor a known target")
        after[u.name] |= {o for o in u.values("Unit", "After") if o in by_name}
        for other in u.values("Unit", "Before"):
            if other in by_name:
                after[other].add(u.name)
    order: list[UnitFile] = []
    while after:
        ready = sorted(n for n, deps in after.items() if not deps)
        if not ready:
            raise HarnessError(f"ordering cycle between {sorted(after)}")
        order.append(by_name[ready[0]])
        del after[ready[0]]
        for deps in after.values():
            deps.discard(ready[0])
    return order


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ProcessRun:
    key: str  # ExecStartPre, ExecStart, ExecStartPost
    argv: tuple[str, ...]  # as written in the unit
    mapped: tuple[str, ...]  # as run
    returncode: int  # negative: killed by that signal
    output: str


@dataclass
class UnitRun:
    """What happened to one unit in one boot."""

    name: str
    result: str = "not started"  # success, failed, skipped, stopped, start-limit-hit
    reason: str = ""
    starts: int = 0
    restart_delays: list[float] = field(default_factory=list)  # unscaled RestartSec per restart
    processes: list[ProcessRun] = field(default_factory=list)
    #: Type=exec: the main process while it runs, and the thread supervising the unit.
    main: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Type=exec: the file the main process writes its output to, readable while it runs.
    main_log: Path | None = field(default=None, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)
    error: BaseException | None = field(default=None, repr=False)

    @property
    def restarts(self) -> int:
        return len(self.restart_delays)

    def ran(self, word: str) -> list[ProcessRun]:
        """The processes whose argv contains ``word``."""
        return [p for p in self.processes if word in p.argv]

    def wait_output(self, text: str, timeout: float = 60.0) -> None:
        """Wait until the running main process (Type=exec) has printed ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.main_log
            if log is not None and log.exists() and text in log.read_text(errors="replace"):
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name}: {text!r} not printed within {timeout:g}s")
            time.sleep(0.05)


@dataclass
class BootRecord:
    number: int
    units: dict[str, UnitRun] = field(default_factory=dict)
    reboot_requested_by: str | None = None
    powered_off: bool = False

    def ran(self) -> list[str]:
        """Units that started at least one process."""
        return [n for n, u in self.units.items() if u.processes]


# ---------------------------------------------------------------------------- the host


_BOOTC_WRAPPER = """#!{python}
import os, signal, subprocess, sys
env = dict(os.environ, FAKE_BOOTC_STATE={state!r})
code = subprocess.call([sys.executable, {fake!r}, *sys.argv[1:]], env=env)
if code == 0 and sys.argv[1:2] == ["switch"] and "--apply" in sys.argv[2:]:
    with open({reboots!r}, "a") as f:
        f.write("bootc switch --apply\\n")
    os.killpg(os.getpgrp(), signal.SIGTERM)
sys.exit(code)
"""

_SYSTEMCTL_WRAPPER = """#!{python}
import json, os, signal, sys
args = [a for a in sys.argv[1:] if not a.startswith("--root=")]
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if args == ["reboot"]:
    with open({reboots!r}, "a") as f:
        f.write("systemctl reboot\\n")
    os.killpg(os.getpgrp(), signal.SIGTERM)
elif args[:1] == ["enable"] and len(args) >= 2:
    sys.exit(0)
else:
    print("harness systemctl: unsupported " + json.dumps(sys.argv[1:]), file=sys.stderr)
    sys.exit(1)
"""


class Host:
    """A fake root folder the units boot in, with the fake bootc on ``PATH``.

    ``executables`` maps the unit's absolute executables to real ones; an executable not
    in it raises. ``time_scale`` multiplies ``RestartSec`` (0: restart at once).
    ``process_timeout`` is a test guard for commands with no start timeout.
    """

    def __init__(
        self,
        workdir: Path,
        executables: Mapping[str, str],
        *,
        time_scale: float = 0.0,
        process_timeout: float = 60.0,
        max_starts: int = 20,
    ) -> None:
        self.root = workdir / "root"
        self.harness = workdir / "harness"
        self.bin = self.harness / "bin"
        self.bootc_state = self.harness / "bootc"
        self.reboots = self.harness / "reboots.log"
        self.systemctl_log = self.harness / "systemctl.log"
        self.executables = dict(executables)
        self.time_scale = time_scale
        self.process_timeout = process_timeout
        self.max_starts = max_starts
        self.boots: list[BootRecord] = []
        #: The process running now, and its unit's argv (for tests that crash it).
        self.current: subprocess.Popen[bytes] | None = None
        self.current_argv: tuple[str, ...] = ()
        self._logs = 0
        for folder in (self.root, self.bin, self.bootc_state):
            folder.mkdir(parents=True, exist_ok=True)
        self.reboots.touch()
        python = sys.executable
        wrappers = {
            "bootc": _BOOTC_WRAPPER.format(
                python=python, state=str(self.bootc_state), fake=str(FAKE_BOOTC), reboots=str(self.reboots)
            ),
            "systemctl": _SYSTEMCTL_WRAPPER.format(
                python=python, log=str(self.systemctl_log), reboots=str(self.reboots)
            ),
        }
        for name, text in wrappers.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)

    # ------------------------------------------------------------------ paths

    def path(self, absolute: str) -> Path:
        """``absolute`` (a path on the device) in the fake root."""
        if not absolute.startswith("/"):
            raise HarnessError(f"not an absolute path: {absolute!r}")
        return self.root / absolute.lstrip("/")

    def _map_arg(self, arg: str) -> str:
        if arg.startswith("/"):
            return str(self.path(arg))
        opt, eq, value = arg.partition("=")
        if eq and opt.startswith("-") and value.startswith("/"):
            return f"{opt}={self.path(value)}"
        return arg

    def _argv(self, cmd: ExecCommand) -> list[str]:
        exe = self.executables.get(cmd.words[0])
        if exe is None:
            raise HarnessError(f"no executable mapped for {cmd.words[0]}")
        return [exe, *(self._map_arg(a) for a in cmd.words[1:])]

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:{SYSTEM_PATH}", "LANG": "C.UTF-8"}

    def unit_env(self, unit: UnitFile) -> dict[str, str]:
        """The environment of the unit's processes, read now (as at each start)."""
        env = self.env
        assignments = unit.environment()
        for path, optional in unit.environment_files():
            target = self.path(path)
            if optional and not target.exists():
                continue
            assignments += read_env_file(target)
        for key, value in assignments:
            env[key] = str(self.path(value)) if value.startswith("/") else value
        return env

    # ------------------------------------------------------------------ bootc

    def bootc(self, *args: str) -> str:
        """Run the fake bootc directly (not as a unit would)."""
        env = dict(os.environ, FAKE_BOOTC_STATE=str(self.bootc_state))
        done = subprocess.run(  # noqa: S603 - the test's own fake
            [sys.executable, str(FAKE_BOOTC), *args], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout

    def bootc_status(self) -> dict[str, object]:
        status: dict[str, object] = json.loads(self.bootc("status", "--json"))
        return status

    def booted_digest(self) -> str:
        booted = self.bootc_status()["status"]["booted"]  # type: ignore[index]
        return str(booted["image"]["imageDigest"])

    def bootc_calls(self) -> list[list[str]]:
        log = self.bootc_state / "calls.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def reboot_requests(self) -> list[str]:
        return self.reboots.read_text().splitlines()

    # ------------------------------------------------------------------ boot

    def power_off(self) -> None:
        """Cut the power: kill what still runs in the background (SIGKILL), wait for it."""
        if not self.boots:
            return
        record = self.boots[-1]
        record.powered_off = True
        for run in record.units.values():
            main = run.main
            if main is not None and main.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(main.pid, signal.SIGKILL)
            if run.thread is not None:
                run.thread.join(timeout=self.process_timeout)

    def wait(self, name: str, timeout: float) -> UnitRun:
        """Wait until the background unit ``name`` of the current boot is done; its run."""
        run = self.boots[-1].units[name]
        if run.thread is not None:
            run.thread.join(timeout=timeout)
            if run.thread.is_alive():
                raise HarnessError(f"{name} still runs after {timeout:g}s")
        if run.error is not None:
            raise run.error
        return run

    def boot(self, units: Iterable[UnitFile]) -> BootRecord:
        """Power on: boot the staged deployment, empty /run, start the units in order."""
        self.power_off()
        self.bootc("fake-reboot")
        shutil.rmtree(self.path("/run"), ignore_errors=True)
        self.path("/run").mkdir()
        record = BootRecord(len(self.boots) + 1)
        self.boots.append(record)
        ordered = boot_order(list(units))
        for unit in ordered:
            if "multi-user.target" not in unit.values("Install", "WantedBy"):
                raise HarnessError(f"{unit.name} is not WantedBy=multi-user.target: nothing boots it")
        for unit in ordered:
            record.units[unit.name] = UnitRun(unit.name)
        for unit in ordered:
            run = record.units[unit.name]
            if record.reboot_requested_by is not None:
                run.result, run.reason = "not started", "shutting down"
                continue
            if unit.type == "exec":
                self._start_in_background(unit, run, record)
            else:
                self._start(unit, run, record)
        return record

    def _start_in_background(self, unit: UnitFile, run: UnitRun, record: BootRecord) -> None:
        """Start a Type=exec unit; return once its start job is done (main process running)."""
        job_done = threading.Event()

        def supervise() -> None:
            try:
                self._start(unit, run, record, job_done)
            except BaseException as exc:  # noqa: BLE001 - handed to the test by wait()
                run.error = exc
            finally:
                job_done.set()

        run.thread = threading.Thread(target=supervise, name=unit.name, daemon=True)
        run.thread.start()
        job_done.wait()
        if run.error is not None:
            raise run.error

    def _start(
        self, unit: UnitFile, run: UnitRun, record: BootRecord, job_done: threading.Event | None = None
    ) -> None:
        interval, burst = unit.start_limit
        virtual = 0.0
        start_times: list[float] = []
        real_start = time.monotonic()
        while True:
            if record.powered_off:
                run.result, run.reason = "killed", "power cut"
                return
            failed = [c for c in unit.conditions() if not c.trigger and not c.holds(self.path)]
            triggers = [c for c in unit.conditions() if c.trigger]
            if not failed and triggers and not any(c.holds(self.path) for c in triggers):
                failed = triggers
            if failed:
                run.result, run.reason = "skipped", f"condition failed: {failed[0]}"
                return
            now = virtual + time.monotonic() - real_start
            start_times = [t for t in start_times if interval == 0 or now - t < interval]
            if interval > 0 and len(start_times) >= burst:
                run.result, run.reason = "start-limit-hit", f"{burst} starts within {interval:g}s"
                return
            start_times.append(now)
            run.starts += 1
            if run.starts > self.max_starts:
                raise HarnessError(f"{unit.name}: more than {self.max_starts} starts (test guard)")
            outcome = self._attempt(unit, run, record, job_done)
            if record.powered_off:
                run.result, run.reason = "killed", "power cut"
                return
            if outcome == "success" or outcome == "stopped":
                run.result = outcome
                return
            if unit.restart != "on-failure" or outcome == "clean-signal":
                run.result = "failed"
                return
            run.restart_delays.append(unit.restart_sec)
            virtual += unit.restart_sec
            time.sleep(unit.restart_sec * self.time_scale)

    def _attempt(
        self, unit: UnitFile, run: UnitRun, record: BootRecord, job_done: threading.Event | None
    ) -> str:
        """One start: success, stopped (reboot), failed or clean-signal."""
        timeout = unit.timeout_start
        deadline = None if timeout is None else time.monotonic() + timeout
        env = self.unit_env(unit)
        for key in EXEC_KEYS:
            for cmd in unit.commands(key):
                reboots = len(self.reboot_requests())
                if key == "ExecStart" and job_done is not None:
                    code, output = self._exec_main(cmd, env, run, job_done)
                    timed_out = False
                else:
                    code, output, timed_out = self._exec(cmd, deadline, env)
                run.processes.append(ProcessRun(key, cmd.words, tuple(self._argv(cmd)), code, output))
                new = self.reboot_requests()[reboots:]
                if new:
                    record.reboot_requested_by = new[0]
                    run.reason = f"stopped by the reboot ({new[0]})"
                    return "stopped"
                if timed_out:
                    run.reason = f"{key} timed out"
                    return "failed"
                if code != 0 and not cmd.ignore_failure:
                    run.reason = f"{key} exited with {code}"
                    if code < 0 and signal.Signals(-code) in CLEAN_SIGNALS:
                        return "clean-signal"
                    return "failed"
        return "success"

    def _spawn(
        self, cmd: ExecCommand, env: dict[str, str], output: IO[bytes] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start one Exec line's process (output captured, or written to ``output``, in a
        session of its own)."""
        argv = self._argv(cmd)
        executable = argv[0]
        if cmd.argv0 is not None:
            argv[0] = cmd.argv0
        return subprocess.Popen(  # noqa: S603 - the unit's own command, paths mapped
            argv,
            executable=executable,
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if output is None else output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _exec_main(
        self, cmd: ExecCommand, env: dict[str, str], run: UnitRun, job_done: threading.Event
    ) -> tuple[int, str]:
        """Type=exec: start the main process, finish the start job, wait for the exit. Its
        output goes to a file (:meth:`UnitRun.wait_output` reads it while it runs)."""
        self._logs += 1
        log = self.harness / f"main-{self._logs}.log"
        with log.open("wb") as output:
            proc = self._spawn(cmd, env, output)
            run.main, run.main_log = proc, log
            run.result = "running"
            job_done.set()
            proc.wait()
        run.main = None
        return proc.returncode, log.read_text(errors="replace")

    def _exec(self, cmd: ExecCommand, deadline: float | None, env: dict[str, str]) -> tuple[int, str, bool]:
        proc = self._spawn(cmd, env)
        self.current, self.current_argv = proc, cmd.words
        guard = time.monotonic() + self.process_timeout
        limit = guard if deadline is None else min(deadline, guard)
        try:
            out, _ = proc.communicate(timeout=max(0.0, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            if deadline is None or guard < deadline:
                raise HarnessError(
                    f"{' '.join(cmd.words)} still ran after {self.process_timeout:g}s (test guard): "
                    + out.decode(errors="replace")[-2000:]
                ) from None
            return proc.returncode, out.decode(errors="replace"), True
        finally:
            self.current, self.current_argv = None, ()
        return proc.returncode, out.decode(errors="replace"), False


__all__ = [
    "BootRecord",
    "Condition",
    "ExecCommand",
    "HarnessError",
    "Host",
    "ProcessRun",
    "UnitFile",
    "UnitRun",
    "boot_order",
    "read_env_file",
    "enabled_by_containerfile",
    "parse_timespan",
]
