"""crossrank.bench.floor: the profile reads every weight product once, the floor arithmetic, the
kernel rate, and the report section — on real onnxruntime sessions over the committed tiny model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from crossrank.bench.cli import build_config
from crossrank.bench.floor import OpProfile, floor_table, kernel_rate, profile_call
from crossrank.bench.report import markdown
from crossrank.cli import build_parser
from crossrank.errors import BenchmarkError
from crossrank.manifest import load_manifest

pytestmark = pytest.mark.needs_bench

_WEIGHT_OPS = {"MatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "Attention", "QAttention"}
QUERY = "what do cross-encoders score"
DOCS = [
    "A cross-encoder reads the query and the candidate together and returns one relevance logit.",
    "Bananas are rich in potassium.",
    "Rerankers score the candidates a first stage returns, one forward pass per pair, which is why they cost "
    "so much more than the retrieval stage in front of them and why their batching matters.",
    "short",
]


def _graph_weight_macs(path) -> int:
    """K x N summed over every operator of the graph file whose second input is a 2-D initializer."""
    model = onnx.load(str(path), load_external_data=False)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1 and len(dims.get(node.input[1], [])) == 2:
            total += int(np.prod(dims[node.input[1]]))
    return total


@pytest.mark.parametrize("variant", ["int8", "optimized", "fp32"])
def test_profile_counts_every_weight_product_of_the_graph_once(tiny_bert_folder, variant):
    prof = profile_call(tiny_bert_folder, variant, QUERY, DOCS, threads=1)
    manifest = load_manifest(tiny_bert_folder)
    graph = tiny_bert_folder / manifest.variants[variant].file
    assert prof.per_token_macs + prof.per_pair_macs == _graph_weight_macs(graph)
    assert prof.runs >= 1 and prof.candidates == len(DOCS)
    assert prof.executed_weight_macs > 0 and prof.weight_op_ms > 0
    assert sum(prof.op_ms.values()) > 0 and all(ms >= 0 for ms in prof.op_ms.values())


def test_pruned_last_layer_runs_per_pair(tiny_bert_folder):
    """The optimized graph computes its last layer for [CLS] only (manifest: last_layer_pruned):
    the query, output and both feed-forward projections of that layer, the pooler and the
    classifier are per-pair products; the unpruned fp32 graph has only the pooler and classifier."""
    pruned = profile_call(tiny_bert_folder, "optimized", QUERY, DOCS, threads=1)
    plain = profile_call(tiny_bert_folder, "fp32", QUERY, DOCS, threads=1)
    assert load_manifest(tiny_bert_folder).variants["optimized"].settings["last_layer_pruned"] is True
    pair_nodes = sum(k == "pair" for k in pruned.weight_nodes.values())
    assert sum(k == "pair" for k in plain.weight_nodes.values()) == 2  # pooler, classifier
    assert pair_nodes == 6  # + query, attention output, two feed-forward projections of the last layer
    assert pruned.per_pair_macs > plain.per_pair_macs and pruned.per_token_macs < plain.per_token_macs
    # the same weights either way: pruning moves products from per-token to per-pair, never drops one
    k, n = pruned.widest_weight
    assert k > 0 and n > k


def test_floor_table_arithmetic():
    prof = OpProfile(variant="int8", candidates=10, runs=1, wall_ms=1.0, op_ms={"MatMulIntegerToFloat": 1.0},
                     per_token_macs=1_000_000, per_pair_macs=50_000, widest_weight=(384, 1536),
                     executed_weight_macs=1, weight_op_ms=1.0)
    lat = {"10": {"tokens_per_request": 800.0, "p50_ms": 20.0, "mean_ms": 22.0},
           "50": {"tokens_per_request": 4000.0, "p50_ms": 90.0, "mean_ms": 99.0}}
    table = floor_table(lat, prof, rate=1e11)
    floor_10 = (800 * 1_000_000 + 10 * 50_000) / 1e11 * 1e3
    assert table["10"]["floor_ms"] == pytest.approx(floor_10, abs=0.01)
    assert table["10"]["ratio_p50"] == pytest.approx(20.0 / floor_10, rel=1e-2)
    assert table["50"]["ratio_mean"] == pytest.approx(99.0 / ((4000 * 1e6 + 50 * 5e4) / 1e8), rel=1e-2)
    with pytest.raises(BenchmarkError, match="positive"):
        floor_table(lat, prof, rate=0)


def test_kernel_rate_is_measured_and_kind_checked():
    rate = kernel_rate(k=64, n=128, m=256, threads=1, runs=3)
    assert rate > 1e6  # multiply-adds per second; any CPU this runs on does far more than a million
    assert kernel_rate(k=64, n=128, m=256, threads=1, runs=3, kind="fp32") > 1e6
    with pytest.raises(BenchmarkError, match="int8' or 'fp32"):
        kernel_rate(k=8, n=8, kind="int4")


def test_report_shows_the_floor_and_the_op_breakdown(tiny_bert_folder):
    prof = profile_call(tiny_bert_folder, "int8", QUERY, DOCS, threads=1)
    lat = {"4": {"tokens_per_request": 80.0, "p50_ms": 3.0, "mean_ms": 3.5}}
    results = {"floor": {"count": 4, "variants": {"crossrank-int8": {
        "kernel": {"kind": "int8", "m": 2048, "k": 32, "n": 128, "gmacs_per_s": 50.0},
        "profile": prof.as_dict(), "weight_op_efficiency": 0.5,
        "counts": floor_table(lat, prof, rate=5e10)}}},
        "labels": {"crossrank-int8": "crossrank int8"}}
    md = markdown(results)
    assert "### Distance to the compute floor" in md
    assert "| crossrank int8 | 50 | 4 | 80 |" in md
    assert "Where one 4-candidate call's time goes" in md and "| MatMulIntegerToFloat |" in md


def test_cli_floor_switch():
    assert build_config(build_parser().parse_args(["bench", "d"])).floor is True
    assert build_config(build_parser().parse_args(["bench", "d", "--no-floor"])).floor is False
