"""Batching (crossrank.batching and the Reranker's defaults): token budgets, padding to each batch's
longest pair, batch invariance, dynamic int8's one pair per run.

Split from the former tests/test_runtime.py. Uses the ``tiny_bert_folder`` fixture (the committed tiny
BERT, 1 label, sigmoid, every variant); tests that damage a folder work on a copy in ``tmp_path``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import QUERY, copy_folder, edit_manifest, texts

from crossrank import InvalidInputError, Reranker
from crossrank.batching import plan_batches
from crossrank.reranker import DEFAULT_BATCHING


# -- batching ------------------------------------------------------------------------------------
def test_plan_batches_respects_the_budget_and_pads_to_each_batch_longest() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 513, size=5000)
    for budget, maxb in [(2048, 64), (512, 8), (100_000, 1000), (300, 64)]:
        batches = plan_batches(lengths, batch_tokens=budget, max_batch_size=maxb)
        rows = np.concatenate([b.rows for b in batches])
        assert sorted(rows.tolist()) == list(range(len(lengths)))  # every pair exactly once
        prev = 0
        for b in batches:
            n, width = b.shape
            assert width == lengths[b.rows].max()  # padded only to its own longest pair
            assert n <= maxb
            assert n * width <= budget or n == 1
            assert lengths[b.rows].min() >= prev  # sorted by length across batches
            prev = width
    # ties keep input order
    batches = plan_batches([5, 5, 5, 5], batch_tokens=10, max_batch_size=8)
    assert [b.rows.tolist() for b in batches] == [[0, 1], [2, 3]]
    with pytest.raises(InvalidInputError):
        plan_batches([1], batch_tokens=0, max_batch_size=1)


def test_ten_thousand_candidates_stay_within_the_batch_budget(tiny_bert_folder: Path) -> None:
    rr = Reranker.load(tiny_bert_folder, variant="int8")  # the default budget
    docs = texts(10_000, 5) + ["long " * 2000]  # one pair of max_length tokens
    scores, info = rr.score(QUERY, docs, return_info=True)
    assert scores.shape == (10_001,) and np.isfinite(scores).all()
    assert sum(b for b, _ in info.batch_shapes) == 10_001
    assert max(b * w for b, w in info.batch_shapes) <= max(rr.batch_tokens, rr.max_length)
    assert max(b for b, _ in info.batch_shapes) <= rr.max_batch_size
    assert len(info.batch_shapes) >= 10_001 * 10 // rr.batch_tokens  # really cut into many runs


def test_fp32_scores_are_batch_invariant(tiny_bert_folder: Path) -> None:
    docs = texts(60, 6) + ["", "word " * 600]
    for variant in ("fp32", "optimized"):
        alone = Reranker.load(tiny_bert_folder, variant=variant, max_batch_size=1).score(QUERY, docs, raw=True)
        mixed = Reranker.load(tiny_bert_folder, variant=variant).score(QUERY, docs, raw=True)
        one = Reranker.load(tiny_bert_folder, variant=variant, batch_tokens=10**9, max_batch_size=10**9)
        together, info = one.score(QUERY, docs, raw=True, return_info=True)
        assert len(info.batch_shapes) == 1
        np.testing.assert_allclose(mixed, alone, atol=1e-5, rtol=0, err_msg=variant)
        np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0, err_msg=variant)


def test_dynamic_int8_defaults_to_one_pair_per_run(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
    edit_manifest(folder, lambda d: d["variants"]["int8"].setdefault("settings", {}).update(scheme="dynamic"))
    rr = Reranker.load(folder, variant="int8")
    assert rr.max_batch_size == 1
    docs = texts(12, 7)
    scores, info = rr.score(QUERY, docs, return_info=True)
    assert all(b == 1 for b, _ in info.batch_shapes)
    # exactly invariant: the same pairs in another order and mix give bit-identical scores
    assert np.array_equal(rr.score(QUERY, docs[::-1])[::-1], scores)
    assert np.array_equal(rr.score(QUERY, docs[::3]), scores[::3])
    assert Reranker.load(folder, variant="int8", max_batch_size=16).max_batch_size == 16  # explicit wins
    edit_manifest(folder, lambda d: d["variants"]["int8"]["settings"].update(scheme="static"))
    assert Reranker.load(folder, variant="int8").max_batch_size == DEFAULT_BATCHING["cpu"][1]
