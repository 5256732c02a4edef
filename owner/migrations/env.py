"""Alembic environment of the owner database (see :mod:`fdo_server.migrate`)."""

from fdo_server.migrate import run_migrations

run_migrations("owner")
