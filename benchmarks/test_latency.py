"""crossrank ``rerank`` latency per variant and candidate count (pytest-benchmark).

Each round reranks a different real TREC DL 2020 query with ``count`` candidates, end to end
(tokenization, batching, ONNX Runtime, ordering). Groups are per candidate count, so
``--benchmark-compare`` lines variants up against each other and against a saved run.
"""
from __future__ import annotations

import pytest

from crossrank.bench.latency import cycling
from crossrank.bench.suite import suite_settings

SETTINGS = suite_settings()

VARIANTS = ("fp32", "optimized", "int8")


@pytest.fixture(scope="module")
def rerankers(bench_model, crossrank_variants):
    from crossrank import Reranker

    return {v: Reranker.load(bench_model, variant=v, provider="cpu") for v in crossrank_variants}


@pytest.mark.parametrize("count", SETTINGS.counts)
@pytest.mark.parametrize("variant", VARIANTS)
def test_rerank(benchmark, rerankers, requests_for, bench_settings, variant, count):
    if variant not in rerankers:
        pytest.fail(f"the model folder has no {variant} variant (export with --int8)")
    rr = rerankers[variant]
    rounds = bench_settings.rounds_for(count)
    reqs = requests_for(count, rounds + bench_settings.warmup)
    benchmark.group = f"rerank {count:>3} candidates"
    benchmark.extra_info.update(variant=variant, count=count, providers=list(rr.providers))
    results = benchmark.pedantic(rr.rerank, setup=cycling(reqs), rounds=rounds,
                                 warmup_rounds=bench_settings.warmup, iterations=1)
    assert len(results) == count
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
