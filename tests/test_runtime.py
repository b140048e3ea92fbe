"""The lean runtime on a tiny exported BERT (fast): API, variants, batching, truncation, bad input.

Uses the ``tiny_bert_folder`` fixture (a tiny random BERT, 1 label, all variants incl. int8).
Tests that damage a folder work on a copy in ``tmp_path``.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import crossrank
from crossrank import (
    CrossrankError,
    InferenceError,
    InputTypeError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    ModelFolderError,
    ProviderError,
    Reranker,
    Result,
    VariantNotFoundError,
)
from crossrank.batching import plan_batches
from crossrank.reranker import DEFAULT_BATCHING
from crossrank.manifest import MANIFEST_NAME, sha256_file

QUERY = "How do I export my data?"
DOCS = [
    "You can export data as CSV or JSON from the Settings page.",
    "Our platform supports multiple file formats for import operations.",
    "Billing invoices can be downloaded from the account portal.",
]
CUDA = "CUDAExecutionProvider"


def _has_cuda() -> bool:
    import onnxruntime

    return CUDA in onnxruntime.get_available_providers()



@pytest.fixture(scope="module")
def rr(tiny_bert_folder: Path) -> Reranker:
    return Reranker.load(tiny_bert_folder, provider="cpu")


@pytest.fixture(scope="module")
def rr32(tiny_bert_folder: Path) -> Reranker:
    return Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu")


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(folder, dst)
    return dst


def _edit_manifest(folder: Path, edit) -> None:
    p = folder / MANIFEST_NAME
    data = json.loads(p.read_text())
    edit(data)
    p.write_text(json.dumps(data))


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "data export import csv json settings page billing invoice account portal file format the a of to".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(n)]


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
    reqs = [(QUERY, DOCS), ("billing portal", _texts(7, 1)), ("nothing", [])]
    many = rr32.rerank_many(reqs, top_k=5)
    assert [len(x) for x in many] == [3, 5, 0]
    for (q, docs), got in zip(reqs, many):
        want = rr32.rerank(q, docs, top_k=5)
        assert [r.index for r in got] == [r.index for r in want]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-5)


def test_inputs_are_never_mutated_or_reordered(rr32: Reranker) -> None:
    docs_list = _texts(20, 2)
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


# -- model folder problems -----------------------------------------------------------------------
def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="does not exist"):
        Reranker.load(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match=MANIFEST_NAME):
        Reranker.load(tmp_path)


def test_missing_model_file_names_it(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(ModelFolderError, match="model.int8.onnx") as ei:
        Reranker.load(folder, variant="int8")
    assert not isinstance(ei.value, IntegrityError)
    with pytest.raises(ModelFolderError, match="model.int8.onnx"):
        Reranker.load(folder, variant="int8", verify=False)
    assert Reranker.load(folder, variant="fp32").variant == "fp32"


def test_missing_tokenizer_names_it(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="tokenizer.json"):
        Reranker.load(folder)


def test_sha256_mismatch_is_an_integrity_error_naming_the_file(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        Reranker.load(folder, variant="fp32")
    # The other files are untouched: int8 still loads.
    assert Reranker.load(folder, variant="int8").variant == "int8"
    tok = folder / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")
    with pytest.raises(IntegrityError, match=r"tokenizer\.json"):
        Reranker.load(folder, variant="int8")
    # verify=False skips the hashes; a trailing space does not break the JSON.
    assert Reranker.load(folder, variant="int8", verify=False).score("q", ["d"]).shape == (1,)


def test_corrupt_onnx_file_is_a_model_folder_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    p = folder / "model.int8.onnx"
    p.write_bytes(b"this is not an onnx model" * 10)
    with pytest.raises(IntegrityError, match="model.int8.onnx"):
        Reranker.load(folder, variant="int8")
    with pytest.raises(ModelFolderError, match="model.int8.onnx.*cannot load") as ei:
        Reranker.load(folder, variant="int8", verify=False)
    assert ei.value.__cause__ is not None


def test_corrupt_tokenizer_is_a_model_folder_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="tokenizer.json"):
        Reranker.load(folder, verify=False)


def test_newer_schema_is_a_manifest_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    _edit_manifest(folder, lambda d: d.update(schema_version=crossrank.SCHEMA_VERSION + 1))
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME}.*schema_version"):
        Reranker.load(folder)


def test_invalid_manifest_json_is_a_manifest_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    (folder / MANIFEST_NAME).write_text("{")
    with pytest.raises(ManifestError, match=MANIFEST_NAME):
        Reranker.load(folder)


def test_manifest_inputs_not_matching_the_graph(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)

    def drop_token_types(d):
        d["inputs"] = [i for i in d["inputs"] if i["name"] != "token_type_ids"]

    _edit_manifest(folder, drop_token_types)
    with pytest.raises(ModelFolderError, match=r"model\.onnx.*inputs.*do not match"):
        Reranker.load(folder, variant="fp32")

    folder2 = _copy(tiny_bert_folder, tmp_path / "b")
    _edit_manifest(folder2, lambda d: [i.update(dtype="int32") for i in d["inputs"]])
    with pytest.raises(ModelFolderError, match="do not match"):
        Reranker.load(folder2, variant="fp32")


def test_manifest_num_labels_not_matching_the_graph(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    _edit_manifest(folder, lambda d: d.update(num_labels=2, labels=["no", "yes"], positive_label=1, activation="softmax"))
    with pytest.raises((ModelFolderError, InferenceError), match="labels|shape"):
        Reranker.load(folder, variant="fp32").score("q", ["d"])


def test_missing_variant_lists_what_the_folder_has(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    _edit_manifest(folder, lambda d: d["variants"].pop("int8"))
    with pytest.raises(VariantNotFoundError, match=r"'int8'.*fp32.*optimized") as ei:
        Reranker.load(folder, variant="int8")
    assert isinstance(ei.value, ValueError)
    # auto without int8 falls back to the optimized fp32 graph on CPU.
    assert Reranker.load(folder).variant == "optimized"


def test_bad_load_options(tiny_bert_folder: Path) -> None:
    for kwargs, what in [
        ({"provider": "tpu"}, "provider"),
        ({"threads": 0}, "threads"),
        ({"threads": True}, "threads"),
        ({"graph_optimization": "max"}, "graph_optimization"),
        ({"spinning": "no"}, "spinning"),
        ({"max_length": 10_000}, "max_length"),
        ({"max_length": 2}, "max_length"),
        ({"batch_tokens": 0}, "batch_tokens"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"max_query_tokens": 0}, "max_query_tokens"),
        ({"verify": "yes"}, "verify"),
        ({"variant": 8}, "variant"),
    ]:
        with pytest.raises(InvalidInputError, match=what):
            Reranker.load(tiny_bert_folder, **kwargs)
    with pytest.raises(TypeError):
        Reranker.load(tiny_bert_folder, "int8")  # options are keyword-only
    with pytest.raises(TypeError):
        Reranker.load(tiny_bert_folder, treads=2)  # no **kwargs swallowing typos


@pytest.mark.skipif(_has_cuda(), reason="this onnxruntime has CUDA: the no-CUDA error cannot happen")
def test_cuda_without_the_provider_says_how_to_get_it(tiny_bert_folder: Path) -> None:
    with pytest.raises(ProviderError, match=r'pip install "crossrank\[gpu\]"'):
        Reranker.load(tiny_bert_folder, provider="cuda")


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_cuda_that_is_offered_but_not_granted(tiny_bert_folder: Path, monkeypatch, caplog) -> None:
    # An onnxruntime that lists CUDA but cannot start it (no driver, wrong CUDA libraries): the
    # session's granted providers are checked; auto falls back to CPU (and to the CPU variant) with
    # a warning, an explicit provider="cuda" is a ProviderError.
    import crossrank.session as session_mod

    if _has_cuda():
        pytest.skip("a real CUDA provider is present; the refusal cannot be simulated")
    monkeypatch.setattr(session_mod, "available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="crossrank"):
        rr = Reranker.load(tiny_bert_folder)
    assert rr.provider == "cpu" and rr.providers == ["CPUExecutionProvider"]
    assert rr.variant == "int8"  # re-chosen for the CPU (auto on CUDA would have been fp16)
    assert "falling back to the CPU" in caplog.text
    with pytest.raises(ProviderError, match="CUDA"):
        Reranker.load(tiny_bert_folder, provider="cuda")


def test_load_options_are_applied(tiny_bert_folder: Path) -> None:
    rr = Reranker.load(
        tiny_bert_folder,
        variant="optimized",
        threads=1,
        max_length=64,
        batch_tokens=500,
        max_batch_size=3,
        graph_optimization="basic",
        spinning=False,
        memory_arena=False,
    )
    assert (rr.max_length, rr.batch_tokens, rr.max_batch_size) == (64, 500, 3)
    scores, info = rr.score(QUERY, _texts(10, 3), return_info=True)
    assert np.all(np.isfinite(scores))
    assert all(b <= 3 and (b * w <= 500 or b == 1) and w <= 64 for b, w in info.batch_shapes)


def test_ort_failure_is_an_inference_error_from_the_ort_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    # A tokenizer with a token id past the model's embedding table: onnxruntime's Gather fails.
    from tokenizers import Tokenizer

    folder = _copy(tiny_bert_folder, tmp_path)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens(["zzqqxx"])
    tok.save(str(folder / "tokenizer.json"))
    _edit_manifest(folder, lambda d: d["tokenizer"].update(sha256=sha256_file(folder / "tokenizer.json")))
    rr = Reranker.load(folder, variant="fp32")
    assert np.isfinite(rr.score("q", ["fine"])).all()
    with pytest.raises(InferenceError, match="onnxruntime failed") as ei:
        rr.score("q", ["fine", "zzqqxx"])
    assert ei.value.__cause__ is not None
    assert type(ei.value.__cause__).__module__.startswith("onnxruntime")


# -- optimized-graph cache -------------------------------------------------------------------------
def test_graph_cache_is_written_once_reused_and_survives_damage(tiny_bert_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    want = Reranker.load(tiny_bert_folder, variant="int8", cache_dir=False).score(QUERY, DOCS, raw=True)
    first = Reranker.load(tiny_bert_folder, variant="int8", cache_dir=cache)
    assert first._session.cached_graph is None  # started from the model, wrote the entry
    entries = list(cache.glob("*.onnx"))
    assert len(entries) == 1 and entries[0].name.startswith("model.int8-")
    second = Reranker.load(tiny_bert_folder, variant="int8", cache_dir=cache)
    assert second._session.cached_graph == entries[0]
    np.testing.assert_array_equal(second.score(QUERY, DOCS, raw=True), want)
    np.testing.assert_array_equal(first.score(QUERY, DOCS, raw=True), want)
    # A damaged entry is ignored and replaced.
    entries[0].write_bytes(b"garbage")
    third = Reranker.load(tiny_bert_folder, variant="int8", cache_dir=cache)
    assert third._session.cached_graph is None
    np.testing.assert_array_equal(third.score(QUERY, DOCS, raw=True), want)
    assert Reranker.load(tiny_bert_folder, variant="int8", cache_dir=cache)._session.cached_graph == entries[0]
    # Another optimization level is another entry; no partial files are left behind.
    Reranker.load(tiny_bert_folder, variant="int8", cache_dir=cache, graph_optimization="basic")
    assert len(list(cache.glob("*.onnx"))) == 2
    assert not list(cache.glob("*partial*"))


def test_graph_cache_off_or_unwritable(tiny_bert_folder: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rr = Reranker.load(tiny_bert_folder, variant="int8", cache_dir=blocker / "cache")
    assert rr._session.cached_graph is None and np.isfinite(rr.score(QUERY, DOCS)).all()
    off = tmp_path / "off"
    monkey = pytest.MonkeyPatch()
    monkey.setenv("CROSSRANK_CACHE", str(off))
    try:
        Reranker.load(tiny_bert_folder, variant="int8", cache_dir=False)
        assert not off.exists()
        Reranker.load(tiny_bert_folder, variant="int8")  # default location follows $CROSSRANK_CACHE
        assert len(list(off.glob("*.onnx"))) == 1
    finally:
        monkey.undo()
    with pytest.raises(InvalidInputError, match="cache_dir"):
        Reranker.load(tiny_bert_folder, cache_dir=True)


def test_graph_cache_follows_a_changed_model_file(tiny_bert_folder: Path, tmp_path: Path) -> None:
    # verify=False and a different file under the same name: the cache must not serve the old graph.
    folder = _copy(tiny_bert_folder, tmp_path)
    cache = tmp_path / "cache"
    Reranker.load(folder, variant="fp32", cache_dir=cache)
    shutil.copy(folder / "model.opt.onnx", folder / "model.onnx")
    rr = Reranker.load(folder, variant="fp32", cache_dir=cache, verify=False)
    assert rr._session.cached_graph is None


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
    pairs = [(q, d) for q in ("q", "how do i export my data") for d in _texts(30, 4) + ["", "😀 " * 60]]
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
    docs = _texts(10_000, 5) + ["long " * 2000]  # one pair of max_length tokens
    scores, info = rr.score(QUERY, docs, return_info=True)
    assert scores.shape == (10_001,) and np.isfinite(scores).all()
    assert sum(b for b, _ in info.batch_shapes) == 10_001
    assert max(b * w for b, w in info.batch_shapes) <= max(rr.batch_tokens, rr.max_length)
    assert max(b for b, _ in info.batch_shapes) <= rr.max_batch_size
    assert len(info.batch_shapes) >= 10_001 * 10 // rr.batch_tokens  # really cut into many runs


def test_fp32_scores_are_batch_invariant(tiny_bert_folder: Path) -> None:
    docs = _texts(60, 6) + ["", "word " * 600]
    for variant in ("fp32", "optimized"):
        alone = Reranker.load(tiny_bert_folder, variant=variant, max_batch_size=1).score(QUERY, docs, raw=True)
        mixed = Reranker.load(tiny_bert_folder, variant=variant).score(QUERY, docs, raw=True)
        one = Reranker.load(tiny_bert_folder, variant=variant, batch_tokens=10**9, max_batch_size=10**9)
        together, info = one.score(QUERY, docs, raw=True, return_info=True)
        assert len(info.batch_shapes) == 1
        np.testing.assert_allclose(mixed, alone, atol=1e-5, rtol=0, err_msg=variant)
        np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0, err_msg=variant)


def test_dynamic_int8_defaults_to_one_pair_per_run(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_bert_folder, tmp_path)
    _edit_manifest(folder, lambda d: d["variants"]["int8"].setdefault("settings", {}).update(scheme="dynamic"))
    rr = Reranker.load(folder, variant="int8")
    assert rr.max_batch_size == 1
    docs = _texts(12, 7)
    scores, info = rr.score(QUERY, docs, return_info=True)
    assert all(b == 1 for b, _ in info.batch_shapes)
    # exactly invariant: the same pairs in another order and mix give bit-identical scores
    assert np.array_equal(rr.score(QUERY, docs[::-1])[::-1], scores)
    assert np.array_equal(rr.score(QUERY, docs[::3]), scores[::3])
    assert Reranker.load(folder, variant="int8", max_batch_size=16).max_batch_size == 16  # explicit wins
    _edit_manifest(folder, lambda d: d["variants"]["int8"]["settings"].update(scheme="static"))
    assert Reranker.load(folder, variant="int8").max_batch_size == DEFAULT_BATCHING["cpu"][1]


# -- concurrency ---------------------------------------------------------------------------------
def test_one_reranker_shared_by_eight_threads_gives_the_serial_results(tiny_bert_folder: Path) -> None:
    rr = Reranker.load(tiny_bert_folder, threads=2)
    requests = [(f"query {i} export", _texts(int(3 + 4 * i), 10 + i)) for i in range(16)]
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


# -- the rerank command --------------------------------------------------------------------------
def _cli(args: list[str], monkeypatch, capsys, stdin: str | None = None):
    import io

    from crossrank.cli import main

    if stdin is not None:
        fake = io.StringIO(stdin)
        fake.isatty = lambda: False  # type: ignore[method-assign]
        monkeypatch.setattr(sys, "stdin", fake)
    code = main(args)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_cli_reads_lines_jsonl_and_stdin(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rr = Reranker.load(tiny_bert_folder)
    want = rr.rerank(QUERY, DOCS)
    lines = tmp_path / "docs.txt"
    lines.write_text("\n".join(DOCS) + "\n\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(DOCS)) + "\n")
    strings = tmp_path / "strings.txt"
    strings.write_text("\n".join(json.dumps(d) for d in DOCS))
    for args, stdin in [
        (["--docs", str(lines)], None),
        (["--docs", str(jsonl), "--text-field", "body"], None),
        (["--docs", str(strings)], None),
        (["--docs", "-"], "\n".join(DOCS)),
        ([], "\n".join(DOCS)),
    ]:
        code, rows, err = _cli(["rerank", str(tiny_bert_folder), "--query", QUERY, *args], monkeypatch, capsys, stdin)
        assert code == 0, err
        assert [r["index"] for r in rows] == [r.index for r in want]
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert [r["text"] for r in rows] == [r.document for r in want]
        np.testing.assert_allclose([r["score"] for r in rows], [r.score for r in want], atol=1e-6)
        assert set(rows[0]) == {"rank", "index", "score", "text", "truncated", "query_cut", "doc_cut"}


def test_cli_top_k_raw_and_variant(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    docs = tmp_path / "d.txt"
    docs.write_text("\n".join(DOCS))
    code, rows, _ = _cli(
        ["rerank", str(tiny_bert_folder), "-q", QUERY, "--docs", str(docs), "--top-k", "2", "--raw", "--variant", "fp32"],
        monkeypatch,
        capsys,
    )
    assert code == 0 and len(rows) == 2
    raw = Reranker.load(tiny_bert_folder, variant="fp32").score(QUERY, DOCS, raw=True)
    np.testing.assert_allclose([r["score"] for r in rows], np.sort(raw)[::-1][:2], atol=1e-6)


def test_cli_errors_are_one_line(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--docs", str(bad)], monkeypatch, capsys)
    assert code == 1 and "line 2" in err and "'text'" in err and "Traceback" not in err
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--docs", str(tmp_path / "none.txt")], monkeypatch, capsys)
    assert code == 1 and "no such file" in err
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--variant", "nope"], monkeypatch, capsys, stdin="a\n")
    assert code == 1 and "'nope'" in err and "fp32" in err
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--top-k", "0"], monkeypatch, capsys, stdin="a\n")
    assert code == 1 and "top_k" in err
    code, _, err = _cli(["rerank", str(tmp_path), "-q", "x"], monkeypatch, capsys, stdin="a\n")
    assert code == 1 and MANIFEST_NAME in err


def test_cli_without_documents_on_a_terminal_is_an_error(tiny_bert_folder: Path, monkeypatch, capsys) -> None:
    import io

    tty = io.StringIO("")
    tty.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdin", tty)
    from crossrank.cli import main

    assert main(["rerank", str(tiny_bert_folder), "-q", "x"]) == 1
    assert "--docs" in capsys.readouterr().err


def test_cli_in_process_leaves_logging_as_it_found_it(tmp_path) -> None:
    import logging

    from crossrank.cli import main

    log = logging.getLogger("crossrank")
    before = (list(log.handlers), log.level, log.propagate)
    assert main(["info", str(tmp_path / "missing")]) == 1  # configures stderr logging, then fails
    assert (list(log.handlers), log.level, log.propagate) == before
