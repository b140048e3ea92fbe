"""Long documents: nDCG@10 of truncate vs chunk (each aggregation), with the cost of each, same run.

    python benchmarks/long_docs_study.py --model .cache/demo/minilm --max-lengths 128,256,512 --queries 50
    python benchmarks/long_docs_study.py --model .cache/demo/minilm --planted --max-lengths 256 --queries 20 --top 10

**SciFact** (default): each query's BM25 top-20 abstracts (``scifact-test-bm25top20.jsonl.gz``,
the first ``--queries`` queries in file order), scored by the Reranker loaded at each
``max_length`` (default variant: int8 on CPU):

* ``truncate``: ``rr.score(q, docs)`` (today's behaviour);
* ``chunk``: every window of every document scored once through ``rr.score_pairs`` on the
  windows that :func:`crossrank.chunking.plan_units` plans for ``rr.score(..., long_documents=
  "chunk")`` (the same pairs, the same one input path), then aggregated four ways
  (``max``/``first``/``mean``/``top2_mean``); so the four share one cost. The script checks, on
  the first queries, that ``rr.score(..., long_documents="chunk", aggregate=A)`` gives the same
  scores as this offline aggregation.

Cost: pairs scored, padded tokens (sum of batch size x padded length over the runs) and wall
seconds of the scoring calls (tokenization and window planning included).

**Planted** (``--planted``): a longer-document set built from the same file without new data.
For each of the first ``--queries`` queries that have a relevant abstract among their BM25
candidates, each of its first ``--top`` candidates (label kept) is embedded among ``--fillers``
distractor abstracts drawn (seeded by query and candidate) from the candidates of *other*
queries, at the start, in the middle, or at the end of the text; every candidate of a query is
planted at the same position. Truncation sees the candidate only when it starts the text; the
windows of chunking see all of it (``max_chunks_per_doc`` is raised to 32 so that no text is
left unread).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from crossrank import Reranker
from crossrank.bench.data import Dataset, Query, load_dataset
from crossrank.bench.metrics import evaluate
from crossrank.chunking import AGGREGATES, LongDocOptions, aggregate, plan_units


def _padded(info) -> int:
    return int(sum(b * l for b, l in info.batch_shapes))


def run_truncate(rr: Reranker, ds: Dataset) -> tuple[list[np.ndarray], dict]:
    scores, pairs, padded, secs, cut = [], 0, 0, 0.0, 0
    for q in ds.queries:
        t = time.perf_counter()
        s, info = rr.score(q.query, q.docs, return_info=True)
        secs += time.perf_counter() - t
        scores.append(np.asarray(s, dtype=np.float64))
        pairs += len(q.docs)
        padded += _padded(info)
        cut += int(info.doc_cut.sum())
    return scores, {"pairs": pairs, "padded_tokens": padded, "seconds": secs, "docs_cut": cut}


def run_chunk(rr: Reranker, ds: Dataset, *, max_chunks: int, check: int = 2) -> tuple[dict[str, list[np.ndarray]], dict]:
    opts = LongDocOptions(mode="chunk", max_chunks_per_doc=max_chunks)
    out: dict[str, list[np.ndarray]] = {a: [] for a in AGGREGATES}
    pairs, padded, secs, unread_docs, windowed = 0, 0, 0.0, 0, 0
    for qi, q in enumerate(ds.queries):
        t = time.perf_counter()
        units, unread = plan_units(rr._encoder, q.query, q.docs, opts)
        ws, info = rr.score_pairs([(q.query, u.text) for u in units], return_info=True)
        secs += time.perf_counter() - t
        pairs += len(units)
        padded += _padded(info)
        unread_docs += int(unread.sum())
        owner = np.array([u.doc for u in units])
        windowed += int(sum((owner == i).sum() > 1 for i in range(len(q.docs))))
        for a in AGGREGATES:
            out[a].append(np.array([aggregate(ws[owner == i], a)[0] for i in range(len(q.docs))], dtype=np.float64))
        if qi < check:  # the public call scores exactly this
            for a in AGGREGATES:
                direct = rr.score(q.query, q.docs, long_documents="chunk", max_chunks_per_doc=max_chunks, aggregate=a)
                if not np.array_equal(direct, out[a][-1].astype(np.float32)):
                    raise SystemExit(f"offline aggregation differs from rr.score(..., aggregate={a!r}) on query {q.qid}")
    return out, {"pairs": pairs, "padded_tokens": padded, "seconds": secs, "docs_unread": unread_docs, "docs_windowed": windowed}


def planted_dataset(ds: Dataset, *, n_queries: int, top: int, fillers: int, where: str, seed: int = 0) -> Dataset:
    pool = [(qi, d) for qi, q in enumerate(ds.queries) for d in q.docs]
    queries: list[Query] = []
    for qi, q in enumerate(ds.queries):
        if len(queries) == n_queries:
            break
        labels = q.labels[:top]
        if not any(labels):
            continue
        own = set(q.docs)
        docs = []
        for j, cand in enumerate(q.docs[:top]):
            rng = np.random.default_rng([seed, qi, j])
            picks: list[str] = []
            while len(picks) < fillers:
                oq, d = pool[int(rng.integers(len(pool)))]
                if oq != qi and d not in own and d not in picks:
                    picks.append(d)
            at = {"start": 0, "middle": fillers // 2, "end": fillers}[where]
            docs.append(" ".join(picks[:at] + [cand] + picks[at:]))
        queries.append(Query(qid=q.qid, query=q.query, docs=tuple(docs), labels=tuple(labels), ideal_top10=q.ideal_top10))
    return Dataset(ds.info, ds.path, tuple(queries))


def _row(name: str, ds: Dataset, scores: list[np.ndarray], cost: dict, base_secs: float | None) -> dict:
    m = evaluate(ds, scores)
    return {"method": name, "ndcg@10": m["ndcg@10"], **cost, "ms_per_query": 1000 * cost["seconds"] / len(ds.queries),
            "cost_vs_truncate": None if not base_secs else cost["seconds"] / base_secs}


def study(rr: Reranker, ds: Dataset, *, max_chunks: int) -> list[dict]:
    rows = []
    ts, tcost = run_truncate(rr, ds)
    rows.append(_row("truncate", ds, ts, tcost, tcost["seconds"]))
    cs, ccost = run_chunk(rr, ds, max_chunks=max_chunks)
    for a in AGGREGATES:
        rows.append(_row(f"chunk/{a}", ds, cs[a], ccost, tcost["seconds"]))
    return rows


def _table(rows: list[dict], key: str) -> str:
    head = f"| {key} | method | nDCG@10 | pairs | padded tokens | seconds | ms/query | cost × truncate |\n|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        lines.append(
            f"| {r[key]} | {r['method']} | {r['ndcg@10']:.4f} | {r['pairs']:,} | {r['padded_tokens']:,} | {r['seconds']:.1f} | "
            f"{r['ms_per_query']:.0f} | {r['cost_vs_truncate']:.2f}× |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="crossrank model folder")
    p.add_argument("--variant", default="auto")
    p.add_argument("--max-lengths", default="128,256,512")
    p.add_argument("--queries", type=int, default=50, help="first N queries in file order")
    p.add_argument("--max-chunks", type=int, default=8, help="max_chunks_per_doc (SciFact; the planted set uses 32)")
    p.add_argument("--planted", action="store_true", help="the constructed longer-document set instead of SciFact as is")
    p.add_argument("--top", type=int, default=10, help="planted: candidates per query (BM25 top-N)")
    p.add_argument("--fillers", type=int, default=2, help="planted: distractor abstracts per document")
    p.add_argument("--positions", default="start,middle,end")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    full = load_dataset("scifact", args.data)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for L in (int(x) for x in args.max_lengths.split(",")):
        rr = Reranker.load(args.model, variant=args.variant, max_length=L)
        rr.calibrate()
        if not args.planted:
            ds = full.head(args.queries)
            for r in study(rr, ds, max_chunks=args.max_chunks):
                rows.append({"max_length": L, **r})
                print(json.dumps(rows[-1]), file=sys.stderr)
        else:
            for where in args.positions.split(","):
                ds = planted_dataset(full, n_queries=args.queries, top=args.top, fillers=args.fillers, where=where)
                for r in study(rr, ds, max_chunks=32):
                    rows.append({"max_length": L, "position": where, **r})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    key = "position" if args.planted else "max_length"
    print(f"variant {rr.variant}, {len(ds.queries)} queries, {sum(len(q.docs) for q in ds.queries)} documents, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    if args.planted:
        for L in sorted({r["max_length"] for r in rows}):
            print(f"max_length {L}\n")
            print(_table([r for r in rows if r["max_length"] == L], key))
    else:
        print(_table(rows, key))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
