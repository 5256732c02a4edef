"""How the admin commands print: tables (rich), JSON or YAML, and pages of a list.

Every list and show command takes ``-o/--output table|json|yaml`` (``--json`` stays as
an alias of ``-o json``). Lists take ``--limit``, ``--offset`` and ``--all`` and say
``N of M`` under the table. rich and PyYAML are imported when something is printed, so
importing a CLI module stays light.

Tables have a header row and aligned columns, no borders (easy to read and to grep).
On a terminal they fit its width; otherwise (a pipe, a file) they are as wide as their
contents, so no cell is wrapped or cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from fdo_cli.common import die

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

#: The API's largest page (``fdo_server.params.MAX_LIMIT``).
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


OutputOpt = Annotated[
    Format | None,
    typer.Option("--output", "-o", case_sensitive=False, help="table (default), json or yaml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (same as -o json).")]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit", min=1, max=MAX_LIMIT, help=f"Items per page ({DEFAULT_LIMIT}; with --all {MAX_LIMIT})."
    ),
]
OffsetOpt = Annotated[int, typer.Option("--offset", min=0, help="Skip this many items.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Fetch every page (from --offset on).")]


def chosen(output: Format | None, as_json: bool) -> Format:
    """The format asked for: ``-o`` or ``--json`` (both only if they agree), else table."""
    if as_json and output not in (None, Format.JSON):
        raise die(f"--json and -o {output.value} disagree; give one of them", 2)
    if as_json:
        return Format.JSON
    return output or Format.TABLE


def dump(data: Any, fmt: Format) -> str:
    """``data`` as indented JSON or as YAML (block style, keys in their order)."""
    if fmt is Format.YAML:
        try:
            import yaml
        except ImportError:
            raise die("-o yaml needs PyYAML (pip install 'fdo-bootc[device]')", 2) from None
        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False))
    return json.dumps(data, indent=2) + "\n"


def emit_data(data: Any, fmt: Format) -> None:
    """Print ``data`` as JSON or YAML (``fmt`` is not table)."""
    typer.echo(dump(data, fmt), nl=False)


# ---------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    """One column: its header and how a row's cell is made (``None`` shows as ``-``)."""

    header: str
    cell: Callable[[dict[str, Any]], Any]
    justify: Literal["left", "right"] = "left"


def col(header: str, key: str, justify: Literal["left", "right"] = "left") -> Column:
    """A column showing ``row[key]``."""
    return Column(header, lambda row: row.get(key), justify)


def text(value: Any) -> str:
    """A cell's text: ``-`` for nothing, ``yes``/``no``, lists joined, maps as k=v."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return " ".join(f"{k}={text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(text(v) for v in value)
    if isinstance(value, str):
        if _TIMESTAMP.match(value):
            return local_time(value)
        return value.replace("\r", "\\r").replace("\n", "\\n")
    return str(value)


def local_time(value: str) -> str:
    """An ISO timestamp in local time, to the second: ``2026-05-01T14:03:07+02:00``."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone().isoformat(timespec="seconds")


def table(rows: Iterable[dict[str, Any]], columns: Sequence[Column], *, title: str | None = None) -> Table:
    """A table with a header row and one row per item."""
    from rich.table import Table
    from rich.text import Text

    out = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
        title=None if title is None else Text(title),
        title_justify="left",
        title_style="bold",
    )
    for column in columns:
        out.add_column(Text(column.header), justify=column.justify, overflow="fold")
    for row in rows:
        out.add_row(*(Text(text(column.cell(row))) for column in columns))  # never markup
    return out


def fields(pairs: Iterable[tuple[str, Any]]) -> Table:
    """A two-column ``name  value`` listing (the table form of one object)."""
    from rich.table import Table
    from rich.text import Text

    out = Table.grid(padding=(0, 2))
    out.add_column(style="bold", no_wrap=True)
    out.add_column(overflow="fold")
    for name, value in pairs:
        out.add_row(Text(name), Text(text(value)))
    return out


def render(*parts: RenderableType | str) -> None:
    """Print tables and lines on stdout, a blank line between parts.

    On a terminal rich fits them to its width (with colour unless NO_COLOR is set);
    otherwise they are as wide as their contents, without trailing spaces.
    """
    from rich.console import Console

    console = Console(highlight=False)
    if console.is_terminal:
        _print(console, parts)
        return
    widest = max((_width(console, part) for part in parts), default=80)
    plain = Console(highlight=False, width=max(widest, 20), no_color=True, color_system=None)
    with plain.capture() as captured:
        _print(plain, parts)
    lines = [line.rstrip() for line in captured.get().splitlines()]
    typer.echo("\n".join(lines))


def _print(console: Any, parts: Sequence[RenderableType | str]) -> None:
    for index, part in enumerate(parts):
        if index:
            console.print()
        if isinstance(part, str):
            console.print(part, markup=False, soft_wrap=True)
        else:
            console.print(part)


def _width(console: Any, part: Any) -> int:
    if isinstance(part, str):
        return 0
    measurement = console.measure(part, options=console.options.update_width(100_000))
    return int(measurement.maximum)


# ---------------------------------------------------------------------------- pages


@dataclass
class Page:
    """The items a list command shows, and where they sit in the whole list."""

    items: list[dict[str, Any]]
    total: int | None  # None: the API did not say
    offset: int
    body: dict[str, Any]  # what -o json|yaml prints

    def footer(self, noun: str) -> str:
        """``3 of 120 devices (offset 0; --all or --offset 3 for more)``."""
        shown = len(self.items)
        if self.total is None:
            return f"{shown} {noun}" + (f" (offset {self.offset})" if self.offset else "")
        line = f"{shown} of {self.total} {noun}"
        after = self.offset + shown
        if self.offset or after < self.total:
            line += f" (offset {self.offset}"
            line += f"; --all or --offset {after} for more)" if after < self.total else ")"
        return line


def fetch(
    get: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    limit: int | None,
    offset: int,
    every: bool,
) -> Page:
    """Items of a list API (``{"items", "total", "offset"}``) by ``limit``/``offset``;
    ``every``: all pages from ``offset`` on. ``get`` takes the query parameters.

    An API that answers every item at once (no ``total`` and no ``offset``) is paged here.
    """
    size = limit or (MAX_LIMIT if every else DEFAULT_LIMIT)
    body = get({"offset": offset, "limit": size})
    if "total" not in body and "offset" not in body:  # not paged by the server
        everything = list(body.get("items") or [])
        items = everything[offset:] if every else everything[offset : offset + size]
        return Page(items, len(everything), offset, {**body, "items": items})
    items = list(body.get("items") or [])
    total = body.get("total")
    while every:
        got = len(body.get("items") or [])
        at = offset + len(items)
        if got == 0 or (total is not None and at >= total) or (total is None and got < size):
            break
        body = get({"offset": at, "limit": size})
        items.extend(body.get("items") or [])
        total = body.get("total", total)
    out = {**body, "items": items, "offset": offset}
    if every:
        out.pop("limit", None)
    return Page(items, total if isinstance(total, int) else None, offset, out)


def show_page(page: Page, fmt: Format, columns: Sequence[Column], noun: str) -> None:
    """A page as a table with ``N of M`` under it, or its body as JSON/YAML."""
    if fmt is not Format.TABLE:
        return emit_data(page.body, fmt)
    if page.items:
        render(table(page.items, columns), page.footer(noun))
    else:
        render(page.footer(noun))


# ---------------------------------------------------------------------------- objects


def flat(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``name  value`` pairs of an object, nested objects as ``parent.child``."""
    out: list[tuple[str, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flat(value, name + "."))
        else:
            out.append((name, value))
    return out


def show_object(
    obj: dict[str, Any],
    fmt: Format,
    *,
    tables: dict[str, Sequence[Column] | None] | None = None,
    title: str | None = None,
) -> None:
    """One object: its fields as ``name  value`` lines, and each list named in ``tables``
    as a table under them (``None``: columns from the items' keys); or JSON/YAML."""
    if fmt is not Format.TABLE:
        return emit_data(obj, fmt)
    tables = tables or {}
    parts: list[RenderableType | str] = []
    if title:
        parts.append(title)
    parts.append(fields(flat({k: v for k, v in obj.items() if k not in tables})))
    for key, columns in tables.items():
        rows = obj.get(key) or []
        if not rows:
            continue
        if columns is None:
            names: dict[str, None] = {}
            for row in rows:
                names.update(dict.fromkeys(row))
            columns = [col(name.upper().replace("_", " "), name) for name in names]
        parts.append(table(rows, columns, title=key.replace("_", " ")))
    render(*parts)
