"""``bench/http_floor.py`` prints the server CPU of both round-trip kinds it makes (no
figure is checked against a value: it measures this machine)."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import REPO

sys.path.append(str(REPO / "bench"))  # the bench scripts import each other as top-level modules
from http_floor import main  # noqa: E402


def test_http_floor_measures_both_kinds_of_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "300", "--connections", "100"]) == 0
    out = capsys.readouterr().out
    for kind, count in (("kept-alive connection", 300), ("a connection per request", 100)):
        line = re.search(
            rf"^{kind}: ([0-9.]+) us server CPU per round trip \(([0-9.]+) us wall\), {count} ", out, re.M
        )
        assert line is not None, out
        assert float(line[2]) > 0, line[0]
