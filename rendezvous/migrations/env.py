"""Alembic environment of the rendezvous database (see :mod:`fdo_server.migrate`)."""

from fdo_server.migrate import run_migrations

run_migrations("rendezvous")
