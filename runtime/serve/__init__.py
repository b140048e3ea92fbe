"""crossrank.serve: the reranking service (``crossrank serve``), folder ``runtime/serve/``.

A thin HTTP shell (FastAPI + uvicorn, ``pip install "crossrank[serve]"``) over
:class:`crossrank.scheduler.Scheduler`, which does the cross-request batching, deadlines and
backpressure. Import :func:`create_app` to mount the service in your own ASGI stack, or use the
scheduler directly in your own asyncio app.
"""
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):  # the app pulls in FastAPI: only when asked for
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
