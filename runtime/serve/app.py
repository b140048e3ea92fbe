"""The HTTP service: a thin FastAPI shell over one :class:`~crossrank.scheduler.Scheduler`.

Routes:

* ``POST /v1/rerank``, ``POST /v2/rerank`` - Cohere / Jina / infinity request and response shape.
* ``POST /rerank`` - text-embeddings-inference's shape (a list of ``{"index", "score", "text"?}``).
* ``GET /health`` (process up), ``GET /ready`` (model loaded and warmed; 503 before and while
  draining), ``GET /info`` (the model and the service's limits), ``GET /metrics`` (Prometheus),
  ``GET /docs`` and ``/openapi.json`` (FastAPI's OpenAPI).

Every error is JSON ``{"error", "error_type", "field"?}`` with its status: 400 unparseable body,
401 missing/wrong API key, 413 body too large, 422 a field is wrong (named), 429 queue full (with
``Retry-After``), 503 not ready / shutting down, 504 not done within the request timeout, 500 an
inference failure (logged; no stack trace in the body).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import re
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import (
    CrossrankError,
    InferenceError,
    InputTypeError,
    InvalidInputError,
    QueueFullError,
    RequestTimeoutError,
    SchedulerClosedError,
)
from ..reranker import Reranker
from ..textio import scrub
from ..scheduler import PairTooLongError, RerankOutcome, Scheduler
from .config import ServeConfig
from .metrics import CONTENT_TYPE, ServiceMetrics
from .schemas import DocumentObject, ErrorBody, RerankRequest, RerankResponse, TEIRank, TEIRerankRequest

__all__ = ["create_app", "create_app_from_env", "DEADLINE_HEADER"]

log = logging.getLogger("crossrank.serve")
access_log = logging.getLogger("crossrank.serve.access")

DEADLINE_HEADER = "x-deadline-ms"
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_ROUTES = ("/v1/rerank", "/v2/rerank", "/rerank", "/health", "/ready", "/info", "/metrics")
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 413, 422, 429, 503, 504)}


class APIError(Exception):
    """An error answer: HTTP ``status`` with the JSON error body."""

    def __init__(self, status: int, message: str, *, error_type: str, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.field, self.headers = status, message, error_type, field, headers


def _error_response(status: int, message: str, error_type: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "error_type": error_type}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


class _State:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.reranker: Reranker | None = None
        self.scheduler: Scheduler | None = None
        self.ready = False


def create_app(config: ServeConfig, *, reranker: Reranker | None = None) -> FastAPI:
    """The service's ASGI app. The model is loaded (unless ``reranker`` is given) and the
    scheduler started in the app's lifespan, before the port opens; the warm-up runs with the port
    open, ``/ready`` answering 503 until it is done.

    Raises (at startup, from the lifespan): the errors of :meth:`crossrank.Reranker.load`.
    """
    if not isinstance(config, ServeConfig):
        raise InvalidInputError(f"config must be a ServeConfig; got {type(config).__name__}")
    state = _State(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rr = reranker
        if rr is None:
            rr = await run_in_threadpool(config.load_reranker)
        sched = Scheduler(
            rr,
            max_queue_pairs=config.max_queue_pairs,
            request_timeout_s=config.request_timeout_s,
            batching=config.batching,
            on_batch=state.metrics.on_batch,
        )
        state.reranker, state.scheduler = rr, sched
        state.metrics.bind(sched)

        async def warm() -> None:
            # The port is open meanwhile: /health answers, /ready says 503 until this is done.
            if config.warmup:
                await run_in_threadpool(sched.warmup)
            state.ready = True
            log.info(
                "crossrank serve: %s (variant %s on %s), batching %s, ready",
                config.model_name,
                rr.variant,
                ", ".join(rr.providers),
                "on" if config.batching else "off",
            )

        warming = asyncio.create_task(warm())
        try:
            yield
        finally:
            # uvicorn has stopped accepting and let in-flight requests finish (its graceful
            # shutdown; `crossrank serve` fails what is still queued after --grace with 503);
            # whatever is left gets the grace period here.
            state.ready = False
            warming.cancel()
            await run_in_threadpool(lambda: sched.close(drain=True, timeout=config.grace_s))

    app = FastAPI(
        title="crossrank",
        version=__version__,
        description="Cross-encoder reranking service (Cohere/Jina/infinity and TEI request shapes).",
        lifespan=lifespan,
    )
    app.state.crossrank = state

    # -- errors: one JSON shape everywhere -------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return _error_response(err.status, err.message, err.error_type, err.field, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = _relevant(list(err.errors()))
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
        if first.get("type") == "json_invalid":
            return _error_response(400, f"the body is not valid JSON: {first.get('msg')} (at {first.get('loc')[-1]})", "invalid_json")
        field = _field_name(first.get("loc", ()), unknown=first.get("type") == "extra_forbidden")
        if first.get("type") == "missing" and field is None:
            return _error_response(400, "the body must be a JSON object", "invalid_json")
        seen: dict[str, str] = {}
        for e in errors:  # one message per field: a union reports each member it tried
            seen.setdefault(_field_name(e.get("loc", ()), unknown=e.get("type") == "extra_forbidden") or "body", _message(e))
        msg = "; ".join(f"{k}: {v}" for k, v in list(seen.items())[:5])
        return _error_response(422, msg, "validation", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error_response(err.status_code, str(err.detail), "http", headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(500, f"internal error ({type(err).__name__}); see the server log", "internal")

    # -- middleware: body limit, access log, request metrics ---------------------------------
    app.add_middleware(_AccessAndLimits, state=state)

    def authorize(request: Request) -> None:
        key = config.api_key
        if key is None:
            return
        # The raw header bytes: a UTF-8 key must match what a UTF-8 client sends (Starlette decodes
        # headers as Latin-1).
        header = next((v for k, v in request.scope.get("headers", ()) if k == b"authorization"), b"")
        scheme, _, token = header.strip().partition(b" ")
        # Constant-time comparison of bytes: no timing side channel on the key.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), key.encode("utf-8")):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", error_type="unauthorized",
                           headers={"WWW-Authenticate": "Bearer"})

    def scheduler() -> Scheduler:
        if not state.ready or state.scheduler is None:
            raise APIError(503, "the model is not ready (loading, warming up or shutting down); retry shortly",
                           error_type="not_ready", headers={"Retry-After": "1"})
        return state.scheduler

    def check_texts(query: str, texts: Sequence[str], name: str) -> None:
        if len(texts) > config.max_documents:
            raise APIError(422, f"{len(texts)} {name} in one request; at most {config.max_documents} (max_documents)",
                           error_type="validation", field=name)
        limit = config.max_text_chars
        if len(query) > limit:
            raise APIError(422, f"query has {len(query)} characters; at most {limit} (max_text_chars)", error_type="validation", field="query")
        for i, t in enumerate(texts):
            if len(t) > limit:
                raise APIError(422, f"{name}[{i}] has {len(t)} characters; at most {limit} (max_text_chars)",
                               error_type="validation", field=f"{name}[{i}]")

    def deadline_of(request: Request, body_value: float | None) -> float | None:
        raw = request.headers.get(DEADLINE_HEADER)
        header_value = None
        if raw is not None:
            header_value = float(raw) if _DECIMAL.fullmatch(raw.strip()) else math.nan
            if not (math.isfinite(header_value) and header_value > 0):
                shown = raw if len(raw) <= 40 else raw[:40] + "..."
                raise APIError(422, f"header X-Deadline-Ms must be a number of milliseconds > 0; got {shown!r}",
                               error_type="validation", field="X-Deadline-Ms")
        given = [v for v in (body_value, header_value) if v is not None]
        return min(given) if given else None

    async def score(request: Request, query: str, texts: list[str], *, name: str, **kwargs: Any) -> RerankOutcome:
        sched = scheduler()
        check_texts(query, texts, name)
        # The deadline counts from when the request arrived, not from when its body was parsed.
        started = request.scope.get(_T0_KEY)
        work = asyncio.ensure_future(sched.arerank(query, texts, started_at=started, **kwargs))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandoned = not work.done()
            if abandoned:  # the client went away (or the server is cancelling us): withdraw
                work.cancel()
            gone.cancel()
        if abandoned or work.cancelled():
            state.metrics.rejected.labels("client_gone").inc()
            raise APIError(499, "the client closed the connection before the answer", error_type="client_gone")
        try:
            outcome = work.result()
        except QueueFullError as err:
            state.metrics.rejected.labels("queue_full").inc()
            raise APIError(429, str(err), error_type="overloaded", headers={"Retry-After": str(int(math.ceil(err.retry_after_s)))}) from err
        except RequestTimeoutError as err:
            state.metrics.rejected.labels("timeout").inc()
            raise APIError(504, str(err), error_type="timeout") from err
        except SchedulerClosedError as err:
            state.metrics.rejected.labels("closed").inc()
            raise APIError(503, str(err), error_type="not_ready") from err
        except PairTooLongError as err:
            field = "query" if err.part == "query" else f"{name}[{err.index}]"
            raise APIError(422, f"{field}: {err}", error_type="validation", field=field) from err
        except (InvalidInputError, InputTypeError) as err:
            raise APIError(422, str(err), error_type="validation") from err
        except InferenceError as err:
            log.error("inference failed: %s", err)
            raise APIError(500, "inference failed on a batch holding this request; see the server log", error_type="inference") from err
        except CrossrankError as err:
            raise APIError(500, str(err), error_type="internal") from err
        state.metrics.on_outcome(outcome)
        request.state.pairs = len(texts)
        return outcome

    def check_model(model: str | None) -> None:
        if model is not None and model != config.model_name:
            raise APIError(422, f"model {model!r} is not served here; this server serves {config.model_name!r} (GET /info)",
                           error_type="model_not_found", field="model")

    # -- routes ------------------------------------------------------------------------------------
    async def cohere(request: Request, body: RerankRequest, api: str) -> dict[str, Any]:
        check_model(body.model)
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        outcome = await score(
            request,
            body.query,
            texts,
            name="documents",
            top_k=body.top_n,
            raw=body.raw_scores,
            deadline_ms=deadline_of(request, body.deadline_ms),
            max_doc_tokens=body.max_tokens_per_doc,
        )
        results = []
        for r in outcome.results:
            item: dict[str, Any] = {"index": r.index, "relevance_score": r.score if r.scored else None}
            if body.return_documents:
                item["document"] = {"text": scrub(r.document)}  # a lone surrogate would fail UTF-8 encoding
            if not r.scored:
                item["scored"] = False
            results.append(item)
        return {
            "id": str(uuid.uuid4()),
            "model": config.model_name,
            "results": results,
            "usage": {"total_tokens": outcome.total_tokens, "prompt_tokens": outcome.total_tokens},
            "meta": {"api_version": {"version": api}, "billed_units": {"search_units": 1}},
            "unscored": outcome.num_unscored,
            "partial": outcome.partial,
        }

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_unset=True, responses=_ERRORS,
              summary="Rerank documents (Cohere v1 / Jina / infinity shape)", openapi_extra=_body_schema(RerankRequest))
    async def rerank_v1(request: Request) -> Any:
        authorize(request)
        return await cohere(request, await _parse(request, RerankRequest), "1")

    @app.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_unset=True, responses=_ERRORS,
              summary="Rerank documents (Cohere v2 shape)", openapi_extra=_body_schema(RerankRequest))
    async def rerank_v2(request: Request) -> Any:
        authorize(request)
        return await cohere(request, await _parse(request, RerankRequest), "2")

    @app.post("/rerank", response_model=list[TEIRank], response_model_exclude_unset=True, responses=_ERRORS,
              summary="Rerank texts (text-embeddings-inference shape)", openapi_extra=_body_schema(TEIRerankRequest))
    async def rerank_tei(request: Request) -> Any:
        authorize(request)
        body = await _parse(request, TEIRerankRequest)
        outcome = await score(
            request,
            body.query,
            body.texts,
            name="texts",
            raw=body.raw_scores,
            deadline_ms=deadline_of(request, body.deadline_ms),
            allow_truncation=bool(body.truncate),
        )
        ranks = []
        for r in outcome.results:
            item: dict[str, Any] = {"index": r.index, "score": r.score if r.scored else None}
            if body.return_text:
                item["text"] = scrub(r.document)
            ranks.append(item)
        headers = {"X-Crossrank-Unscored": str(outcome.num_unscored)} if outcome.partial else None
        return JSONResponse(ranks, headers=headers)

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model loaded and warmed", responses={503: {"model": ErrorBody}})
    async def ready() -> Any:
        if not state.ready:
            return _error_response(503, "not ready: loading, warming up or shutting down", "not_ready", headers={"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/info", summary="The served model and the service's limits")
    async def info(request: Request) -> dict[str, Any]:
        authorize(request)
        rr = state.reranker
        m = rr.manifest if rr is not None else None
        return {
            "model": config.model_name,
            "crossrank_version": __version__,
            "ready": state.ready,
            "model_dir": config.model_dir,
            "source": dict(m.source) if m else None,
            "architecture": m.architecture if m else None,
            "activation": m.activation if m else None,
            "num_labels": m.num_labels if m else None,
            "variant": rr.variant if rr else None,
            "providers": rr.providers if rr else None,
            "max_length": rr.max_length if rr else None,
            "batch_tokens": rr.batch_tokens if rr else None,
            "max_batch_size": rr.max_batch_size if rr else None,
            "batching": config.batching,
            "limits": {
                "max_documents": config.max_documents,
                "max_body_bytes": config.max_body_bytes,
                "max_text_chars": config.max_text_chars,
                "max_queue_pairs": config.max_queue_pairs,
                "request_timeout_s": config.request_timeout_s,
            },
            "auth": config.api_key is not None,
        }

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    app.openapi = _openapi_with_bodies(app, (RerankRequest, TEIRerankRequest))  # type: ignore[method-assign]
    return app


def create_app_from_env() -> FastAPI:
    """App factory for ``--workers N``: each uvicorn worker builds its app from ``$CROSSRANK_SERVE_CONFIG``.

    A worker is a fresh process started by ``crossrank serve``, which owns it: the crossrank log
    (access lines included) goes to stderr as in the single-process server."""
    root = logging.getLogger("crossrank")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return create_app(ServeConfig.from_env())


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    """The body as ``model``, whatever Content-Type says (``curl -d`` sends a form type; clients
    that post JSON without the header must work too). Errors go to the validation handler."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise APIError(415, f"Content-Encoding {encoding!r} is not supported; send the JSON body uncompressed", error_type="unsupported_encoding")
    raw = await request.body()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise APIError(400, f"the body is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})", error_type="invalid_json") from err
    except UnicodeDecodeError as err:
        raise APIError(400, f"the body is not valid JSON: not UTF-8/16/32 text ({err.reason})", error_type="invalid_json") from err
    except RecursionError as err:
        raise APIError(400, "the body is not valid JSON here: nested too deeply", error_type="invalid_json") from err
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise APIError(400, f"the body is not valid JSON here: {err}", error_type="invalid_json") from err
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, not {type(data).__name__}", error_type="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from err


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for routes that parse it themselves (see :func:`_parse`); the schema
    itself is added to the components by :func:`_openapi_with_bodies`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _openapi_with_bodies(app: FastAPI, models: Sequence[type[BaseModel]]) -> Any:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in body.pop("$defs", {}).items():
                    components.setdefault(name, sub)
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


_FIELDS = frozenset(
    name for m in (RerankRequest, TEIRerankRequest, DocumentObject) for name in m.model_fields
)


def _field_name(loc: Sequence[Any], *, unknown: bool = False) -> str | None:
    # pydantic adds the union member it tried ("str", "DocumentObject", "int", ...) to the
    # location: keep only field names and list positions (and an unknown field's own name).
    loc = list(loc)
    last = loc.pop() if unknown and loc else None
    parts = [p for p in loc if isinstance(p, int) or p in _FIELDS] + ([last] if last is not None else [])
    if not parts:
        return None
    out = str(parts[0])
    for p in parts[1:]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


_T0_KEY = "crossrank.t0"


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is already read, so the next ASGI message
    is the disconnect). uvicorn does not cancel a handler whose client left; this lets it stop."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _relevant(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of a document's union errors keep the member it was meant as: an object's own field errors
    when it is an object, one "string or object" error otherwise."""
    out = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if "str" in loc and isinstance(e.get("input"), dict):
            continue  # an object was given: the string member's complaint is noise
        if loc and loc[-1] == "DocumentObject" and not isinstance(e.get("input"), dict):
            continue  # neither string nor object: the string member's error says it once
        out.append(e)
    return out or errors


def _message(e: dict[str, Any]) -> str:
    kind = e.get("type", "")
    loc = e.get("loc", ())
    if loc and loc[-1] in ("str", "DocumentObject"):  # a document that is neither member of the union
        return "must be a string or an object with a 'text' string"
    if "deadline_ms" in loc:
        return "must be a finite number of milliseconds > 0 (a JSON number, not a string or boolean)"
    if kind == "extra_forbidden":
        return "unknown field (check its spelling; see GET /docs for the accepted fields)"
    return str(e.get("msg", "invalid"))


class _AccessAndLimits:
    """Pure ASGI middleware: refuses bodies over ``max_body_bytes`` (413) before they are read
    whole, counts requests by route and status, and writes one JSON access-log line per request."""

    def __init__(self, app: Any, *, state: _State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.state.config.max_body_bytes
        t0 = time.perf_counter()
        scope[_T0_KEY] = time.monotonic()
        path = scope.get("path", "")
        route = path if path in _ROUTES else "other"
        status_box = {"status": 500}

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                status_box["started"] = True
            await send(message)

        too_large = False
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > limit:
            too_large = True
        if too_large:
            resp = _error_response(413, f"request body of {int(length)} bytes is over the limit of {limit} (max_body_bytes)", "too_large")
            await resp(scope, receive, send_wrapped)
        else:
            received = 0

            async def receive_limited() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise APIError(413, f"request body over the limit of {limit} bytes (max_body_bytes)", error_type="too_large")
                return message

            try:
                await self.app(scope, receive_limited, send_wrapped)
            except APIError as err:  # raised while the body was streamed in, before any answer
                await _error_response(err.status, err.message, err.error_type)(scope, receive, send_wrapped)
            except Exception as err:  # noqa: BLE001 - answered here, so the connection stays usable
                log.exception("unexpected error on %s", path)
                if status_box.get("started"):
                    raise
                await _error_response(500, f"internal error ({type(err).__name__}); see the server log", "internal")(scope, receive, send_wrapped)
        seconds = time.perf_counter() - t0
        status = status_box["status"]
        m = self.state.metrics
        m.requests.labels(route, str(status)).inc()
        if route in ("/v1/rerank", "/v2/rerank", "/rerank"):
            m.request_seconds.labels(route).observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("", 0)
            access_log.info(
                json.dumps(
                    {
                        "ts": round(time.time(), 3),
                        "method": scope.get("method"),
                        "path": path,
                        "status": status,
                        "ms": round(seconds * 1000, 2),
                        "client": f"{client[0]}:{client[1]}",
                        "pairs": (scope.get("state") or {}).get("pairs"),
                    }
                )
            )
