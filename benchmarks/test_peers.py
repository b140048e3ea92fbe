"""The peers on the same requests (pytest-benchmark), grouped with crossrank's ``test_rerank`` by
candidate count, all with crossrank's max_length: sentence-transformers' ``CrossEncoder.rank`` with
PyTorch fp32, the ONNX backend fp32 and the ONNX backend dynamically quantized to int8; fastembed's
``TextCrossEncoder.rerank`` on the fp32 graph and FlashRank's ``Ranker.rerank`` on its int8 form
(both built from the crossrank folder, :mod:`crossrank.bench.onnx_peers`); sentence-transformers'
OpenVINO backend fp32 and NNCF static int8 (:mod:`crossrank.bench.openvino_peers`). A peer whose extra is not
installed is skipped with the reason and the pip command."""
from __future__ import annotations

import pytest

from crossrank.bench.latency import cycling
from crossrank.bench.suite import suite_settings

SETTINGS = suite_settings()

PEERS = ("st-torch", "st-onnx", "st-onnx-int8", "fastembed", "flashrank", "st-openvino", "st-openvino-int8")


@pytest.fixture(scope="module")
def onnx_peer_models(bench_model):
    """The fastembed / FlashRank folders, built from the bench model's fp32 graph (bench cache)."""
    from crossrank.bench.onnx_peers import prepare_onnx_peers
    from crossrank.bench.peers import default_cache_dir

    return prepare_onnx_peers(bench_model, cache_dir=default_cache_dir())


@pytest.fixture(scope="module")
def openvino_peer_models(hf_model, max_length):
    """The OpenVINO fp32 IR and its NNCF static int8 (bench cache, crossrank.bench.openvino_peers)."""
    from crossrank.bench.openvino_peers import prepare_openvino_peers
    from crossrank.bench.peers import default_cache_dir, weights_key

    return prepare_openvino_peers(hf_model, key=weights_key(hf_model), max_length=max_length,
                                  cache_dir=default_cache_dir())


@pytest.fixture(scope="module")
def peers(request, hf_model, max_length):
    from crossrank.bench.peers import PEERS as SPECS
    from crossrank.bench.peers import load_peer, peer_unavailable

    loaded, skipped = {}, {}
    for name in PEERS:
        why = peer_unavailable(name)
        if why:
            skipped[name] = why
            continue
        if SPECS[name].backend in ("fastembed", "flashrank"):
            prepared = request.getfixturevalue("onnx_peer_models")
        elif SPECS[name].backend == "openvino":
            prepared = request.getfixturevalue("openvino_peer_models")
        elif SPECS[name].backend == "onnx":
            prepared = request.getfixturevalue("peer_models")
        else:
            prepared = None
        loaded[name] = load_peer(name, max_length=max_length, prepared=prepared, hf_model=hf_model)
    return loaded, skipped


@pytest.mark.parametrize("count", SETTINGS.peer_counts)
@pytest.mark.parametrize("peer", PEERS)
def test_peer_rerank(benchmark, peers, requests_for, bench_settings, peer, count):
    loaded, skipped = peers
    if peer in skipped:
        pytest.skip(f"peer {peer}: {skipped[peer]}")
    p = loaded[peer]
    rounds = bench_settings.rounds_for(count, slow=True)
    reqs = requests_for(count, rounds + bench_settings.warmup)
    benchmark.group = f"rerank {count:>3} candidates"
    benchmark.extra_info.update(peer=peer, count=count, max_length=p.max_length)
    ranked = benchmark.pedantic(p.rerank, setup=cycling(reqs), rounds=rounds,
                                warmup_rounds=bench_settings.warmup, iterations=1)
    assert len(ranked) == count
