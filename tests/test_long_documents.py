"""Issue 10, long documents: token windows, aggregation, the deciding passage, option errors.

Window planning is checked as a pure function and on real tokenizers; scores on the tiny exported
BERT (fp32 and static int8, both batch-invariant, so a fitting document's score is bit-identical
to truncate mode); the planted-answer passage on the real MiniLM-L6 cross-encoder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossrank import InputTypeError, InvalidInputError, Reranker
from crossrank.chunking import (
    AGGREGATES,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_MAX_CHUNKS_PER_DOC,
    LongDocOptions,
    aggregate,
    plan_units,
    plan_windows,
    window_size,
)

QUERY = "how do i export my data"
SHORT = [
    "you can export data as csv or json from the settings page",
    "billing invoices can be downloaded from the account page",
    "the river in the city was high after the rain",
]


def _long(n_words: int, seed: int = 0) -> str:
    words = "the river city weather rain snow summer winter train station hotel room music history war king queen".split()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_words):
        out.append(words[int(rng.integers(len(words)))])
        if i % 11 == 10:
            out[-1] += "."
    return " ".join(out)


@pytest.fixture(scope="module")
def rr32(tiny_bert_folder: Path) -> Reranker:
    return Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu", max_length=64)


@pytest.fixture(scope="module")
def rr8(tiny_bert_folder: Path) -> Reranker:
    return Reranker.load(tiny_bert_folder, variant="int8", provider="cpu", max_length=64)


# -- window planning ------------------------------------------------------------------------------
def _check_cover(wins: list[tuple[int, int]], n: int, size: int, overlap: int) -> None:
    assert wins[0][0] == 0 and wins[-1][1] == n
    for s, e in wins:
        assert 0 <= s < e <= n and e - s <= size
    for (s0, e0), (s1, e1) in zip(wins, wins[1:]):
        assert s0 < s1, "windows advance"
        assert e0 - s1 >= min(overlap, size // 2), "consecutive windows share at least the stated overlap"


@pytest.mark.parametrize("n,size,overlap", [(1, 5, 2), (10, 10, 3), (11, 10, 3), (100, 17, 5), (1000, 60, 16), (333, 40, 0), (50, 8, 100)])
def test_windows_cover_the_whole_document_with_the_stated_overlap(n: int, size: int, overlap: int) -> None:
    one_token_words = list(range(n))
    _check_cover(plan_windows(one_token_words, size, overlap), n, size, overlap)
    # Words of 1-4 tokens: windows still cover everything, and end/start on word boundaries.
    rng = np.random.default_rng(n + size)
    words: list[int] = []
    w = 0
    while len(words) < n:
        words.extend([w] * int(rng.integers(1, 5)))
        w += 1
    words = words[:n]
    wins = plan_windows(words, size, overlap)
    _check_cover(wins, n, size, overlap)
    for s, e in wins:
        if size >= 16 and 3 * min(overlap, size // 2) <= size:  # room to move back over a word of <= 4 tokens
            assert s == 0 or words[s] != words[s - 1]
            assert e == n or words[e] != words[e - 1]


def test_a_word_longer_than_half_a_window_is_cut_between_tokens() -> None:
    words = [0] * 50 + [1] * 3
    _check_cover(plan_windows(words, 10, 2), 53, 10, 2)


def test_max_windows_keeps_the_first_windows() -> None:
    wins = plan_windows(list(range(100)), 10, 2, max_windows=3)
    assert wins == plan_windows(list(range(100)), 10, 2)[:3]


def test_real_tokenizer_windows_fit_and_cover_the_text(rr32: Reranker) -> None:
    enc = rr32._encoder
    doc = _long(400)
    opts = LongDocOptions(mode="chunk", max_chunks_per_doc=100, chunk_overlap=8)
    units, unread = plan_units(enc, QUERY, [doc], opts)
    assert len(units) > 3 and not unread[0]
    size = window_size(enc, enc._fit_query(QUERY).tokens, None)
    spans = [u.span for u in units]
    assert spans[0][0] == 0 and spans[-1][1] == len(doc)
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        assert a0 < a1 < b0, "consecutive windows overlap on characters too"
    tok = enc._tok
    for u in units:
        assert u.text == doc[u.span[0] : u.span[1]]
        assert len(tok.encode(u.text, add_special_tokens=False).ids) <= size
        # word boundaries: a window neither starts nor ends inside a word
        a, b = u.span
        assert a == 0 or not doc[a - 1].isalnum() or not doc[a].isalnum()
        assert b == len(doc) or not doc[b].isalnum() or not doc[b - 1].isalnum()
    s, info = rr32.score(QUERY, [doc], long_documents="chunk", max_chunks_per_doc=100, chunk_overlap=8, return_info=True)
    assert info.windows[0] == len(units) and not info.doc_cut[0]


# -- a document that fits is one window -----------------------------------------------------------
@pytest.mark.parametrize("which", ["rr32", "rr8"])
def test_a_fitting_document_is_one_window_with_todays_score(which: str, request) -> None:
    rr: Reranker = request.getfixturevalue(which)
    docs = SHORT + [_long(300, 1)] + SHORT[::-1] + [_long(120, 2)]
    today, today_info = rr.score(QUERY, docs, return_info=True)
    for agg in AGGREGATES:
        got, info = rr.score(QUERY, docs, long_documents="chunk", aggregate=agg, return_info=True)
        for i in (0, 1, 2, 4, 5, 6):
            assert got[i] == today[i], (agg, i)  # bit-identical
            assert info.windows[i] == 1 and info.passages[i] == (0, len(docs[i]))
            assert not info.truncated[i]
        assert info.windows[3] > 1 and info.windows[7] > 1
    assert today_info.truncated[3] and today_info.truncated[7]
    results = rr.rerank(QUERY, SHORT, long_documents="chunk")
    assert [(r.index, r.score) for r in results] == [(r.index, r.score) for r in rr.rerank(QUERY, SHORT)]


def test_truncate_mode_is_todays_path(rr32: Reranker) -> None:
    docs = SHORT + [_long(300, 3)]
    a, ia = rr32.score(QUERY, docs, return_info=True)
    b, ib = rr32.score(QUERY, docs, long_documents="truncate", return_info=True)
    assert np.array_equal(a, b) and ia.batch_shapes == ib.batch_shapes
    assert all(p is None for p in ib.passages) and list(ib.windows) == [1] * len(docs)
    assert [r.passage for r in rr32.rerank(QUERY, docs)] == [None] * len(docs)


# -- aggregation ----------------------------------------------------------------------------------
def test_aggregation_values_are_exact_on_constructed_scores() -> None:
    s = np.array([0.25, 0.75, 0.5, 0.75], dtype=np.float32)
    assert aggregate(s, "max") == (0.75, 1)  # first of the tied best windows decides
    assert aggregate(s, "first") == (0.25, 0)
    assert aggregate(s, "mean") == (0.5625, 1)
    assert aggregate(s, "top2_mean") == (0.75, 1)
    assert aggregate(np.array([0.125, 0.5, 0.25]), "top2_mean") == (0.375, 1)
    one = np.array([0.3], dtype=np.float32)
    for how in AGGREGATES:
        value, k = aggregate(one, how)
        assert np.float32(value) == one[0] and k == 0
    with pytest.raises(InvalidInputError):
        aggregate(np.array([]), "max")


@pytest.mark.parametrize("agg", AGGREGATES)
def test_document_score_aggregates_its_windows_scored_as_pairs(rr32: Reranker, agg: str) -> None:
    doc = _long(250, 4)
    units, _ = plan_units(rr32._encoder, QUERY, [doc], LongDocOptions(mode="chunk", aggregate=agg))
    windows = rr32.score_pairs([(QUERY, u.text) for u in units])
    ws = windows.astype(np.float64)
    want = {"max": ws.max(), "first": ws[0], "mean": ws.mean(), "top2_mean": np.sort(ws)[-2:].mean()}[agg]
    [r] = rr32.rerank(QUERY, [doc], long_documents="chunk", aggregate=agg)
    assert r.score == float(np.float32(want))
    deciding = 0 if agg == "first" else int(np.argmax(windows))
    assert r.passage == units[deciding].span and r.windows == len(units)
    raw = rr32.score(QUERY, [doc], long_documents="chunk", aggregate=agg, raw=True)
    wr = rr32.score_pairs([(QUERY, u.text) for u in units], raw=True).astype(np.float64)
    assert raw[0] == np.float32({"max": wr.max(), "first": wr[0], "mean": wr.mean(), "top2_mean": np.sort(wr)[-2:].mean()}[agg])


# -- caps -------------------------------------------------------------------------------------------
def test_max_chunks_per_doc_keeps_the_first_windows_and_flags_the_rest(rr32: Reranker) -> None:
    doc = _long(600, 5)
    [r] = rr32.rerank(QUERY, [doc], long_documents="chunk", max_chunks_per_doc=2, aggregate="first")
    assert r.windows == 2 and r.doc_cut and r.truncated
    full = rr32.rerank(QUERY, [doc], long_documents="chunk", max_chunks_per_doc=1000)[0]
    assert not full.doc_cut and full.windows > 2
    assert rr32.rerank(QUERY, [doc], long_documents="chunk")[0].windows <= DEFAULT_MAX_CHUNKS_PER_DOC


def test_a_huge_document_reads_only_what_its_windows_reach(rr32: Reranker) -> None:
    doc = _long(200_000, 6)  # ~1.2 MB
    units, unread = plan_units(rr32._encoder, QUERY, [doc], LongDocOptions(mode="chunk", max_chunks_per_doc=3))
    assert len(units) == 3 and unread[0]
    [r] = rr32.rerank(QUERY, [doc], long_documents="chunk", max_chunks_per_doc=3)
    assert r.windows == 3 and r.doc_cut


def test_max_tokens_per_doc_cuts_earlier_and_sizes_windows(rr32: Reranker) -> None:
    docs = SHORT + [_long(200, 7)]
    s, info = rr32.score(QUERY, docs, max_tokens_per_doc=4, return_info=True)
    enc = rr32._encoder.encode([(QUERY, d) for d in docs], max_doc_tokens=4)
    assert info.doc_cut.all() and np.array_equal(info.doc_cut, enc.doc_cut)
    assert max(shape[1] for shape in info.batch_shapes) == int(enc.lengths.max())
    units, _ = plan_units(rr32._encoder, QUERY, docs, LongDocOptions(mode="chunk", max_tokens_per_doc=10, max_chunks_per_doc=100))
    tok = rr32._encoder._tok
    assert all(len(tok.encode(u.text, add_special_tokens=False).ids) <= 10 for u in units)
    assert len(units) > len(docs)
    _, ci = rr32.score(QUERY, docs, long_documents="chunk", max_tokens_per_doc=10, max_chunks_per_doc=100, return_info=True)
    assert not ci.doc_cut.any()


def test_default_overlap_is_stated() -> None:
    assert DEFAULT_CHUNK_OVERLAP == 32 and DEFAULT_MAX_CHUNKS_PER_DOC == 8
    assert LongDocOptions.from_call(long_documents="chunk") == LongDocOptions(mode="chunk")


# -- errors -------------------------------------------------------------------------------------------
BAD = [
    ("long_documents", "split"), ("long_documents", 3), ("long_documents", None),
    ("max_chunks_per_doc", 0), ("max_chunks_per_doc", -1), ("max_chunks_per_doc", 1.5), ("max_chunks_per_doc", True), ("max_chunks_per_doc", "8"),
    ("chunk_overlap", -1), ("chunk_overlap", 2.0), ("chunk_overlap", False), ("chunk_overlap", "32"),
    ("aggregate", "median"), ("aggregate", 1), ("aggregate", ""),
    ("max_tokens_per_doc", 0), ("max_tokens_per_doc", -3), ("max_tokens_per_doc", True), ("max_tokens_per_doc", 2.5), ("max_tokens_per_doc", "64"),
    ("budget_ms", 0), ("budget_ms", -5), ("budget_ms", float("nan")), ("budget_ms", float("inf")), ("budget_ms", True), ("budget_ms", "80"),
]


@pytest.mark.parametrize("method", ["rerank", "score"])
@pytest.mark.parametrize("name,value", BAD)
def test_every_new_option_rejects_bad_values_with_a_typed_error(rr32: Reranker, method: str, name: str, value) -> None:
    extra = {} if name in ("long_documents", "max_tokens_per_doc", "budget_ms") else {"long_documents": "chunk"}
    with pytest.raises(InvalidInputError, match=name) as err:
        getattr(rr32, method)(QUERY, SHORT, **extra, **{name: value})
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("name,value", [("max_chunks_per_doc", 4), ("chunk_overlap", 0), ("aggregate", "max")])
def test_chunk_options_are_refused_in_truncate_mode(rr32: Reranker, name: str, value) -> None:
    with pytest.raises(InvalidInputError, match=name):
        rr32.rerank(QUERY, SHORT, **{name: value})


def test_options_are_keyword_only_and_documents_still_type_checked(rr32: Reranker) -> None:
    with pytest.raises(TypeError):
        rr32.rerank(QUERY, SHORT, None, False, "chunk")  # type: ignore[misc]
    with pytest.raises(InputTypeError, match=r"documents\[1\]"):
        rr32.rerank(QUERY, ["ok", 3], long_documents="chunk")  # type: ignore[list-item]
    assert rr32.rerank(QUERY, SHORT, long_documents=" CHUNK ", aggregate="Top2_Mean")


def test_an_empty_list_and_empty_documents(rr32: Reranker) -> None:
    assert rr32.rerank(QUERY, [], long_documents="chunk") == []
    [r] = rr32.rerank(QUERY, [""], long_documents="chunk")
    assert r.windows == 1 and r.passage == (0, 0)


# -- the deciding passage, real model -------------------------------------------------------------------
ANSWER = "To export your data, open Settings, choose Export and download the CSV file."


def test_the_best_passage_holds_the_planted_answer(real_model_folder: Path, data_file) -> None:
    """A real answer planted at several depths of ~2,000 tokens of real unrelated abstracts
    (SciFact): the deciding window's text contains it, and chunking outranks the truncated view."""
    from crossrank.bench.data import load_dataset

    ds = load_dataset("scifact", data_file("scifact-test-bm25top20.jsonl.gz").parent)
    filler = " ".join(d for q in ds.queries[:3] for d in q.docs[:3])
    rr = Reranker.load(real_model_folder, max_length=128)
    query = "How do I export my data as a CSV file?"
    for frac in (0.1, 0.5, 0.9):
        cut = filler.index(". ", int(len(filler) * frac)) + 2
        doc = filler[:cut] + ANSWER + " " + filler[cut:]
        distractor = filler[: len(doc)]
        [best, other] = rr.rerank(query, [distractor, doc], long_documents="chunk", max_chunks_per_doc=64)
        assert best.index == 1 and other.index == 0
        a, b = best.passage
        assert ANSWER in doc[a:b], (frac, doc[a:b])
        assert best.windows > 10 and not best.doc_cut


def test_rerank_cli_prints_the_passage_in_chunk_mode(tiny_bert_folder: Path, monkeypatch, capsys) -> None:
    import io
    import json
    import sys

    from crossrank.cli import main

    doc = _long(300, 8)
    stdin = io.TextIOWrapper(io.BytesIO((json.dumps({"text": doc}) + "\n" + json.dumps({"text": SHORT[0]}) + "\n").encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["rerank", str(tiny_bert_folder), "-q", QUERY, "--max-length", "64", "--long-documents", "chunk", "--aggregate", "first"]) == 0
    rows = {r["index"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows[1]["passage"] == [0, len(SHORT[0])] and rows[1]["windows"] == 1
    a, b = rows[0]["passage"]
    assert a == 0 and 0 < b < len(doc) and rows[0]["windows"] > 1
