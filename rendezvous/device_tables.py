"""The rendezvous tables the device plane reads and writes (TO0 and TO1), as Core tables.

The same tables as :class:`rendezvous.tables.Registration` and
:class:`~rendezvous.tables.RegistrationPin`, the SQLModel classes migrations and the
admin plane use; the FDO path runs Core statements only, so a worker that serves only
devices never loads the ORM. ``tests/test_device_tables.py`` checks that both agree.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, Table

_METADATA = MetaData()

#: One owner's live TO0 registration per device GUID.
REGISTRATIONS = Table(
    "rv_registration",
    _METADATA,
    Column("guid", LargeBinary, primary_key=True),
    Column("to1d", LargeBinary, nullable=False),
    Column("device_key_spki", LargeBinary, nullable=False),
    Column("owner_key_spki", LargeBinary, nullable=False),
    Column("manufacturer_key_spki", LargeBinary, nullable=False),
    Column("wait_seconds", Integer, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

#: Per GUID, what its registrations must continue (rendezvous/pins.py).
PINS = Table(
    "rv_pin",
    _METADATA,
    Column("guid", LargeBinary, primary_key=True),
    Column("manufacturer_key_hash", LargeBinary, nullable=False),
    Column("owner_chain", LargeBinary, nullable=False),
    Column("pinned_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
