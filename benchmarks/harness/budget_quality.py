"""Quality at a latency budget: ``crossrank bench DIR --quality-at-budget --budget-ms 25,...,1000``.

On TREC DL 2020 (BM25 top-100 per query) for every budget B:

* **budget reranking**: ``rr.rerank(q, docs, budget_ms=B)`` — candidates scored in BM25 order
  until the cost model says the next run would overrun, the rest kept in BM25 order after them;
* **top-k by count**: rerank the BM25 top-k and keep the rest in BM25 order, k the largest count
  of a grid whose p95 latency (measured in the same run on a subset of the queries) fits B — the
  usual way to "fit a budget" without one.

Both give nDCG@10 (trec_eval's definition, :mod:`.metrics`) over the same queries, next to BM25
(B = 0) and the full rerank of all 100 (no budget). Latency: budget reranking's own wall clock
per call, p50/p99, and the share of calls over B + the stated tolerance
(:func:`crossrank.budget.tolerance_ms`); top-k's p99 is that of its count's measured calls.
"95% of the gain": the smallest budget on the grid whose nDCG@10 recovers 95% of the full
rerank's gain over BM25 (and the same for top-k).

Scores of the top-k baseline come from the full rerank (static int8 and fp32 are batch-invariant,
so reranking only the top k gives the same scores; the tests hold that bit for bit).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from crossrank import Reranker
from crossrank.budget import tolerance_ms

from .data import Dataset, load_dataset
from .metrics import evaluate, first_stage_scores

__all__ = ["DEFAULT_BUDGETS_MS", "COUNT_GRID", "run_quality_at_budget", "write_quality_at_budget"]

DEFAULT_BUDGETS_MS = (25.0, 50.0, 100.0, 200.0, 400.0, 700.0, 1000.0)
COUNT_GRID = (1, 3, 5, 10, 20, 30, 50, 70, 100)


def _order_scores(order: Sequence[int], n: int) -> np.ndarray:
    """Scores that rank candidates exactly in ``order`` (best first)."""
    s = np.empty(n, dtype=np.float64)
    s[np.asarray(order, dtype=np.int64)] = -np.arange(n, dtype=np.float64)
    return s


def _topk_scores(full: np.ndarray, k: int) -> np.ndarray:
    n = len(full)
    k = min(k, n)
    head = np.argsort(-full[:k], kind="stable")
    return _order_scores(list(head) + list(range(k, n)), n)


def run_quality_at_budget(
    model_dir: Path,
    *,
    budgets_ms: Sequence[float] = DEFAULT_BUDGETS_MS,
    queries: int | None = None,
    latency_queries: int = 18,
    variant: str = "auto",
    data_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda m: None)
    ds: Dataset = load_dataset("trec-dl-2020", data_dir).head(queries)
    rr = Reranker.load(model_dir, variant=variant)
    rr.calibrate()
    t_start = time.perf_counter()
    bm25 = evaluate(ds, [first_stage_scores(len(q.docs)) for q in ds.queries])["ndcg@10"]
    # Full rerank: the scores of every candidate, and its latency.
    full_scores, full_ms = [], []
    for i, q in enumerate(ds.queries):
        t = time.perf_counter()
        s = rr.score(q.query, q.docs)
        full_ms.append(1000 * (time.perf_counter() - t))
        full_scores.append(np.asarray(s, dtype=np.float64))
        say(f"full rerank {i + 1}/{len(ds.queries)}")
    full = evaluate(ds, full_scores)["ndcg@10"]
    # Top-k by count: p95 latency of each count on a subset of the queries (every m-th).
    step = max(1, len(ds.queries) // max(1, latency_queries))
    subset = ds.queries[::step][:latency_queries]
    count_ms: dict[int, list[float]] = {}
    for k in COUNT_GRID:
        if k >= 100:
            count_ms[k] = full_ms
            continue
        count_ms[k] = []
        for q in subset:
            t = time.perf_counter()
            rr.rerank(q.query, q.docs[:k])
            count_ms[k].append(1000 * (time.perf_counter() - t))
        say(f"top-{k} latency")
    count_p95 = {k: float(np.percentile(v, 95)) for k, v in count_ms.items()}
    rows = []
    for B in budgets_ms:
        ms, scored, scores = [], [], []
        for q in ds.queries:
            t = time.perf_counter()
            res = rr.rerank(q.query, q.docs, budget_ms=B)
            ms.append(1000 * (time.perf_counter() - t))
            scored.append(sum(r.scored for r in res))
            scores.append(_order_scores([r.index for r in res], len(q.docs)))
        fits = [k for k in COUNT_GRID if count_p95[k] <= B]
        k = max(fits) if fits else 0
        topk = evaluate(ds, [_topk_scores(f, k) for f in full_scores])["ndcg@10"] if k else bm25
        rows.append({
            "budget_ms": B,
            "budget_ndcg@10": evaluate(ds, scores)["ndcg@10"],
            "budget_scored_mean": float(np.mean(scored)),
            "budget_p50_ms": float(np.percentile(ms, 50)),
            "budget_p99_ms": float(np.percentile(ms, 99)),
            "budget_max_ms": float(np.max(ms)),
            "over_tolerance": float(np.mean(np.asarray(ms) > B + tolerance_ms(B))),
            "topk_k": k,
            "topk_ndcg@10": topk,
            "topk_p99_ms": float(np.percentile(count_ms[k], 99)) if k else 0.0,
        })
        say(f"budget {B:g} ms")

    def recover(key: str) -> float | None:
        for r in rows:
            if r[key] - bm25 >= 0.95 * (full - bm25):
                return r["budget_ms"]
        return None

    return {
        "dataset": "trec-dl-2020", "queries": len(ds.queries), "candidates": 100, "variant": rr.variant,
        "bm25_ndcg@10": bm25, "full_ndcg@10": full,
        "full_p50_ms": float(np.percentile(full_ms, 50)), "full_p99_ms": float(np.percentile(full_ms, 99)),
        "count_p95_ms": {str(k): v for k, v in count_p95.items()}, "latency_queries": len(subset),
        "rows": rows,
        "budget_95pct_gain_ms": recover("budget_ndcg@10"), "topk_95pct_gain_ms": recover("topk_ndcg@10"),
        "cost_model": {"overhead_ms": 1000 * rr.cost.overhead_s, "ms_per_token": 1000 * rr.cost.seconds_per_token,
                       "median_rel_error": rr.cost.fit_error()},
        "elapsed_s": time.perf_counter() - t_start,
    }


def table(res: dict[str, Any]) -> str:
    lines = [
        f"TREC DL 2020, BM25 top-100, {res['queries']} queries, variant {res['variant']}: BM25 nDCG@10 "
        f"{res['bm25_ndcg@10']:.4f}, full rerank {res['full_ndcg@10']:.4f} (p50 {res['full_p50_ms']:.0f} ms, "
        f"p99 {res['full_p99_ms']:.0f} ms).",
        "",
        "| budget B | budget rerank nDCG@10 | scored (mean) | p50 ms | p99 ms | calls over B+tol | top-k by count: k | top-k nDCG@10 | top-k p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['budget_ms']:g} ms | {r['budget_ndcg@10']:.4f} | {r['budget_scored_mean']:.1f} | {r['budget_p50_ms']:.0f} | "
            f"{r['budget_p99_ms']:.0f} | {100 * r['over_tolerance']:.0f}% | {r['topk_k']} | {r['topk_ndcg@10']:.4f} | {r['topk_p99_ms']:.0f} |"
        )
    b, t = res["budget_95pct_gain_ms"], res["topk_95pct_gain_ms"]
    lines += [
        "",
        f"95% of the full rerank's nDCG@10 gain over BM25: budget reranking at B = {f'{b:g} ms' if b else 'none of the budgets'}, "
        f"top-k by count at B = {f'{t:g} ms' if t else 'none of the budgets'} (smallest budget on the grid).",
        f"Top-k latencies: p95 over {res['latency_queries']} queries per count "
        + ", ".join(f"{k}: {v:.0f} ms" for k, v in res["count_p95_ms"].items()) + ".",
        f"Cost model at the end: {res['cost_model']['overhead_ms']:.1f} ms + {res['cost_model']['ms_per_token']:.4f} ms per padded token, "
        f"median relative error {100 * res['cost_model']['median_rel_error']:.0f}%.",
    ]
    return "\n".join(lines) + "\n"


def write_quality_at_budget(res: dict[str, Any], out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "quality_at_budget.md", "json": out / "quality_at_budget.json"}
    paths["table"].write_text(table(res), encoding="utf-8")
    paths["json"].write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return paths
    B = [r["budget_ms"] for r in res["rows"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(B, [r["budget_ndcg@10"] for r in res["rows"]], "o-", label="budget_ms=B (BM25 order)")
    a1.plot(B, [r["topk_ndcg@10"] for r in res["rows"]], "s--", label="rerank top-k by count (p95 fits B)")
    a1.axhline(res["bm25_ndcg@10"], color="gray", ls=":", label="BM25")
    a1.axhline(res["full_ndcg@10"], color="black", ls=":", label="rerank all 100")
    a1.set_xscale("log"); a1.set_xlabel("budget B (ms)"); a1.set_ylabel("nDCG@10"); a1.set_title("TREC DL 2020: quality at a budget")
    a1.legend(fontsize=8)
    a2.plot(B, [r["budget_p99_ms"] for r in res["rows"]], "o-", label="budget_ms=B: p99")
    a2.plot(B, [r["topk_p99_ms"] for r in res["rows"]], "s--", label="top-k by count: p99")
    a2.plot(B, B, color="gray", ls=":", label="B")
    a2.set_xscale("log"); a2.set_yscale("log"); a2.set_xlabel("budget B (ms)"); a2.set_ylabel("latency (ms)"); a2.set_title("p99 latency vs B")
    a2.legend(fontsize=8)
    fig.tight_layout()
    paths["plot"] = out / "quality_at_budget.png"
    fig.savefig(paths["plot"], dpi=110)
    plt.close(fig)
    return paths
