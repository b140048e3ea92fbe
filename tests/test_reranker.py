"""The Reranker API on the tiny BERT: lean imports, score/rerank/score_pairs/rerank_many, bad input
(typed errors naming the offending item) and one Reranker shared between threads.

Split from the former tests/test_runtime.py. Uses the ``tiny_bert_folder`` fixture (the committed tiny
BERT, 1 label, sigmoid, every variant); tests that damage a folder work on a copy in ``tmp_path``.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import QUERY, DOCS, texts

from crossrank import CrossrankError, InputTypeError, InvalidInputError, Reranker, Result


@pytest.fixture(scope="module")
def rr(tiny_bert_folder: Path) -> Reranker:
    return Reranker.load(tiny_bert_folder, provider="cpu")


@pytest.fixture(scope="module")
def rr32(tiny_bert_folder: Path) -> Reranker:
    return Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu")


# -- lean import ---------------------------------------------------------------------------------
def test_runtime_never_imports_the_heavy_stack(tiny_bert_folder: Path) -> None:
    code = (
        "import sys, crossrank\n"
        f"rr = crossrank.Reranker.load({str(tiny_bert_folder)!r})\n"
        f"rr.rerank('q', ['a document', 'another one'], top_k=1)\n"
        "import crossrank.rerank_cli, crossrank.tokenize, crossrank.batching, crossrank.session\n"
        "heavy = {'torch', 'transformers', 'optimum', 'sentence_transformers'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('crossrank.export'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_crossrank_does_not_load_onnxruntime_or_tokenizers() -> None:
    # `crossrank export/info` and CLI registration must not pay for onnxruntime.
    code = "import sys, crossrank, crossrank.rerank_cli; print(sorted({'onnxruntime', 'tokenizers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- basic API -------------------------------------------------------------------------------------
def test_auto_picks_int8_on_cpu_and_reports_granted_providers(rr: Reranker) -> None:
    assert rr.variant == "int8"
    assert rr.provider == "cpu"
    assert rr.providers == ["CPUExecutionProvider"]
    assert rr.max_length == rr.manifest.max_length
    assert "int8" in repr(rr)


def test_score_rerank_and_pairs_agree(rr32: Reranker) -> None:
    scores = rr32.score(QUERY, DOCS)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert np.all((scores > 0) & (scores < 1))  # sigmoid activation from the manifest
    pairs = rr32.score_pairs([(QUERY, d) for d in DOCS])
    np.testing.assert_allclose(pairs, scores, atol=1e-6)
    ranked = rr32.rerank(QUERY, DOCS)
    assert [r.index for r in ranked] == list(np.lexsort((np.arange(3), -scores)))
    assert all(isinstance(r, Result) and r.document == DOCS[r.index] for r in ranked)
    assert [r.score for r in ranked] == sorted((float(s) for s in scores), reverse=True)
    assert len(rr32.rerank(QUERY, DOCS, top_k=2)) == 2
    assert len(rr32.rerank(QUERY, DOCS, top_k=10)) == 3


def test_raw_returns_the_positive_logit(rr32: Reranker) -> None:
    raw = rr32.score(QUERY, DOCS, raw=True)
    act = rr32.score(QUERY, DOCS)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw.astype(np.float64))), act, atol=1e-6)
    ranked = rr32.rerank(QUERY, DOCS, raw=True)
    assert [r.score for r in ranked] == sorted((float(s) for s in raw), reverse=True)


def test_rerank_many_equals_one_by_one(rr32: Reranker) -> None:
    reqs = [(QUERY, DOCS), ("billing portal", texts(7, 1)), ("nothing", [])]
    many = rr32.rerank_many(reqs, top_k=5)
    assert [len(x) for x in many] == [3, 5, 0]
    for (q, docs), got in zip(reqs, many):
        want = rr32.rerank(q, docs, top_k=5)
        assert [r.index for r in got] == [r.index for r in want]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-5)


def test_inputs_are_never_mutated_or_reordered(rr32: Reranker) -> None:
    docs_list = texts(20, 2)
    docs_tuple = tuple(docs_list)
    before = list(docs_list)
    ids = [id(d) for d in docs_list]
    pairs = [(QUERY, d) for d in docs_list]
    pairs_before = list(pairs)
    for docs in (docs_list, docs_tuple):
        rr32.rerank(QUERY, docs, top_k=3)
        rr32.score(QUERY, docs)
    rr32.score_pairs(pairs)
    rr32.rerank_many([(QUERY, docs_list)])
    assert docs_list == before and [id(d) for d in docs_list] == ids
    assert docs_tuple == tuple(before)
    assert pairs == pairs_before


def test_any_iterable_of_documents_is_accepted(rr32: Reranker) -> None:
    want = rr32.score(QUERY, DOCS)
    np.testing.assert_allclose(rr32.score(QUERY, (d for d in DOCS)), want, atol=1e-6)
    np.testing.assert_allclose(rr32.score(QUERY, np.array(DOCS)), want, atol=1e-6)


def test_ties_are_broken_by_input_index(tiny_bert_folder: Path) -> None:
    # Each pair alone (batch of one): identical texts get bit-identical scores.
    rr = Reranker.load(tiny_bert_folder, variant="fp32", max_batch_size=1)
    docs = ["dup text", "other one here", "dup text", "x", "dup text"]
    ranked = rr.rerank("q", docs)
    dups = [r.index for r in ranked if r.document == "dup text"]
    assert dups == [0, 2, 4]
    positions = [i for i, r in enumerate(ranked) if r.document == "dup text"]
    assert positions == list(range(positions[0], positions[0] + 3))  # adjacent: equal scores
    assert len({r.score for r in ranked if r.document == "dup text"}) == 1


# -- bad input -----------------------------------------------------------------------------------
def test_no_documents_gives_an_empty_result(rr: Reranker) -> None:
    assert rr.rerank(QUERY, []) == []
    assert rr.rerank(QUERY, (), top_k=3) == []
    s = rr.score(QUERY, [])
    assert s.shape == (0,) and s.dtype == np.float32
    assert rr.score_pairs([]).shape == (0,)
    assert rr.rerank_many([]) == []


def test_empty_string_is_a_valid_document(rr: Reranker) -> None:
    s = rr.score(QUERY, ["", DOCS[0]])
    assert np.all(np.isfinite(s))
    assert rr.rerank("", [""])[0].index == 0


@pytest.mark.parametrize("bad", [None, 3, b"bytes", 1.5, ["list"]])
def test_non_string_document_is_a_type_error_naming_its_index(rr: Reranker, bad) -> None:
    docs = [DOCS[0], DOCS[1], bad]
    for call in (lambda: rr.rerank(QUERY, docs), lambda: rr.score(QUERY, docs)):
        with pytest.raises(TypeError, match=r"documents\[2\]") as ei:
            call()
        assert isinstance(ei.value, InputTypeError) and isinstance(ei.value, CrossrankError)
    with pytest.raises(TypeError, match=r"pairs\[1\] document"):
        rr.score_pairs([(QUERY, "ok"), (QUERY, bad)])
    with pytest.raises(TypeError, match=r"requests\[1\] documents\[2\]"):
        rr.rerank_many([(QUERY, DOCS), (QUERY, docs)])


@pytest.mark.parametrize("bad", [None, 3, b"q", ["q"]])
def test_query_must_be_a_string(rr: Reranker, bad) -> None:
    with pytest.raises(TypeError, match="query"):
        rr.rerank(bad, DOCS)
    with pytest.raises(TypeError, match="query"):
        rr.score(bad, DOCS)
    with pytest.raises(TypeError, match=r"pairs\[0\] query"):
        rr.score_pairs([(bad, "d")])


def test_documents_must_be_a_collection_not_a_string(rr: Reranker) -> None:
    with pytest.raises(TypeError, match="documents must be a list of str"):
        rr.score(QUERY, "a single string")
    with pytest.raises(TypeError, match="documents must be a list of str"):
        rr.rerank(QUERY, 42)
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(query, document\) pair"):
        rr.score_pairs([("only one",)])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, False, 2.0])
def test_top_k_must_be_a_positive_int(rr: Reranker, bad) -> None:
    with pytest.raises(ValueError, match="top_k") as ei:
        rr.rerank(QUERY, DOCS, top_k=bad)
    assert isinstance(ei.value, InvalidInputError)
    with pytest.raises(ValueError, match="top_k"):
        rr.rerank_many([(QUERY, DOCS)], top_k=bad)


def test_top_k_accepts_numpy_ints(rr: Reranker) -> None:
    assert len(rr.rerank(QUERY, DOCS, top_k=np.int64(2))) == 2


def test_raw_must_be_a_bool(rr: Reranker) -> None:
    with pytest.raises(InvalidInputError, match="raw"):
        rr.score(QUERY, DOCS, raw="yes")


def test_awkward_text_scores_without_error(rr: Reranker) -> None:
    docs = [
        "nul\x00byte and \x01\x02\x1f control \x7f chars",
        "emoji 😀🚀👩‍👩‍👧 and flags 🇫🇷",
        "mixed scripts: Добрый день, 你好世界, مرحبا بالعالم, שלום, नमस्ते, こんにちは",
        "\u200b\u200d zero width \ufeff bom \ud7ff",
        "   \t\n\r  ",
        "\x00" * 50,
        "a" * 5000,
    ]
    scores = rr.score("query with \x00 nul and 😀", docs)
    assert scores.shape == (len(docs),) and np.all(np.isfinite(scores))
    lone_surrogate = "broken \udc80 surrogate"
    assert np.isfinite(rr.score(QUERY, [lone_surrogate])).all()


# -- concurrency ---------------------------------------------------------------------------------
def test_one_reranker_shared_by_eight_threads_gives_the_serial_results(tiny_bert_folder: Path) -> None:
    rr = Reranker.load(tiny_bert_folder, threads=2)
    requests = [(f"query {i} export", texts(int(3 + 4 * i), 10 + i)) for i in range(16)]
    serial = [rr.rerank(q, d) for q, d in requests]
    serial_scores = [rr.score(q, d, raw=True) for q, d in requests]
    got: dict[int, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for rep in range(2):
                for j in range(t, len(requests), 8) if rep % 2 == 0 else range(len(requests) - 1, -1, -1):
                    q, d = requests[j]
                    res = rr.rerank(q, d)
                    s = rr.score(q, d, raw=True)
                    got.setdefault(j, []).append((res, s))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert sorted(got) == list(range(len(requests)))
    for j, outs in got.items():
        for res, s in outs:
            assert res == serial[j]
            assert np.array_equal(s, serial_scores[j])
