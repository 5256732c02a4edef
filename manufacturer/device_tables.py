"""The manufacturer table DI writes, as a Core table.

The same table as :class:`manufacturer.tables.Voucher`, the SQLModel class migrations
and the admin plane use; DI runs Core statements only, so a worker that serves only
devices never loads the ORM. ``tests/test_device_tables.py`` checks that both agree.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, String, Table

#: One device's ownership voucher (the zero-entry voucher DI stores).
VOUCHERS = Table(
    "mfg_voucher",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("guid", LargeBinary, nullable=False, unique=True, index=True),
    Column("serial", String(1024), nullable=False, index=True),
    Column("model", String(255), nullable=False, index=True),
    Column("key_kind", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("raw", LargeBinary, nullable=False),
    Column("num_entries", Integer, nullable=False),
    Column("owner_key_spki", LargeBinary, nullable=True),
    Column("handed_off_at", DateTime(timezone=True), nullable=True),
)
