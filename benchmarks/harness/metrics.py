"""Ranking metrics as ``../shared/data/README.md`` defines them (trec_eval's nDCG@10).

* nDCG@10: gain = label (linear), discount ``log2(rank + 1)`` with ranks from 1, candidates ranked
  by score, highest first, ties broken by candidate position (the earlier candidate first);
  normalised by the DCG of ``ideal_top10`` when the set provides it (the best grades judged over
  the whole collection), else of the candidates' own labels sorted. A query whose ideal DCG is 0
  scores 0.
* MRR@10: 1 / rank of the first candidate in the top 10 whose label is ``>= threshold``
  (TREC DL: 2, WikiQA and SciFact: 1), else 0.

With scores that keep the given order (``first_stage_scores``) these reproduce the first-stage
figures published with the data: TREC DL 2020 0.4796, SciFact 0.6627, WikiQA 0.7123.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from crossrank.errors import BenchmarkError

from .data import Dataset

__all__ = ["rank_order", "dcg", "ndcg_at_10", "mrr_at_10", "first_stage_scores", "evaluate"]

K = 10


def rank_order(scores: Sequence[float]) -> np.ndarray:
    """Candidate indices best first; ties keep candidate order (a stable sort on -score)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise BenchmarkError(f"scores must be one-dimensional, got shape {s.shape}")
    if np.isnan(s).any():
        raise BenchmarkError("scores contain NaN")
    return np.argsort(-s, kind="stable")


def dcg(gains: Sequence[float], k: int = K) -> float:
    return float(sum(g / math.log2(r + 2) for r, g in enumerate(list(gains)[:k])))


def ndcg_at_10(scores: Sequence[float], labels: Sequence[int], ideal: Sequence[int] | None = None) -> float:
    if len(scores) != len(labels):
        raise BenchmarkError(f"{len(scores)} scores for {len(labels)} labelled candidates")
    order = rank_order(scores)
    ranked = [labels[i] for i in order]
    ideal_gains = sorted(ideal if ideal is not None else labels, reverse=True)
    idcg = dcg(ideal_gains)
    return dcg(ranked) / idcg if idcg > 0 else 0.0


def mrr_at_10(scores: Sequence[float], labels: Sequence[int], threshold: int = 1) -> float:
    if len(scores) != len(labels):
        raise BenchmarkError(f"{len(scores)} scores for {len(labels)} labelled candidates")
    for rank, i in enumerate(rank_order(scores)[:K], 1):
        if labels[i] >= threshold:
            return 1.0 / rank
    return 0.0


def first_stage_scores(n: int) -> np.ndarray:
    """Scores that rank ``n`` candidates in their given (first-stage) order."""
    return -np.arange(n, dtype=np.float64)


def evaluate(dataset: Dataset, scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean nDCG@10 and MRR@10 over the dataset's queries, ``scores[i]`` for query ``i``."""
    if len(scores) != len(dataset.queries):
        raise BenchmarkError(f"{len(scores)} score lists for {len(dataset.queries)} queries of {dataset.name}")
    nd, mrr = [], []
    for q, s in zip(dataset.queries, scores):
        nd.append(ndcg_at_10(s, q.labels, q.ideal_top10))
        mrr.append(mrr_at_10(s, q.labels, dataset.info.mrr_threshold))
    return {"ndcg@10": float(np.mean(nd)), "mrr@10": float(np.mean(mrr)), "queries": len(nd)}
