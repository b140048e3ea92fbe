"""Throughput of the Ray Data rescoring job with 1 and 2 actors against in-process ``score_pairs``.

    nice -n 5 python benchmarks/ray_scaling.py --model .cache/demo/minilm --data ../shared/data/trec-dl-2020.jsonl.gz --pairs 1200

The same pairs (the first ``--pairs`` (query, candidate) pairs of TREC DL 2020, written to
``--files`` JSONL files) are scored by:

1. ``Reranker.score_pairs`` in this process, 1 onnxruntime thread, then 2 threads (one call over
   all pairs, after a warm-up call);
2. ``crossrank.ray.rescore.run`` with 1 actor x 1 thread, then 2 actors x 1 thread, on a local
   Ray instance with 2 CPUs (``--shard-pairs`` rows per shard; each run into a fresh output folder).

Prints one JSON line per measurement; the Ray lines carry the job's ``pairs_per_s`` (wall time of
``run``: planning, actor start-up and model load included) and ``steady_pairs_per_s`` (from the
first shard's start to the last shard's end).
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--pairs", type=int, default=1200)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--shard-pairs", type=int, default=150)
    args = p.parse_args()

    from crossrank import Reranker

    pairs: list[tuple[str, str]] = []
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            pairs += [(r["query"], c["text"]) for c in r["candidates"]]
            if len(pairs) >= args.pairs:
                break
    pairs = pairs[: args.pairs]
    tmp = Path(tempfile.mkdtemp(prefix="crossrank-ray-scaling-"))
    per = -(-len(pairs) // args.files)
    for k in range(args.files):
        with open(tmp / f"pairs-{k}.jsonl", "w", encoding="utf-8") as fh:
            for i, (q, d) in enumerate(pairs[k * per:(k + 1) * per]):
                fh.write(json.dumps({"id": f"{k}-{i}", "query": q, "document": d}) + "\n")

    for threads in (1, 2):
        rr = Reranker.load(args.model, threads=threads)
        rr.score_pairs(pairs[:64])  # warm-up
        t = time.perf_counter()
        rr.score_pairs(pairs)
        s = time.perf_counter() - t
        print(json.dumps({"config": f"in-process score_pairs, {threads} thread(s)", "pairs": len(pairs),
                          "seconds": round(s, 2), "pairs_per_s": round(len(pairs) / s, 1)}), flush=True)
        del rr

    import ray

    from crossrank.ray import rescore

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    for actors in (1, 2):
        summary = rescore.run([str(tmp / "*.jsonl")], model=args.model, out=str(tmp / f"out-{actors}"), actors=actors,
                              threads=1, shard_pairs=args.shard_pairs, progress=False)
        assert not summary["failed"] and summary["pairs"] == len(pairs), summary
        print(json.dumps({"config": f"ray data rescore, {actors} actor(s) x 1 thread", "pairs": summary["pairs"],
                          "seconds": summary["seconds"], "pairs_per_s": summary["pairs_per_s"],
                          "steady_pairs_per_s": summary["steady_pairs_per_s"], "shards": summary["shards"]}), flush=True)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
