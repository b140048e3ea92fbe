"""Start-up: ``Reranker.load`` of the default variant plus its first ``rerank`` (10 candidates), in
process. The per-process peak RSS and cold-import figures come from ``crossrank bench`` (a fresh
process per system); here the point is a regression signal for load + first call."""
from __future__ import annotations


def test_load_and_first_call(benchmark, bench_model, requests_for, bench_settings):
    from crossrank import Reranker

    query, docs = requests_for(10, 1)[0]

    def load_and_call():
        rr = Reranker.load(bench_model, provider="cpu")
        return rr, rr.rerank(query, docs)

    benchmark.group = "start-up"
    rr, results = benchmark.pedantic(load_and_call, rounds=3 if bench_settings.smoke else 10, iterations=1)
    benchmark.extra_info.update(variant=rr.variant, providers=list(rr.providers))
    assert rr.variant == "int8" and len(results) == 10
