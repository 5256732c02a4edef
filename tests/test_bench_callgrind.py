"""``bench/callgrind.py``: the wrapper callgrind counts inside, and the run under it."""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import callgrind  # noqa: E402 - the bench folder is not a package


def test_counted_calls_through_functools_reduce(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real = functools.reduce

    def spy(*args: Any) -> Any:
        seen.append(args)
        return real(*args)

    monkeypatch.setattr(functools, "reduce", spy)

    def add(a: int, b: int, *, c: int = 0) -> int:
        return a + b + c

    assert callgrind.counted(add)(1, 2, c=3) == 6
    assert len(seen) == 1  # one reduce per call: the C function callgrind counts inside
    assert callgrind.COUNTED == "functools_reduce"


def test_counted_passes_exceptions_on() -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        callgrind.counted(fail)()


def test_active_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(callgrind.UNDER_CALLGRIND, raising=False)
    assert not callgrind.active()
    monkeypatch.setenv(callgrind.UNDER_CALLGRIND, "1")
    assert callgrind.active()


def test_rerun_without_valgrind_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert callgrind.rerun("bench/profile_onboarding.py", [], 1, "onboarding") == 2
    assert capsys.readouterr().err == "--instructions needs valgrind (apt-get install valgrind)\n"


def test_rerun_with_an_unwritable_profile_file_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: "/usr/bin/valgrind")
    out = tmp_path / "missing" / "cg.out"
    monkeypatch.setenv(callgrind.OUT_FILE, str(out))
    assert callgrind.rerun("bench/profile_onboarding.py", [], 1, "onboarding") == 2
    assert capsys.readouterr().err == f"{callgrind.OUT_FILE}={out}: cannot write a file in {out.parent}\n"
