"""The suite's own scheduling (tests.scheduling): what each long pole's units are."""

from __future__ import annotations

from tests.conftest import REPO
from tests.scheduling import LONG_POLES, rank, scope_of


def test_long_poles_exist_and_split_by_database() -> None:
    for path in LONG_POLES:
        assert (REPO / path).is_file(), path
    crash = "tests/e2e/test_owner_crash.py::test_a_kill_after_done2_loses_no_voucher"
    assert scope_of(f"{crash}[sqlite]") == "tests/e2e/test_owner_crash.py::sqlite"
    assert scope_of(f"{crash}[postgresql]") == "tests/e2e/test_owner_crash.py::postgresql"
    rollout = "tests/e2e/test_rollouts.py::test_rollout_pauses_on_failures_resumes_after_hold_and_rolls_back"
    assert scope_of(f"{rollout}[postgresql-2-owners]") == "tests/e2e/test_rollouts.py::postgresql"
    assert scope_of(f"{rollout}[sqlite-1-owner]") == "tests/e2e/test_rollouts.py::sqlite"
    assert scope_of("tests/test_demo.py::test_make_demo_tells_the_whole_story") == "tests/test_demo.py"


def test_long_poles_rank_first_in_their_order() -> None:
    scopes = [
        "tests/test_demo.py",
        "tests/e2e/test_rollouts.py::sqlite",
        "tests/e2e/test_owner_crash.py::postgresql",
    ]
    assert sorted(scopes, key=rank) == [scopes[2], scopes[1], scopes[0]]
