"""The sentence-transformers peers on the same requests (pytest-benchmark), grouped with crossrank's
``test_rerank`` by candidate count: ``CrossEncoder.rank`` with PyTorch fp32, the ONNX backend fp32,
and the ONNX backend dynamically quantized to int8, all with crossrank's max_length."""
from __future__ import annotations

import pytest

from crossrank.bench.latency import cycling
from crossrank.bench.suite import suite_settings

SETTINGS = suite_settings()

PEERS = ("st-torch", "st-onnx", "st-onnx-int8")


@pytest.fixture(scope="module")
def peers(peer_models, hf_model, max_length):
    from crossrank.bench.peers import load_peer

    return {name: load_peer(name, max_length=max_length, prepared=peer_models, hf_model=hf_model) for name in PEERS}


@pytest.mark.parametrize("count", SETTINGS.peer_counts)
@pytest.mark.parametrize("peer", PEERS)
def test_peer_rerank(benchmark, peers, requests_for, bench_settings, peer, count):
    p = peers[peer]
    rounds = bench_settings.rounds_for(count, slow=True)
    reqs = requests_for(count, rounds + bench_settings.warmup)
    benchmark.group = f"rerank {count:>3} candidates"
    benchmark.extra_info.update(peer=peer, count=count, max_length=p.max_length)
    ranked = benchmark.pedantic(p.rerank, setup=cycling(reqs), rounds=rounds,
                                warmup_rounds=bench_settings.warmup, iterations=1)
    assert len(ranked) == count
