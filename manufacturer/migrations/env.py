"""Alembic environment of the manufacturer database (see :mod:`fdo_server.migrate`)."""

from fdo_server.migrate import run_migrations

run_migrations("manufacturer")
