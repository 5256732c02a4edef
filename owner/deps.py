"""FastAPI dependencies of the owner's admin API: the engine, a read session, roles."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fdo_server.auth import AdminToken, Role, require
from fdo_server.sql import Database


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def database_of(request: Request) -> Database:
    """The app's database on the driver (``app.state.database``: what the rollout runner uses)."""
    database: Database = request.app.state.database
    return database


def now_of(request: Request) -> datetime:
    """The app's clock (``app.state.clock``, which tests replace), or the wall clock."""
    clock = getattr(request.app.state, "clock", None)
    now: datetime = clock() if clock is not None else datetime.now(UTC)
    return now


def wake_rollouts(request: Request) -> None:
    """Wake this process's rollout runner (``app.state.rollouts``): something a running
    rollout decides on changed here (a start, resume, label, published revision)."""
    runner = getattr(request.app.state, "rollouts", None)
    if runner is not None:
        runner.wake()


def _db(request: Request) -> Iterator[Session]:
    # A plain session: FastAPI may enter and leave a generator dependency in different
    # contexts, which the context variable of unit_of_work does not allow. Changes are
    # committed explicitly by the routes that make them.
    with Session(engine_of(request)) as db:
        yield db


SessionDep = Annotated[Session, Depends(_db)]
Viewer = Annotated[AdminToken, Depends(require(engine_of, Role.VIEWER))]
Operator = Annotated[AdminToken, Depends(require(engine_of, Role.OPERATOR))]
Admin = Annotated[AdminToken, Depends(require(engine_of, Role.ADMIN))]
