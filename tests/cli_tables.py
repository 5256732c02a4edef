"""Reading what the admin commands print as tables (``fdo_cli/output.py``)."""

from __future__ import annotations

import re

_GAP = re.compile(r"\s{2,}")


def parse_table(text: str) -> tuple[list[dict[str, str]], str]:
    """The rows of the first table in ``text`` (header names to cells) and the last line.

    Columns are at least two spaces apart and no cell holds two spaces in a row or is
    empty (nothing prints as ``-``), so splitting at runs of spaces finds the cells.
    """
    lines = text.splitlines()
    footer = lines[-1] if lines else ""
    if len(lines) < 2 or not lines[1].strip():
        return [], footer
    header = _GAP.split(lines[0].strip())
    rows = []
    for line in lines[1:]:
        if not line.strip():
            break
        cells = _GAP.split(line.strip())
        assert len(cells) == len(header), (header, line)
        rows.append(dict(zip(header, cells, strict=True)))
    return rows, footer
