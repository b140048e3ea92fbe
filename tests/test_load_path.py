"""The load path: variant resolution with the manifest, the provider loop, one onnxruntime error
boundary, feeds bound once, and a caller's own onnxruntime.SessionOptions."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import crossrank
import crossrank.manifest as manifest_mod
import crossrank.session as session_mod
from crossrank import (
    InferenceError,
    InvalidInputError,
    ModelFolderError,
    ProviderError,
    Reranker,
    VariantNotFoundError,
    load_manifest,
    resolve_variant,
)
from crossrank.session import FeedSpec, candidate_providers, ort_errors

CUDA = "CUDAExecutionProvider"
HAS_CUDA = CUDA in ort.get_available_providers()
QUERY = "How do I export my data?"
DOCS = ["You can export data as CSV or JSON from the Settings page.", "Billing invoices are in the portal.", "x " * 40]


def _only(manifest, *names):
    return dataclasses.replace(manifest, variants={n: manifest.variants[n] for n in names})


# -- variant resolution (crossrank.manifest) ---------------------------------------------------------
def test_auto_picks_per_provider_and_names_match_in_any_case(tiny_bert_folder: Path) -> None:
    m = load_manifest(tiny_bert_folder)
    assert resolve_variant(m, "auto", provider="cpu") == "int8"
    assert resolve_variant(m, "auto", provider="cuda") == "fp16"
    assert m.resolve_variant(" Optimized ", provider="cpu") == "optimized"
    assert resolve_variant(_only(m, "fp32", "optimized"), provider="cpu") == "optimized"
    assert resolve_variant(_only(m, "fp32", "int8"), provider="cuda") == "fp32"
    # among= restricts the choice (the bench resolves among the variants it measures)
    assert resolve_variant(m, provider="cpu", among=("fp32", "optimized")) == "optimized"


def test_a_missing_variant_lists_what_the_folder_has(tiny_bert_folder: Path) -> None:
    m = _only(load_manifest(tiny_bert_folder), "fp32", "optimized")
    with pytest.raises(VariantNotFoundError, match=r"'int8'.*it has fp32, optimized.*--int8"):
        resolve_variant(m, "int8", provider="cpu")
    with pytest.raises(InvalidInputError, match="variant"):
        resolve_variant(m, 8, provider="cpu")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="provider"):
        resolve_variant(m, "auto", provider="auto")


def test_unusual_variant_names_fall_back_to_one_meant_for_the_provider(tiny_bert_folder: Path) -> None:
    m = load_manifest(tiny_bert_folder)
    v = m.variants
    odd = dataclasses.replace(m, variants={
        "gpu-only": dataclasses.replace(v["fp16"], providers=("cuda",)),
        "cpu-only": dataclasses.replace(v["int8"], providers=("cpu",)),
    })
    assert resolve_variant(odd, provider="cpu") == "cpu-only"
    assert resolve_variant(odd, provider="cuda") == "gpu-only"


def test_bench_resolves_variants_with_the_manifest(tiny_bert_folder: Path, monkeypatch) -> None:
    from crossrank.bench.run import BenchConfig, _quality_variants

    m = load_manifest(tiny_bert_folder)
    cfg = BenchConfig(model_dir=tiny_bert_folder)
    assert _quality_variants(cfg, ("fp32", "optimized", "int8"), m) == ("int8",)
    assert _quality_variants(dataclasses.replace(cfg, provider="cuda"), ("fp32", "optimized", "int8"), m) == ("optimized",)
    # The bench has no preference list of its own: change the manifest's, and the bench follows.
    monkeypatch.setitem(manifest_mod.AUTO_VARIANTS, "cpu", ("fp32", "optimized", "int8"))
    assert _quality_variants(cfg, ("fp32", "optimized", "int8"), m) == ("fp32",)


def test_bench_refuses_a_missing_variant_listing_the_folder(tiny_bert_folder: Path, tmp_path: Path) -> None:
    from crossrank.bench.run import BenchConfig, run_benchmark

    cfg = BenchConfig(model_dir=tiny_bert_folder, variants=("int4",), peers=(), quality=False, startup_probe=False)
    with pytest.raises(VariantNotFoundError, match=r"'int4'.*fp32.*int8"):
        run_benchmark(cfg)


def test_known_variants_is_gone() -> None:
    assert not hasattr(manifest_mod, "KNOWN_VARIANTS")


# -- providers: a plain loop ---------------------------------------------------------------------------
def test_candidate_providers(monkeypatch) -> None:
    assert candidate_providers("cpu") == ("cpu",)
    monkeypatch.setattr(session_mod, "available_providers", lambda: ["CPUExecutionProvider"])
    assert candidate_providers(" Auto ") == ("cpu",)
    with pytest.raises(ProviderError, match="crossrank\\[gpu\\]"):
        candidate_providers("cuda")
    monkeypatch.setattr(session_mod, "available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    assert candidate_providers("auto") == ("cuda", "cpu")
    assert candidate_providers("cuda") == ("cuda",)  # an explicit CUDA is never replaced
    assert not hasattr(session_mod, "_FellBack")  # no private exception crosses modules any more


@pytest.mark.skipif(HAS_CUDA, reason="a real CUDA provider is present; a refused grant cannot be had")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_an_ungranted_cuda_is_a_provider_error_the_auto_loop_falls_back_from(tiny_bert_folder: Path, monkeypatch, caplog) -> None:
    # This onnxruntime lists CUDA (patched) but, being the CPU build, grants only the CPU: the
    # decision rests on session.get_providers().
    monkeypatch.setattr(session_mod, "available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    m = load_manifest(tiny_bert_folder)
    spec = m.variants["fp16"]
    with pytest.raises(ProviderError, match=r"did not grant CUDAExecutionProvider.*granted: CPUExecutionProvider"):
        session_mod.OnnxSession(tiny_bert_folder / spec.file, manifest=m, sha256=spec.sha256, provider="cuda", options=session_mod.SessionOptions())
    with caplog.at_level(logging.WARNING, logger="crossrank"):
        rr = Reranker.load(tiny_bert_folder, provider="auto")
    assert (rr.provider, rr.variant) == ("cpu", "int8")
    assert "falling back to the CPU" in caplog.text


# -- one onnxruntime error boundary -------------------------------------------------------------------
def _ort_error(tmp_path: Path, name: str) -> Exception:
    bad = tmp_path / name
    bad.write_bytes(b"not an onnx model" * 8)
    try:
        ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - the real onnxruntime error, to translate
        return err
    raise AssertionError("onnxruntime loaded a corrupt file")


def test_start_errors_are_decided_by_type_and_providers_not_text(tmp_path: Path) -> None:
    # The old rule searched the message for "CUDA"; a corrupt file whose name says CUDA is still
    # a corrupt file, whatever was requested.
    err = _ort_error(tmp_path, "CUDA-model.onnx")
    for providers in (["CPUExecutionProvider"], [CUDA]):
        with pytest.raises(ModelFolderError, match=r"CUDA-model\.onnx.*cannot load") as ei:
            with ort_errors(tmp_path / "CUDA-model.onnx", providers=providers):
                raise err
        assert ei.value.__cause__ is err and not isinstance(ei.value, ProviderError)


def test_a_non_file_error_at_a_cuda_start_is_a_provider_error(tiny_bert_folder: Path) -> None:
    path = tiny_bert_folder / "model.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrong = {i.name: np.zeros((1, 4), dtype=np.float32) for i in sess.get_inputs()}  # onnxruntime's InvalidArgument
    with pytest.raises(ProviderError, match="CUDA execution provider failed") as ei:
        with ort_errors(path, providers=[CUDA]):
            sess.run(None, wrong)
    assert type(ei.value.__cause__).__module__.startswith("onnxruntime")
    with pytest.raises(ModelFolderError):
        with ort_errors(path, providers=["CPUExecutionProvider"]):
            sess.run(None, wrong)


def test_run_errors_are_inference_errors_naming_shapes_and_providers(tiny_bert_folder: Path) -> None:
    rr = Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu")
    feeds = rr._session.feed.pad([(rr._encoder.encode([(QUERY, DOCS[0])]), np.array([0]))])
    feeds["input_ids"] = feeds["input_ids"].astype(np.float32)  # a dtype the graph refuses
    with pytest.raises(InferenceError, match=r"input_ids.*\(1, \d+\).*model\.onnx on CPUExecutionProvider") as ei:
        rr._session.run(feeds)
    assert type(ei.value.__cause__).__module__.startswith("onnxruntime")
    with pytest.raises(InvalidInputError):  # crossrank's own errors pass through unchanged
        with ort_errors(tiny_bert_folder / "model.onnx", providers=["CPUExecutionProvider"], feeds=feeds):
            raise InvalidInputError("mine")


# -- feeds bound once -----------------------------------------------------------------------------------
def test_feeds_are_bound_once_at_load_from_the_manifest(tiny_bert_folder: Path) -> None:
    rr = Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu")
    m = rr.manifest
    feed = rr._session.feed
    assert feed == FeedSpec.of(m)
    assert feed.names == tuple(i.name for i in m.inputs) == rr._session.input_names
    assert feed.pad_token_id == m.tokenizer.pad_token_id
    enc = rr._encoder.encode([(QUERY, d) for d in DOCS])
    arrays = feed.pad([(enc, np.arange(len(DOCS)))])
    assert list(arrays) == list(feed.names)
    assert all(arrays[n].dtype == dt for n, dt in zip(feed.names, feed.dtypes))
    assert (arrays["input_ids"][0, int(enc.lengths[0]):] == feed.pad_token_id).all()  # right padding


# -- a caller's own onnxruntime.SessionOptions ---------------------------------------------------------------
def test_own_session_options_are_used_as_given(tiny_bert_folder: Path, tmp_path: Path) -> None:
    want = Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu").score(QUERY, DOCS, raw=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "written-by-ort.onnx")  # only a caller's options set this
    cache = Path(crossrank.graph_cache.default_cache_dir())
    before = set(cache.glob("*")) if cache.exists() else set()
    rr = Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu", session_options=so)
    assert (tmp_path / "written-by-ort.onnx").is_file()  # onnxruntime started with the caller's options
    assert rr._session._sess.get_session_options().intra_op_num_threads == 1
    assert rr._session.cached_graph is None and (set(cache.glob("*")) if cache.exists() else set()) == before
    np.testing.assert_allclose(rr.score(QUERY, DOCS, raw=True), want, atol=1e-5, rtol=0)
    assert so.intra_op_num_threads == 1  # not changed by crossrank


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"threads": 2}, r"threads=2 conflicts with session_options.*intra_op_num_threads"),
        ({"spinning": False}, r"spinning=False conflicts with session_options"),
        ({"graph_optimization": "basic"}, r"graph_optimization='basic' conflicts"),
        ({"memory_arena": False}, r"memory_arena=False conflicts"),
        ({"cache_dir": "somewhere"}, r"cache_dir='somewhere' conflicts with session_options"),
    ],
)
def test_conflicting_options_with_own_session_options_are_refused(tiny_bert_folder: Path, kwargs, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        Reranker.load(tiny_bert_folder, session_options=ort.SessionOptions(), **kwargs)


def test_session_options_must_be_onnxruntimes(tiny_bert_folder: Path) -> None:
    with pytest.raises(InvalidInputError, match="session_options must be an onnxruntime.SessionOptions; got dict"):
        Reranker.load(tiny_bert_folder, session_options={"intra_op_num_threads": 1})
