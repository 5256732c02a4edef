"""``bench/import_floor.py`` measures each figure it prints: a row per library group, the
service modules, and two floors per service against the target. No figure is checked
against a value; only what holds by construction: a group adds modules and memory, and
the lean floor (a subset of the stack's libraries) is below the stack as today."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import REPO

sys.path.append(str(REPO / "bench"))  # the bench scripts import each other as top-level modules
from import_floor import CORE, LIBRARIES, PSYCOPG, main  # noqa: E402

#: RSS can fall a little as an import frees memory (a garbage collection returns an arena).
SLACK_MB = 0.5


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_import_floor_prints_groups_and_floors(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", backend, "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^python interpreter \(bare\) +\d+ +[0-9.]+$", out, re.M), out
    groups = (*LIBRARIES, PSYCOPG) if backend == "postgresql" else LIBRARIES
    for group in groups:
        row = re.search(rf"^{re.escape(group.label)} +\+(\d+) +([+-][0-9.]+) +[0-9.]+", out, re.M)
        assert row is not None, f"{group.label}\n{out}"
        assert int(row[1]) > 0 and float(row[2]) > -SLACK_MB, row[0]
    if backend == "sqlite":
        assert not re.search(r"^psycopg ", out, re.M)
    assert "ssl loaded: yes" in out
    for service in CORE:
        assert re.search(rf"^  {service}\.app +\d+ +[0-9.]+$", out, re.M), service
        floors = {}
        for kind in ("stack as today", "device plane without"):
            row = re.search(rf"^  {service} +{kind}.* ([0-9.]+) MB  < 60: (MET|NOT MET)$", out, re.M)
            assert row is not None, f"{service} {kind}\n{out}"
            floors[kind] = float(row[1])
        assert floors["device plane without"] < floors["stack as today"]
    lean = re.search(r"^  lean = (.+) \+ the service's FDO core", out, re.M)
    assert lean is not None
    driver = "psycopg" if backend == "postgresql" else "sqlite3"
    assert driver in lean[1].split(" + ") and {"psycopg", "sqlite3"} - {driver} - set(lean[1].split(" + "))
