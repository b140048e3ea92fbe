"""`crossrank serve DIR [--port 8080] [...]`: run the reranking service (needs crossrank[serve])."""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import threading
from typing import Any

from ..errors import InvalidInputError, MissingDependencyError

__all__ = ["register", "config_from_args"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model folder over HTTP (Cohere/Jina/TEI-compatible rerank API)",
        description="Serve a crossrank model folder: POST /v1/rerank, /v2/rerank (Cohere/Jina/infinity shape), "
        "/rerank (TEI shape); GET /health, /ready, /info, /metrics, /docs. Requests that arrive together share "
        "inference runs; a request may carry a deadline (deadline_ms or X-Deadline-Ms).",
    )
    p.add_argument("folder", metavar="DIR", help="a model folder written by `crossrank export`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--variant", default="auto", help="model variant (default auto: int8 on CPU, fp16 on CUDA)")
    p.add_argument("--provider", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads per worker (default: cores / workers)")
    p.add_argument("--max-length", type=int, metavar="N", help="tokens per pair (default and maximum: the folder's)")
    p.add_argument("--batch-tokens", type=int, metavar="N", help="padded tokens per inference run (default: the runtime's)")
    p.add_argument("--max-batch-size", type=int, metavar="N", help="pairs per inference run (default: the runtime's)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes, each with its own model (default 1)")
    p.add_argument("--served-model-name", metavar="NAME", help="the name clients send as `model` (default: the folder's name)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' (default: $CROSSRANK_API_KEY, else none)")
    p.add_argument("--max-documents", type=int, default=1000, metavar="N", help="documents per request (default 1000)")
    p.add_argument("--max-body-bytes", type=int, default=10 * 1024 * 1024, metavar="N", help="request body bytes (default 10 MiB)")
    p.add_argument("--max-text-chars", type=int, default=100_000, metavar="N", help="characters per query or document (default 100000)")
    p.add_argument("--max-queue-pairs", type=int, metavar="N", help="queued pairs before 429 (default 2048)")
    p.add_argument("--request-timeout", type=float, default=30.0, metavar="S", help="seconds before 504 for requests without a deadline")
    p.add_argument("--batching", choices=("on", "off"), default="on", type=str.lower,
                   help="off: one request per inference run, in arrival order (a baseline; default on)")
    p.add_argument("--spinning", choices=("on", "off"), default="off", type=str.lower,
                   help="let idle onnxruntime threads spin for work (default off: the event loop and tokenization share the cores)")
    p.add_argument("--grace", type=float, default=30.0, metavar="S", help="on SIGTERM, seconds for queued requests to finish (default 30)")
    p.add_argument("--no-warmup", action="store_true", help="report ready without the warm-up runs")
    p.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> Any:
    from .config import API_KEY_ENV, ServeConfig  # noqa: PLC0415

    workers = args.workers
    threads = args.threads
    if threads is None and isinstance(workers, int) and workers > 1:
        # Split the cores between the workers: N sessions each with every core would thrash.
        threads = max(1, (os.cpu_count() or 1) // workers)
    extra: dict[str, Any] = {}
    if args.max_queue_pairs is not None:
        extra["max_queue_pairs"] = args.max_queue_pairs
    return ServeConfig(
        model_dir=args.folder,
        variant=args.variant,
        provider=args.provider,
        threads=threads,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        max_batch_size=args.max_batch_size,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        workers=workers,
        api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV),
        max_documents=args.max_documents,
        max_body_bytes=args.max_body_bytes,
        max_text_chars=args.max_text_chars,
        request_timeout_s=args.request_timeout,
        batching=args.batching == "on",
        grace_s=args.grace,
        warmup=not args.no_warmup,
        spinning=args.spinning == "on",
        **extra,
    )


def _run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401,PLC0415 - checked here so a missing extra is one clear line
        import prometheus_client  # noqa: F401,PLC0415
        import uvicorn  # noqa: PLC0415
    except ImportError as err:
        raise MissingDependencyError(f'crossrank serve needs the serve extra: pip install "crossrank[serve]" ({err})') from err
    from ..manifest import load_manifest  # noqa: PLC0415
    from .config import CONFIG_ENV  # noqa: PLC0415

    config = config_from_args(args)
    load_manifest(config.model_dir)  # a bad folder fails here, in one line, before uvicorn starts
    common = dict(
        host=config.host,
        port=config.port,
        access_log=False,  # crossrank.serve.access writes one JSON line per request instead
        timeout_graceful_shutdown=int(math.ceil(config.grace_s)),
        log_level="warning",
    )
    if config.workers > 1:
        # uvicorn's multi-process mode needs an import string; each worker reads the settings
        # from the environment it inherits.
        os.environ[CONFIG_ENV] = config.to_env()
        uvicorn.run("crossrank.serve.app:create_app_from_env", factory=True, workers=config.workers, **common)
        return 0
    from .app import create_app  # noqa: PLC0415

    _check_port_free(config.host, config.port)
    # Load here, not in the app's lifespan: a bad option or folder is one line and exit 1, and
    # the port opens only for a model that loaded.
    rr = config.load_reranker()
    app = create_app(config, reranker=rr)
    server = _make_draining_server()(uvicorn.Config(app, **{**common, "timeout_graceful_shutdown": int(math.ceil(config.grace_s)) + 5}))
    server.crossrank_state = app.state.crossrank
    # uvicorn drains on SIGTERM (stop accepting, finish in-flight requests, then our lifespan
    # drains the queue) and afterwards re-raises the signal under the handler that was there
    # before it started. A no-op handler there makes a drained SIGTERM exit 0, as orchestrators expect.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise InvalidInputError(f"the service did not start on {config.host}:{config.port} (see the log above)")
    return 0


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise InvalidInputError(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port/--host") from err


def _make_draining_server() -> Any:
    import uvicorn  # noqa: PLC0415

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, plus: at shutdown /ready turns 503 at once, and requests still queued
        after --grace are answered 503 (JSON) instead of being cut off by uvicorn's own timeout."""

        crossrank_state: Any = None

        async def shutdown(self, sockets: Any = None) -> None:
            state = self.crossrank_state
            if state is not None:
                state.ready = False
                sched = state.scheduler
                if sched is not None:
                    loop = asyncio.get_running_loop()
                    loop.call_later(state.config.grace_s, lambda: threading.Thread(
                        target=sched.close, kwargs={"drain": False}, daemon=True).start())
            await super().shutdown(sockets)

    return DrainingServer


