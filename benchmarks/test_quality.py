"""Quality retention in the suite: crossrank int8 nDCG@10 against crossrank fp32 on TREC DL 2020 and
SciFact (target: >= 99.5%), timing how long scoring the set takes. Smoke mode scores the first 6
queries only, where one near-tie swap moves the mean by several percent (measured, static int8:
TREC DL 101.0%, SciFact 93.5% on those 6; 99.96% / 100.3% on the whole sets), so it requires only
>= 90%: enough to catch a broken quantization, not to prove the target. The target itself is
asserted on whole sets by the full suite and on all TREC DL queries by tests/test_runtime_real.py."""
from __future__ import annotations

import pytest

from crossrank.bench.data import load_dataset
from crossrank.bench.metrics import evaluate
from crossrank.bench.suite import suite_settings

SETTINGS = suite_settings()


def _score_all(rr, ds):
    return [rr.score(q.query, q.docs) for q in ds.queries]


@pytest.mark.parametrize("dataset", ("trec-dl-2020", "scifact"))
def test_int8_keeps_fp32_ndcg(benchmark, bench_model, bench_settings, dataset):
    from crossrank import Reranker

    ds = load_dataset(dataset).head(bench_settings.quality_queries)
    fp32 = evaluate(ds, _score_all(Reranker.load(bench_model, variant="fp32", provider="cpu"), ds))
    int8_rr = Reranker.load(bench_model, variant="int8", provider="cpu")
    benchmark.group = "quality: score a relevance set"
    scores = benchmark.pedantic(_score_all, args=(int8_rr, ds), rounds=1, iterations=1)
    int8 = evaluate(ds, scores)
    ratio = int8["ndcg@10"] / fp32["ndcg@10"]
    benchmark.extra_info.update(dataset=dataset, queries=len(ds.queries), ndcg_fp32=fp32["ndcg@10"],
                                ndcg_int8=int8["ndcg@10"], retention=ratio, mrr_int8=int8["mrr@10"])
    floor = 0.90 if SETTINGS.smoke else 0.995
    assert ratio >= floor, f"int8 keeps {ratio:.2%} of fp32 nDCG@10 on {dataset} ({int8} vs {fp32})"
