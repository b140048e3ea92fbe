"""Load options and the onnxruntime session: option checks, CUDA refusals and fallback, options
applied, onnxruntime failures translated, and the optimized-graph cache.

Split from the former tests/test_runtime.py. Uses the ``tiny_bert_folder`` fixture (the committed tiny
BERT, 1 label, sigmoid, every variant); tests that damage a folder work on a copy in ``tmp_path``.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import QUERY, DOCS, CUDA, has_cuda, copy_folder, edit_manifest, texts

from crossrank import InferenceError, InvalidInputError, ProviderError, Reranker
from crossrank.manifest import sha256_file


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


@pytest.mark.skipif(has_cuda(), reason="this onnxruntime has CUDA: the no-CUDA error cannot happen")
def test_cuda_without_the_provider_says_how_to_get_it(tiny_bert_folder: Path) -> None:
    with pytest.raises(ProviderError, match=r'pip install "crossrank\[gpu\]"'):
        Reranker.load(tiny_bert_folder, provider="cuda")


@pytest.mark.skipif(has_cuda(), reason="a real CUDA provider is present; the refusal cannot be simulated")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_cuda_that_is_offered_but_not_granted(tiny_bert_folder: Path, monkeypatch, caplog) -> None:
    # An onnxruntime that lists CUDA but cannot start it (no driver, wrong CUDA libraries): the
    # session's granted providers are checked; auto falls back to CPU (and to the CPU variant) with
    # a warning, an explicit provider="cuda" is a ProviderError.
    import crossrank.session as session_mod

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
    scores, info = rr.score(QUERY, texts(10, 3), return_info=True)
    assert np.all(np.isfinite(scores))
    assert all(b <= 3 and (b * w <= 500 or b == 1) and w <= 64 for b, w in info.batch_shapes)


def test_ort_failure_is_an_inference_error_from_the_ort_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    # A tokenizer with a token id past the model's embedding table: onnxruntime's Gather fails.
    from tokenizers import Tokenizer

    folder = copy_folder(tiny_bert_folder, tmp_path)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens(["zzqqxx"])
    tok.save(str(folder / "tokenizer.json"))
    edit_manifest(folder, lambda d: d["tokenizer"].update(sha256=sha256_file(folder / "tokenizer.json")))
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
    folder = copy_folder(tiny_bert_folder, tmp_path)
    cache = tmp_path / "cache"
    Reranker.load(folder, variant="fp32", cache_dir=cache)
    shutil.copy(folder / "model.opt.onnx", folder / "model.onnx")
    rr = Reranker.load(folder, variant="fp32", cache_dir=cache, verify=False)
    assert rr._session.cached_graph is None
