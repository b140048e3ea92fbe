"""Inside a Ray Serve replica: crossrank's Scheduler (the crossrank.ray.serve app) against Ray
Serve's ``@serve.batch`` around ``Reranker.rerank_many``. Small and bounded (about 2 minutes).

    python benchmarks/ray_batching.py --model .cache/demo/minilm --data ../shared/data/trec-dl-2020.jsonl.gz

Both deployments: one replica, ``--threads`` onnxruntime threads, the same model folder, real
TREC DL 2020 queries and candidates, driven over HTTP on loopback by ``--clients`` concurrent
clients for ``--seconds`` each, with a mix of small (10 candidates) and large (100 candidates)
requests (3 small : 1 large), after an idle probe (one client, small requests, one at a time).
Prints one JSON line per configuration: requests and pairs per second, p50/p95 latency by size.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import socket
import statistics
import time
from pathlib import Path
from typing import Any


def _load(data: Path) -> list[tuple[str, list[str]]]:
    with gzip.open(data, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [(r["query"], [c["text"] for c in r["candidates"]]) for r in rows if len(r["candidates"]) >= 100]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


async def _drive(url: str, queries: list[tuple[str, list[str]]], *, clients: int, seconds: float, idle: int) -> dict[str, Any]:
    import httpx

    rng = random.Random(0)
    lat: dict[int, list[float]] = {10: [], 100: []}
    idle_lat: list[float] = []
    pairs = 0
    async with httpx.AsyncClient(timeout=120) as http:
        for i in range(idle):  # idle server: what a lone request pays
            q, docs = queries[i % len(queries)]
            t = time.perf_counter()
            r = await http.post(url, json={"query": q, "documents": docs[:10]})
            r.raise_for_status()
            idle_lat.append(time.perf_counter() - t)
        stop = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal pairs
            while time.perf_counter() < stop:
                q, docs = rng.choice(queries)
                n = 100 if rng.random() < 0.25 else 10
                t = time.perf_counter()
                r = await http.post(url, json={"query": q, "documents": docs[:n]})
                r.raise_for_status()
                lat[n].append(time.perf_counter() - t)
                pairs += n

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    ms = lambda s: round(1000 * s, 1)  # noqa: E731
    return {
        "idle_p50_ms_10": ms(statistics.median(idle_lat)) if idle_lat else None,
        "requests_per_s": round((len(lat[10]) + len(lat[100])) / wall, 2),
        "pairs_per_s": round(pairs / wall, 1),
        "p50_ms_10": ms(_pct(lat[10], 0.5)), "p95_ms_10": ms(_pct(lat[10], 0.95)),
        "p50_ms_100": ms(_pct(lat[100], 0.5)), "p95_ms_100": ms(_pct(lat[100], 0.95)),
        "requests": len(lat[10]) + len(lat[100]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--idle", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8, help="@serve.batch max_batch_size")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="@serve.batch batch_wait_timeout_s (ms)")
    args = p.parse_args()

    import ray
    from ray import serve
    from starlette.requests import Request

    from crossrank import Reranker
    from crossrank.ray.serve import app

    queries = _load(Path(args.data))
    model = str(Path(args.model).resolve())
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1/rerank"

    serve.run(app({"model": model, "num_replicas": 1, "threads": args.threads, "max_ongoing_requests": 64}), name="x", route_prefix="/")
    res = asyncio.run(_drive(url, queries, clients=args.clients, seconds=args.seconds, idle=args.idle))
    print(json.dumps({"config": "crossrank Scheduler (crossrank.ray.serve)", **res}), flush=True)
    serve.delete("x")

    threads, bs, wait = args.threads, args.batch_size, args.batch_wait_ms / 1000

    @serve.deployment(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": threads})
    class Batched:
        def __init__(self) -> None:
            self.rr = Reranker.load(model, threads=threads)
            self.rr.rerank_many([("warm up", ["a short candidate"] * 8)])

        @serve.batch(max_batch_size=bs, batch_wait_timeout_s=wait)
        async def rank(self, items: list[tuple[str, list[str]]]) -> list[list[Any]]:
            # One call for the whole batch: its pairs share token-budgeted, length-sorted runs.
            return await asyncio.to_thread(self.rr.rerank_many, items)

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            results = await self.rank((body["query"], body["documents"]))
            return {"results": [{"index": r.index, "relevance_score": r.score} for r in results]}

    serve.run(Batched.bind(), name="y", route_prefix="/v1/rerank")
    res = asyncio.run(_drive(url, queries, clients=args.clients, seconds=args.seconds, idle=args.idle))
    print(json.dumps({"config": f"@serve.batch(max_batch_size={bs}, batch_wait_timeout_s={wait}) + rerank_many", **res}), flush=True)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
