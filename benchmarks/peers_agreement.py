"""Pair-level agreement of the fastembed, FlashRank and OpenVINO peers with crossrank fp32 (docs/peers-field.md).

    python benchmarks/peers_agreement.py MODEL_DIR HF_MODEL --data DATA_DIR --cache-dir CACHE [--requests 6 --candidates 50]

Over real TREC DL 2020 requests (BM25 candidates), per request: Spearman correlation of the peer's
scores with crossrank fp32's, overlap of the two top-10 sets, and the largest |score difference|
(raw logits for fastembed, which applies no activation; sigmoid scores for the others, as crossrank's
manifest activation). The peers are prepared in CACHE as ``crossrank bench`` prepares them.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from crossrank import Reranker
from crossrank.bench.data import latency_workload, load_dataset
from crossrank.bench.onnx_peers import prepare_onnx_peers
from crossrank.bench.openvino_peers import prepare_openvino_peers
from crossrank.bench.peers import load_peer, peer_unavailable, weights_key


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(-x, kind="stable"), kind="stable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("hf_model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--candidates", type=int, default=50)
    args = ap.parse_args()
    rr = Reranker.load(args.model_dir, variant="fp32")
    prepared = prepare_onnx_peers(args.model_dir, cache_dir=args.cache_dir)
    names = ["fastembed", "flashrank"]
    if peer_unavailable("st-openvino-int8") is None:
        prepared.update(prepare_openvino_peers(args.hf_model, key=weights_key(args.hf_model), max_length=rr.max_length,
                                               cache_dir=args.cache_dir))
        names += ["st-openvino", "st-openvino-int8"]
    reqs = latency_workload(load_dataset("trec-dl-2020", args.data), args.candidates, args.requests)
    out = {}
    for name in names:
        if peer_unavailable(name):
            continue
        peer = load_peer(name, max_length=rr.max_length, prepared=prepared)
        sp, top10, dmax = [], [], []
        for q, docs in reqs:
            ours = np.asarray(rr.score(q, docs, raw=name == "fastembed"), dtype=np.float64)
            theirs = np.asarray(peer.score(q, docs), dtype=np.float64)
            sp.append(np.corrcoef(_ranks(ours), _ranks(theirs))[0, 1])
            top10.append(len(set(np.argsort(-ours)[:10]) & set(np.argsort(-theirs)[:10])) / 10)
            dmax.append(float(np.abs(ours - theirs).max()))
        out[name] = {"spearman_mean": round(float(np.mean(sp)), 4), "spearman_min": round(float(np.min(sp)), 4),
                     "top10_overlap_mean": round(float(np.mean(top10)), 3), "max_abs_diff": max(dmax)}
        print(name, json.dumps(out[name]), flush=True)


if __name__ == "__main__":
    main()
