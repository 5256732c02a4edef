"""What ``fdo <service> serve`` does alike for the three services (:func:`start`).

Name the settings file for the uvicorn workers, refuse an incomplete TLS pair, check the
settings and the schema once, here, with one clear line, then serve
``<service>.app:app_from_env``. The server stack is imported only when a service starts,
so ``fdo`` stays light for devices.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fdo_cli.common import die
from fdo_cli.db import require_current

if TYPE_CHECKING:
    from fdo_server.config import ServiceSettings


def start(
    service: str,
    *,
    check: Callable[[], ServiceSettings],
    host: str | None,
    port: int | None,
    workers: int,
    admin_host: str | None = None,
    admin_port: int | None = None,
    tls_cert: Path | None,
    tls_key: Path | None,
    config: Path | None,
) -> None:
    """Serve ``service``. ``check`` loads its settings, exiting 2 with one line if they are
    unusable; their database must be at head. ``host``, ``port``, ``admin_host`` and
    ``admin_port`` left None come from the settings (``FDO_<SERVICE>_HOST``, ``..._PORT``,
    ``..._ADMIN_HOST``, ``..._ADMIN_PORT``); without an admin port both planes share the
    device listener."""
    from fdo_server.config import hand_over_settings, use_config_file
    from fdo_server.serve import ServeError, check_tls_files, serve

    use_config_file(f"FDO_{service.upper()}_CONFIG", config)  # the uvicorn workers read it too
    problem = check_tls_files(tls_cert, tls_key)
    if problem:
        raise die(problem, 2)
    settings = check()  # fail here, once, rather than in each worker
    require_current(service, settings.database_url)
    admin_port = admin_port if admin_port is not None else settings.admin_port
    handed = None
    if settings.admin_process and admin_port is not None:
        # The workers that serve only devices take these instead of reading the environment
        # again (fdo_server.handed); the admin port as serve gives it to them.
        handed = hand_over_settings(service, settings, admin_port)
    try:
        serve(
            f"{service}.app:app_from_env",
            host=host if host is not None else settings.host,
            port=port if port is not None else settings.port,
            admin_host=admin_host if admin_host is not None else settings.admin_host,
            admin_port=admin_port,
            admin_process=settings.admin_process,
            handed=handed,
            workers=workers,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
    except ServeError as exc:
        raise die(str(exc), 2) from None
