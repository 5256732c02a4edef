"""Start a service under uvicorn (``fdo <service> serve``)."""

from __future__ import annotations

import uvicorn


def serve(factory: str, *, host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    """Run ``factory`` (``module:function`` returning a FastAPI app) with uvicorn.

    With several workers uvicorn imports the factory in each worker process; settings
    come from the environment (``FDO_<SERVICE>_...``), which the workers inherit.
    """
    uvicorn.run(factory, factory=True, host=host, port=port, workers=workers, log_level=log_level)
