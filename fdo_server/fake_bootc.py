"""A stand-in for ``bootc`` that the demo (``make demo``) and the tests run.

State in ``$FAKE_BOOTC_STATE/state.json``.

Commands: ``status --json`` (org.containers.bootc/v1 BootcHost, like bootc 1.x),
``switch [--transport T] [--apply] [--retain] [--quiet] IMAGE`` (IMAGE must be pinned
by digest; the digest is taken from it), ``rollback``, and ``fake-reboot`` (boots the
staged deployment). With no state file the host boots ``localhost/base`` with a zero
digest; a state file with ``"bootc": false`` is a host that is not a bootc host, and
one with ``"refuse": [digests]`` fails ``switch`` to those digests as a registry would.
Every invocation is appended to ``calls.log`` in the same folder.

Run as ``python -m fdo_server.fake_bootc`` (the demo writes a one-line wrapper) or by
path (``tests/fakes/bootc``). Standard library only, so it runs by path too.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

DIGEST_REF = re.compile(r"^([^@\s]+)@(sha256:[0-9a-f]{64})$")
TRANSPORTS = ("registry", "oci", "oci-archive", "containers-storage", "dir")
BASE = {"image": "localhost/base", "transport": "registry", "digest": "sha256:" + "0" * 64}


def fail(msg: str) -> NoReturn:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def state_dir() -> Path:
    path = os.environ.get("FAKE_BOOTC_STATE")
    if not path:
        fail("FAKE_BOOTC_STATE is not set")
    return Path(str(path))


def load() -> dict[str, Any]:
    path = state_dir() / "state.json"
    if not path.exists():
        return {"bootc": True, "booted": dict(BASE), "staged": None, "rollback": None}
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def save(state: dict[str, Any]) -> None:
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, folder / "state.json")


def entry(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "image": {
            "image": {"image": d["image"], "transport": d["transport"]},
            "version": None,
            "timestamp": None,
            "imageDigest": d["digest"],
            "architecture": "amd64",
        },
        "cachedUpdate": None,
        "incompatible": False,
        "pinned": False,
        "store": "ostreeContainer",
        "ostree": {"checksum": d["digest"][7:71], "deploySerial": 0, "stateroot": "default"},
    }


def status(state: dict[str, Any]) -> dict[str, Any]:
    if not state.get("bootc", True):
        return {
            "apiVersion": "org.containers.bootc/v1",
            "kind": "BootcHost",
            "metadata": {"name": "host"},
            "spec": {"image": None, "bootOrder": "default"},
            "status": {
                "staged": None,
                "booted": None,
                "rollback": None,
                "rollbackQueued": False,
                "type": None,
            },
        }
    spec_src = state["staged"] or state["booted"]
    return {
        "apiVersion": "org.containers.bootc/v1",
        "kind": "BootcHost",
        "metadata": {"name": "host"},
        "spec": {
            "image": {"image": spec_src["image"], "transport": spec_src["transport"]},
            "bootOrder": "default",
        },
        "status": {
            "staged": entry(state["staged"]),
            "booted": entry(state["booted"]),
            "rollback": entry(state["rollback"]),
            "rollbackQueued": False,
            "type": "bootcHost",
        },
    }


def boot_staged(state: dict[str, Any]) -> None:
    if state["staged"] is not None:
        state["rollback"] = state["booted"]
        state["booted"] = state["staged"]
        state["staged"] = None


def main(argv: list[str]) -> None:
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "calls.log").open("a") as log:
        log.write(json.dumps(argv) + "\n")
    if not argv:
        fail("no command")
    state = load()
    cmd, args = argv[0], argv[1:]
    if cmd == "status":
        if args not in (["--json"], ["--format=json"], ["--format", "json"]):
            fail("only status --json is supported")
        print(json.dumps(status(state), indent=2))
        return
    if not state.get("bootc", True):
        fail("this system is not a bootc host")
    if cmd == "switch":
        transport, apply, image = "registry", False, None
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--transport" and i + 1 < len(args):
                transport = args[i + 1]
                i += 2
                continue
            if a.startswith("--transport="):
                transport = a.split("=", 1)[1]
            elif a == "--apply":
                apply = True
            elif a in ("--retain", "--quiet", "--enforce-container-sigpolicy"):
                pass
            elif a.startswith("-") or image is not None:
                fail(f"unexpected argument {a!r}")
            else:
                image = a
            i += 1
        if image is None:
            fail("switch needs an image")
        if transport not in TRANSPORTS:
            fail(f"unknown transport {transport!r}")
        m = DIGEST_REF.match(str(image))
        if m is None:
            fail(f"fake bootc wants an image pinned by digest, got {image!r}")
        if m.group(2) in state.get("refuse", []):
            fail(f"pulling {image}: manifest unknown")
        state["staged"] = {"image": image, "transport": transport, "digest": m.group(2)}
        if apply:
            boot_staged(state)
        save(state)
        print(f"Queued for next boot: {image}")
        return
    if cmd == "rollback":
        if args:
            fail("rollback takes no arguments")
        if state["rollback"] is None:
            fail("no rollback deployment")
        state["booted"], state["rollback"] = state["rollback"], state["booted"]
        state["staged"] = None
        save(state)
        return
    if cmd == "fake-reboot":
        boot_staged(state)
        save(state)
        return
    fail(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
