"""``bench/http_floor.py`` prints the server CPU of both round-trip kinds it makes, for a
bare uvloop server and for uvicorn as the services run it (no figure is checked against a
value: it measures this machine)."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import REPO

sys.path.append(str(REPO / "bench"))  # the bench scripts import each other as top-level modules
from http_floor import main  # noqa: E402


@pytest.mark.parametrize("server", ["raw", "uvicorn"])
def test_http_floor_measures_both_kinds_of_round_trip(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--server", server, "--requests", "300", "--connections", "100"]) == 0
    out = capsys.readouterr().out
    for kind, count in (("kept-alive connection", 300), ("a connection per request", 100)):
        found = re.search(
            rf"^{server}, {kind}: ([0-9.]+) us server CPU per round trip \(([0-9.]+) us wall\), {count} ",
            out,
            re.M,
        )
        assert found is not None, out
        assert float(found[2]) > 0, found[0]
