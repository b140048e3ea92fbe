"""Ranking quality in the same harness: nDCG@10 and MRR@10 per system and relevance set.

Systems: the first-stage order (BM25 / article order, as given), the PyTorch reference
(sentence-transformers ``CrossEncoder``, fp32) and every crossrank variant, each scoring each
query's candidates with one ``score(query, docs)`` call, as a service reranking one query would.

Scoring every set with every system takes long on a small CPU (~14k pairs, SciFact's ~300 tokens
each), so scores are cached (``<cache>/quality``) under a key made of everything that determines
them: for crossrank the variant file's and tokenizer's sha256, the runtime's own source code,
max_length and batching settings, and the onnxruntime/tokenizers versions; for the PyTorch
reference the source weights and the torch/transformers/sentence-transformers versions; plus the
data file. Any change to any of them scores afresh; ``--no-cache`` always does.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from crossrank.errors import BenchmarkError

from .data import Dataset
from .metrics import evaluate, first_stage_scores
from .systems import System

log = logging.getLogger("crossrank.bench.quality")

__all__ = ["score_dataset", "quality_table", "retention", "FIRST_STAGE"]

FIRST_STAGE = "first-stage"


def score_dataset(system: System, dataset: Dataset, *, progress: Callable[[str], None] | None = None) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    n = len(dataset.queries)
    for i, q in enumerate(dataset.queries):
        s = np.asarray(system.score(q.query, q.docs), dtype=np.float64)
        if s.shape != (len(q.docs),):
            raise BenchmarkError(f"{system.name} returned {s.shape} scores for {len(q.docs)} documents")
        out.append(s)
        if progress and (i % 10 == 0 or i + 1 == n):
            progress(f"quality {dataset.name}: {system.name} {i + 1}/{n}")
    return out


def _dataset_digest(dataset: Dataset) -> str:
    h = hashlib.sha256()
    with open(dataset.path, "rb") as f:
        h.update(f.read())
    h.update(str(len(dataset.queries)).encode())
    return h.hexdigest()[:16]


def cached_scores(system: System, dataset: Dataset, *, cache_dir: Path | None,
                  progress: Callable[[str], None] | None = None) -> tuple[list[np.ndarray], bool]:
    """The system's scores for the set, from the cache when the very same computation is stored.

    The key is ``system.info["score_key"]`` (a digest of the model file, tokenizer, runtime code,
    library versions and batching settings: see :mod:`.systems`) plus the data file's digest; a
    system without one is always scored.
    """
    key = system.info.get("score_key")
    if cache_dir is None or not key:
        return score_dataset(system, dataset, progress=progress), False
    path = Path(cache_dir) / "quality" / f"{dataset.name}-{system.name}-{key}-{_dataset_digest(dataset)}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                flat, splits = z["scores"], z["splits"]
            parts = np.split(flat, splits)
            if len(parts) == len(dataset.queries) and all(len(p) == len(q.docs) for p, q in zip(parts, dataset.queries)):
                return list(parts), True
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable cached scores %s: %s", path, err)
    scores = score_dataset(system, dataset, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(tmp, scores=np.concatenate(scores), splits=np.cumsum([len(s) for s in scores])[:-1])
    os.replace(tmp, path)
    return scores, False


def quality_table(
    systems: Sequence[System],
    datasets: Sequence[Dataset],
    *,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict]]:
    """``{dataset: {system: {"ndcg@10", "mrr@10", "queries", "cached", "seconds"}}}``, first stage included."""
    out: dict[str, dict[str, dict]] = {}
    for ds in datasets:
        row = {FIRST_STAGE: evaluate(ds, [first_stage_scores(len(q.docs)) for q in ds.queries])}
        for s in systems:
            t0 = time.perf_counter()
            scores, hit = cached_scores(s, ds, cache_dir=cache_dir, progress=progress)
            row[s.name] = {**evaluate(ds, scores), "cached": hit, "seconds": round(time.perf_counter() - t0, 1)}
        out[ds.name] = row
    return out


def retention(quality: dict[str, dict[str, dict]], system: str, baseline: str, *, metric: str = "ndcg@10") -> dict[str, float]:
    """``{dataset: system's metric / baseline's metric}`` where both were measured."""
    out = {}
    for ds, row in quality.items():
        if system in row and baseline in row and row[baseline][metric] > 0:
            out[ds] = row[system][metric] / row[baseline][metric]
    return out

