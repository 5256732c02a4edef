"""Garbage-collector settings for a long-running service process."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Keep the objects a worker made while starting out of later garbage collections.

    Start-up (imports, the app, its keys and settings) leaves some 150,000 objects that
    live as long as the process. CPython's full collections walk every tracked object,
    so without this each one costs tens of milliseconds, about 1.6 ms of CPU per
    onboarding on the owner (``docs/benchmarks.md``). :func:`gc.freeze` moves them to a
    permanent generation that collections skip; nothing is lost, since they would live
    until exit anyway. Called by the services' uvicorn factories once the app is built.
    """
    gc.collect()
    gc.freeze()
