"""``make demo`` runs ``python -m fdo_server.demo``: the whole story over real HTTP on
SQLite, with the real ``fdo`` commands, ends with the device booted on the revision the
rollout delivered."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_make_demo_tells_the_whole_story() -> None:
    done = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "fdo_server.demo"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for command in (
        "$ fdo device di ",
        "$ fdo owner groups create kiosks",
        "$ fdo owner revisions publish kiosks --image registry.example/kiosk@sha256:1111",
        "$ fdo device onboard",
        "$ fdo owner rollouts start kiosks --revision 2",
        "$ fdo device check-in",
        "$ fdo owner rollouts show 1",
    ):
        assert command in out, command
    assert "written by the bootc module: /etc/kiosk/url = 'https://example.com/menu'" in out
    assert "revision 2 received, applied" in out
    assert re.search(r"^ *state +completed$", out, re.M)
    assert "booted now                   sha256:" + "2" * 64 in out
    assert "owner status                 applied, applied revision 2" in out
    assert "Traceback" not in done.stderr
