"""The Core tables the FDO path uses are the tables migrations make: each column of
``fdo_server.sessions.FDO_SESSION``, ``rendezvous.device_tables`` and
``manufacturer.device_tables`` has the name, type (as each database spells it), null
rule, key and default of the same column of the SQLModel class, and no column is
missing on either side."""

from __future__ import annotations

import pytest
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from fdo_server.session_model import FdoSession
from fdo_server.sessions import FDO_SESSION
from manufacturer.device_tables import VOUCHERS
from manufacturer.tables import Voucher
from rendezvous.device_tables import PINS, REGISTRATIONS
from rendezvous.tables import Registration, RegistrationPin

PAIRS: list[tuple[Table, type[SQLModel]]] = [
    (FDO_SESSION, FdoSession),
    (REGISTRATIONS, Registration),
    (PINS, RegistrationPin),
    (VOUCHERS, Voucher),
]


SQLITE = sqlite.dialect()
POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]


def shape(table: Table) -> dict[str, tuple[object, ...]]:
    return {
        column.name: (
            str(column.type.compile(dialect=SQLITE)),
            str(column.type.compile(dialect=POSTGRESQL)),
            column.nullable,
            column.primary_key,
            bool(column.unique),
            bool(column.index),
        )
        for column in table.columns
    }


@pytest.mark.parametrize(("core", "model"), PAIRS, ids=[core.name for core, _ in PAIRS])
def test_a_core_table_is_its_sqlmodel_table(core: Table, model: type[SQLModel]) -> None:
    orm: Table = model.__table__  # type: ignore[attr-defined]
    assert core.name == orm.name
    assert shape(core) == shape(orm)
