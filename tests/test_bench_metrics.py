"""nDCG@10 / MRR@10 as ../shared/data/README.md defines them, and the relevance-set reader."""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from crossrank.bench.data import DATASETS, latency_workload, load_dataset
from crossrank.bench.metrics import evaluate, first_stage_scores, mrr_at_10, ndcg_at_10, rank_order
from crossrank.errors import BenchmarkError

# The first-stage figures published with the data (README.md): the metric must reproduce them.
PUBLISHED_FIRST_STAGE = {"trec-dl-2020": 0.4796, "scifact": 0.6627, "wikiqa": 0.7123}


@pytest.mark.parametrize("name", sorted(PUBLISHED_FIRST_STAGE))
def test_first_stage_order_reproduces_published_ndcg(name, shared_dir):
    ds = load_dataset(name, shared_dir / "data")
    got = evaluate(ds, [first_stage_scores(len(q.docs)) for q in ds.queries])
    assert round(got["ndcg@10"], 4) == PUBLISHED_FIRST_STAGE[name]
    assert got["queries"] == len(ds.queries)


def test_dataset_shapes(shared_dir):
    trec = load_dataset("trec-dl-2020", shared_dir / "data")
    assert len(trec.queries) == 54 and trec.num_pairs == 5400 and trec.info.mrr_threshold == 2
    assert all(q.ideal_top10 is not None for q in trec.queries)
    wiki = load_dataset("wikiqa", shared_dir / "data")
    assert len(wiki.queries) == 237 and wiki.num_pairs == 2341 and wiki.queries[0].ideal_top10 is None
    sci = load_dataset("scifact", shared_dir / "data")
    assert len(sci.queries) == 300 and sci.num_pairs == 6000


def test_ndcg_by_hand():
    # ranked labels 3,0,2 -> DCG = 3/log2(2) + 0 + 2/log2(4) = 4; ideal from ideal_top10 [3,3,2].
    scores, labels = [0.9, 0.5, 0.1], [3, 0, 2]
    ideal = [3, 3, 2]
    idcg = 3 + 3 / math.log2(3) + 2 / 2
    assert ndcg_at_10(scores, labels, ideal) == pytest.approx(4 / idcg)
    # without ideal_top10, the candidates' own labels sorted: 3,2,0
    assert ndcg_at_10(scores, labels) == pytest.approx(4 / (3 + 2 / math.log2(3)))
    # a perfect order scores 1, nothing relevant scores 0
    assert ndcg_at_10([3, 2, 1], [2, 1, 0]) == pytest.approx(1.0)
    assert ndcg_at_10([1, 2, 3], [0, 0, 0]) == 0.0


def test_ndcg_counts_only_top_10():
    labels = [0] * 10 + [1]
    assert ndcg_at_10(first_stage_scores(11), labels) == 0.0
    assert ndcg_at_10(np.r_[first_stage_scores(10), 5.0], labels) == pytest.approx(1.0)


def test_ties_are_broken_by_candidate_position():
    assert rank_order([1.0, 2.0, 2.0, 1.0]).tolist() == [1, 2, 0, 3]
    # equal scores: the earlier candidate ranks first, whatever its label
    assert ndcg_at_10([0.5, 0.5], [0, 1]) == pytest.approx((1 / math.log2(3)) / 1.0)
    assert ndcg_at_10([0.5, 0.5], [1, 0]) == pytest.approx(1.0)


def test_mrr_threshold():
    scores = [0.9, 0.8, 0.7]
    assert mrr_at_10(scores, [1, 2, 0], threshold=2) == pytest.approx(0.5)
    assert mrr_at_10(scores, [1, 2, 0], threshold=1) == pytest.approx(1.0)
    assert mrr_at_10(scores, [0, 0, 0], threshold=1) == 0.0
    assert mrr_at_10(first_stage_scores(12), [0] * 11 + [1]) == 0.0


def test_bad_scores_are_errors():
    with pytest.raises(BenchmarkError, match="NaN"):
        ndcg_at_10([0.1, float("nan")], [0, 1])
    with pytest.raises(BenchmarkError, match="2 scores for 3"):
        ndcg_at_10([0.1, 0.2], [0, 1, 0])
    with pytest.raises(BenchmarkError, match="2 scores for 3"):
        mrr_at_10([0.1, 0.2], [0, 1, 0])


def test_evaluate_checks_query_count(shared_dir):
    ds = load_dataset("wikiqa", shared_dir / "data").head(3)
    with pytest.raises(BenchmarkError, match="2 score lists for 3 queries"):
        evaluate(ds, [[0.0], [0.0]])


def test_latency_workload_is_real_and_deterministic(shared_dir):
    ds = load_dataset("scifact", shared_dir / "data")  # 20 candidates per query
    reqs = latency_workload(ds, 50, 3, offset=1)
    assert reqs == latency_workload(ds, 50, 3, offset=1)
    q0, docs0 = reqs[0]
    assert q0 == ds.queries[1].query and len(docs0) == 50
    # its own 20 candidates first, in first-stage order, then the next queries' candidates
    assert docs0[:20] == list(ds.queries[1].docs)
    assert docs0[20:40] == list(ds.queries[2].docs)
    assert docs0[40:] == list(ds.queries[3].docs[:10])
    assert [q for q, _ in reqs] == [ds.queries[i].query for i in (1, 2, 3)]
    small = latency_workload(ds, 5, 1)
    assert small[0][1] == list(ds.queries[0].docs[:5])
    # cycling past the end wraps around to the first query
    assert latency_workload(ds, 1, 2, offset=len(ds.queries) - 1)[1][0] == ds.queries[0].query
    with pytest.raises(BenchmarkError):
        latency_workload(ds, 0, 1)


def test_data_folder_resolution(tmp_path, monkeypatch):
    with pytest.raises(BenchmarkError, match="unknown dataset 'msmarco'"):
        load_dataset("msmarco")
    monkeypatch.setenv("CROSSRANK_DATA", str(tmp_path))
    with pytest.raises(BenchmarkError, match=r"missing.*CROSSRANK_DATA"):
        load_dataset("wikiqa")
    # a set written in the documented format is read from $CROSSRANK_DATA
    row = {"qid": "q1", "query": "what?", "candidates": [{"docid": "a", "text": "x", "label": 1},
                                                        {"docid": "b", "text": "y", "label": 0}]}
    with gzip.open(tmp_path / DATASETS["wikiqa"].file, "wt") as f:
        f.write(json.dumps(row) + "\n")
    ds = load_dataset("wikiqa")
    assert ds.queries[0].docs == ("x", "y") and ds.queries[0].labels == (1, 0)
    (tmp_path / DATASETS["scifact"].file).write_bytes(b"not gzip")
    with pytest.raises(BenchmarkError, match="cannot read relevance data"):
        load_dataset("scifact")
