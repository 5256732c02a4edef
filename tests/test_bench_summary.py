"""``bench/summary.py``: a shown value never looks as if it were on the other side of its
target than the measured one."""

from __future__ import annotations

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from summary import MET, NOT_MET, Figure  # noqa: E402 - the bench folder is not a package


def test_a_value_just_below_its_target_is_shown_with_the_digits_that_tell() -> None:
    close = Figure("rendezvous CPU per TO0", 1.497, 1.5, "ms")
    assert close.verdict == MET and close.value_text() == "1.497 ms"
    exact = Figure("rendezvous CPU per TO0", 1.5, 1.5, "ms")
    assert exact.verdict == NOT_MET and exact.value_text() == "1.50 ms"
    above = Figure("rendezvous CPU per TO0", 1.503, 1.5, "ms")
    assert above.verdict == NOT_MET and above.value_text() == "1.50 ms"
    plain = Figure("rendezvous CPU per TO1", 0.7213, 0.8, "ms")
    assert plain.value_text() == "0.72 ms"
    assert Figure("RSS", 59.96, 60, "MB", digits=1).value_text() == "59.96 MB"
