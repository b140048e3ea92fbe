"""Pair encoding (crossrank.tokenize): truncation reported per pair, query cuts, the character
pre-cut, and equality with `tokenizers`' own only_second truncation.

Split from the former tests/test_runtime.py. Uses the ``tiny_bert_folder`` fixture (the committed tiny
BERT, 1 label, sigmoid, every variant); tests that damage a folder work on a copy in ``tmp_path``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from runtime_helpers import QUERY, texts

from crossrank import Reranker


# -- truncation ----------------------------------------------------------------------------------
def test_long_documents_are_truncated_and_reported(tiny_bert_folder: Path, caplog) -> None:
    rr = Reranker.load(tiny_bert_folder, variant="fp32", max_length=32)
    docs = ["short doc", "word " * 200, "another short one", "longer " * 40]
    with caplog.at_level(logging.INFO, logger="crossrank"):
        scores, info = rr.score(QUERY, docs, return_info=True)
    assert info.truncated.tolist() == [False, True, False, True]
    assert info.num_truncated == 2 and info.query_truncated == 0
    assert "2 of 4 pairs" in caplog.text
    ranked = rr.rerank(QUERY, docs)
    assert {r.index for r in ranked if r.truncated} == {1, 3}
    assert max(w for _, w in info.batch_shapes) == 32


def test_long_query_is_cut_with_a_warning_and_the_document_keeps_room(tiny_bert_folder: Path, caplog) -> None:
    rr = Reranker.load(tiny_bert_folder, variant="fp32", max_length=64)
    long_q = " ".join(f"word{i}" for i in range(500))
    with caplog.at_level(logging.WARNING, logger="crossrank"):
        scores, info = rr.score(long_q, ["doc " * 100, "x"], return_info=True)
    assert np.isfinite(scores).all()
    # The query overflows both pairs (74+ tokens, room 61), so both lose query tokens (issue 8, item 8).
    assert info.query_truncated == 1 and info.truncated.tolist() == [True, True]
    assert info.query_cut.tolist() == [True, True] and info.doc_cut.tolist() == [True, False]
    assert "max_query_tokens" in caplog.text
    enc = rr._encoder.encode([(long_q, "doc " * 100)])
    types = enc.type_ids[: enc.offsets[1]]
    assert enc.lengths[0] == 64
    # At least half of the room after special tokens is left for the document.
    assert int((types == 1).sum()) - 1 >= (64 - 3) // 2


def test_character_precut_is_exact_and_bounded(tiny_bert_folder: Path) -> None:
    from tokenizers import Tokenizer

    from crossrank.tokenize import PairEncoder

    path = tiny_bert_folder / "tokenizer.json"
    ref = Tokenizer.from_file(str(path))
    ref.no_padding()
    ref.enable_truncation(128, strategy="only_second")
    enc = PairEncoder(path, max_length=128, num_special_tokens_pair=3)
    seen: list[int] = []

    class Spy:  # records how many characters each call hands to the tokenizer
        def __init__(self, tok):
            self.tok = tok

        def encode(self, *texts, **kw):
            seen.append(sum(len(t) for t in texts))
            return self.tok.encode(*texts, **kw)

        def encode_batch(self, batch, **kw):
            seen.append(sum(len(a) + len(b) for a, b in batch))
            return self.tok.encode_batch(batch, **kw)

    enc._tok = Spy(enc._tok)
    rng = np.random.default_rng(0)
    vocab = ["data", "export", "ünïcödé", "中文", "😀", "x\x00y", "don't", "e-mail", "a.b.c", "longwordwithoutbreaks" * 3]
    docs = {
        "english": "the quick brown fox jumps over the lazy dog " * 25_000,  # ~1 MB
        "mixed": " ".join(rng.choice(vocab, size=30_000)),
        "cjk": "中文字符" * 25_000,
        "no breaks": "a" * 20_000,  # one word: no exact cut exists (see below)
        "just over": "word " * 130,
        "punctuation": "-" * 50_000,
    }
    for name, doc in docs.items():
        seen.clear()
        got = enc.encode([("how do i export", doc)])
        want = ref.encode("how do i export", doc)
        assert got.ids.tolist() == want.ids, name
        assert got.type_ids.tolist() == want.type_ids, name
        if name == "no breaks":
            # No exact cut: read up to a bounded prefix (the same [UNK] as the whole word) and
            # flagged, since the text was not read whole (issue 8, item 5).
            assert got.truncated[0] and got.doc_cut[0], name
        else:
            assert bool(got.truncated[0]) == bool(want.overflowing), name
        if name in ("english", "mixed", "cjk", "punctuation"):
            # A huge string costs what a long passage costs: at most a few thousand characters tokenized.
            assert sum(seen) <= 4 * (128 * 8 + 256) + 64, (name, seen)
    seen.clear()
    got = enc.encode([("how do i export", "the quick brown fox jumps over the lazy dog " * 250_000)])  # ~11 MB
    assert got.truncated[0] and got.lengths[0] == 128
    assert sum(seen) <= 4 * (128 * 8 + 256) + 64, seen


def test_pair_encoding_matches_tokenizers_only_second(tiny_bert_folder: Path, monkeypatch) -> None:
    from tokenizers import Tokenizer

    from crossrank.tokenize import PairEncoder

    path = tiny_bert_folder / "tokenizer.json"
    ref = Tokenizer.from_file(str(path))
    ref.no_padding()
    ref.enable_truncation(48, strategy="only_second")
    enc = PairEncoder(path, max_length=48, num_special_tokens_pair=3)
    pairs = [(q, d) for q in ("q", "how do i export my data") for d in texts(30, 4) + ["", "😀 " * 60]]
    got = enc.encode(pairs)
    for i, (q, d) in enumerate(pairs):
        want = ref.encode(q, d)
        a, b = got.offsets[i], got.offsets[i + 1]
        assert got.ids[a:b].tolist() == want.ids
        assert got.type_ids[a:b].tolist() == want.type_ids
        assert bool(got.truncated[i]) == bool(want.overflowing)
    # Tokenizing in chunks changes nothing.
    import crossrank.tokenize as tokenize_mod

    monkeypatch.setattr(tokenize_mod, "ENCODE_CHUNK", 7)
    chunked = enc.encode(pairs)
    for field in ("ids", "type_ids", "offsets", "truncated"):
        assert np.array_equal(getattr(chunked, field), getattr(got, field)), field
    # ... nor in chunks bounded by characters (down to one pair per call).
    for cap in (300, 1):
        monkeypatch.setattr(tokenize_mod, "ENCODE_CHUNK_CHARS", cap)
        chunked = enc.encode(pairs)
        for field in ("ids", "type_ids", "offsets", "truncated", "query_cut", "doc_cut"):
            assert np.array_equal(getattr(chunked, field), getattr(got, field)), (cap, field)
