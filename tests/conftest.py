"""Shared fixtures: the interop vectors folder and keys generated once per session.

The vectors live in ``$FDO_VECTORS_DIR`` or ``<repo>/../shared/vectors`` and are never
copied into the project; tests that need them skip when the folder is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fdo.crypto import PrivateKeyT, generate_key

REPO = Path(__file__).resolve().parents[1]

NOW = datetime(2025, 1, 1, tzinfo=UTC)
"""A fixed "now" for certificates made in tests."""


def vectors_path() -> Path:
    """The vectors folder (it may not exist)."""
    env = os.environ.get("FDO_VECTORS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "vectors"


@pytest.fixture
def vectors_dir() -> Path:
    """The vectors folder; skips the test when it is absent."""
    path = vectors_path()
    if not path.is_dir():
        pytest.skip(f"interop vectors not available: {path}")
    return path


class KeyPool:
    """Private keys by kind, generated on first use and reused for the whole session.

    RSA-3072 generation takes about a second, so tests ask for ``pool.get("rsa3072", 2)``
    instead of generating their own.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[str, int], PrivateKeyT] = {}

    def get(self, kind: str, index: int = 0) -> PrivateKeyT:
        """Key number ``index`` of ``kind`` (the same object on every call)."""
        if (kind, index) not in self._keys:
            self._keys[kind, index] = generate_key(kind)
        return self._keys[kind, index]


@pytest.fixture(scope="session")
def key_pool() -> Iterator[KeyPool]:
    yield KeyPool()
