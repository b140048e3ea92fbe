"""The reranking server a user writes by hand: FastAPI + sentence-transformers ``CrossEncoder``.

This is the peer ``crossrank serve`` is load-tested against (``python -m crossrank.bench.load
--systems st-fastapi``). It is deliberately the *usual* server, not a tuned one:

* the model is loaded once at start-up (PyTorch, fp32, CPU) and warmed with one call;
* ``POST /v1/rerank`` is a plain **sync** endpoint (``def``, not ``async def``), so FastAPI runs
  each request in its threadpool (AnyIO's default of 40 threads) and several requests call
  ``model.predict`` **concurrently** on the one model — no lock, no queue, no cross-request
  batching: one ``CrossEncoder.predict`` per request (its default ``batch_size=32``), then a sort.
  PyTorch inference is thread-safe, and this is what the FastAPI tutorials and most hand-written
  reranker services do. Concurrent requests therefore share the CPU (and torch's intra-op thread
  pool) instead of waiting in line;
* no limits, no backpressure: an overload grows latency without bound.

Request and response follow the Cohere/Jina/infinity shape that ``crossrank serve`` answers::

    POST /v1/rerank {"query": str, "documents": [str | {"text": str}, ...], "top_n": int?, "return_documents": bool?}
    -> {"id", "model", "results": [{"index", "relevance_score", "document"?: {"text"}}...], "usage": {"total_tokens": null}}

``usage.total_tokens`` is ``null``: a hand-written server does not tokenize a second time to
count. ``GET /ready`` answers 200 once the model is loaded and warmed (the port only opens then).

    python benchmarks/serve_peers/st_server.py HF_FOLDER --host 127.0.0.1 --port 8001 [--threads N] [--max-length L]
"""
from __future__ import annotations

import argparse
import time
import uuid
from typing import Any, Optional, Union

import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel


class TextDoc(BaseModel):
    text: str


class RerankRequest(BaseModel):
    query: str
    documents: list[Union[str, TextDoc]]
    top_n: Optional[int] = None
    return_documents: bool = False
    model: Optional[str] = None


def build_app(model: Any, model_name: str) -> FastAPI:
    app = FastAPI(title="sentence-transformers CrossEncoder reranker")
    state = {"ready": False}

    @app.get("/ready")
    def ready(response: Response) -> dict:
        if not state["ready"]:
            response.status_code = 503
            return {"status": "loading"}
        return {"status": "ready"}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/rerank")
    def rerank(req: RerankRequest) -> dict:
        docs = [d if isinstance(d, str) else d.text for d in req.documents]
        scores = model.predict([(req.query, d) for d in docs], show_progress_bar=False) if docs else []
        order = sorted(range(len(docs)), key=lambda i: -float(scores[i]))
        if req.top_n is not None:
            order = order[: max(req.top_n, 0)]
        results = []
        for i in order:
            r: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
            if req.return_documents:
                r["document"] = {"text": docs[i]}
            results.append(r)
        return {"id": str(uuid.uuid4()), "model": model_name, "results": results, "usage": {"total_tokens": None}}

    app.state.flags = state
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="Hugging Face model folder (a sequence-classification cross-encoder)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--max-length", type=int, default=None, help="tokens per pair (default: the tokenizer's)")
    args = ap.parse_args(argv)

    import torch
    from sentence_transformers import CrossEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = CrossEncoder(args.model, device="cpu", max_length=args.max_length)
    model.predict([("warm-up query", "warm-up document")], show_progress_bar=False)
    app = build_app(model, args.model.rstrip("/").rsplit("/", 1)[-1])
    app.state.flags["ready"] = True
    print(f"st-fastapi: model loaded and warmed in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
