"""Query and path parameters the admin APIs of the three services share.

Every list takes ``offset`` and ``limit`` with the same bounds: ``offset`` up to the
largest SQL BIGINT, ``limit`` from 1 to :data:`MAX_LIMIT`. A row number in a path
(a token id, a revision number) is a positive SQL INTEGER. Values beyond these are a
422 from FastAPI, never a database overflow (a 500).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_OFFSET = 2**63 - 1
MAX_LIMIT = 1000
#: The largest value of an SQL INTEGER column (ids, revision numbers, priorities).
MAX_INT = 2**31 - 1

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="How many items to skip.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many items at most.")]
RowNumber = Annotated[int, Path(ge=1, le=MAX_INT)]
