"""Summarise py-spy raw (collapsed) stacks: ``python bench/spy_summary.py FILE...``.

Samples taken with ``--gil`` (``make bench`` does, via ``bench/run.py --spy``) are
those where a thread held the GIL: running Python code, so a proxy for CPU time.
Prints the share of samples in each part of the server stack.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

#: (label, substring of a frame); the first match from the leaf upwards wins.
PARTS = [
    ("voucher import/replacement (record_done)", "record_done"),
    ("session state load/save (SQL)", "SQLSessionStore"),
    ("voucher lookup (SQL)", "OwnerStore.voucher"),
    ("registration lookup/save (SQL)", "RegistrationLookup"),
    ("registration save (SQL)", "save_registration"),
    ("commit / unit of work", "unit_of_work"),
    ("machine restore (from_state)", "from_state"),
    ("machine state encode (to_state)", "to_state"),
    ("FDO protocol logic (crypto, CBOR)", "ServerMachine.handle"),
    ("FDO router glue", "fdo_router"),
    ("Starlette/FastAPI routing", "Starlette.__call__"),
    ("uvicorn HTTP protocol", "httptools_impl"),
    ("anyio thread hand-off", "anyio"),
    ("asyncio/uvloop event loop", "Runner.run"),
]


def summarise(path: Path) -> list[tuple[str, int]]:
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        label = "other"
        for frame in reversed(frames):
            hit = next((name for name, needle in PARTS if needle in frame), None)
            if hit is not None:
                label = hit
                break
        counts[label] += int(n)
    return counts.most_common()


def main(argv: list[str]) -> int:
    for name in argv:
        rows = summarise(Path(name))
        total = sum(n for _, n in rows) or 1
        print(f"{name}: {total} samples")
        for label, n in rows:
            print(f"  {n / total * 100:5.1f}%  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
