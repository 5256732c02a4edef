"""Where the interop vectors live: ``$FDO_VECTORS_DIR`` or ``<repo>/../shared/vectors``.

The vectors are never copied into the project; tests that need them skip when the
folder is absent (as on a user's machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def vectors_dir() -> Path:
    """The vectors folder (it may not exist)."""
    env = os.environ.get("FDO_VECTORS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "vectors"


def vector_folder(name: str) -> Path:
    """``<vectors>/<name>``, or skip the calling test when it is absent."""
    path = vectors_dir() / name
    if not path.is_dir():
        pytest.skip(f"interop vectors not available: {path}")
    return path
