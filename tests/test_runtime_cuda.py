"""The runtime on the CUDA execution provider (skipped cleanly where onnxruntime has none).

Parity CUDA vs CPU on the tiny and the real model, the fp16 variant chosen by ``auto``, I/O
binding, and one session for the Reranker's life. ``benchmarks/gpu_check.py`` adds speed figures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossrank import Reranker

CUDA = "CUDAExecutionProvider"


def _has_cuda() -> bool:
    import onnxruntime

    return CUDA in onnxruntime.get_available_providers()


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not _has_cuda(), reason='this onnxruntime has no CUDAExecutionProvider (pip install "crossrank[gpu]")'),
]

QUERY = "How do I export my data?"
DOCS = [
    "You can export data as CSV or JSON from the Settings page.",
    "Our platform supports multiple file formats for import operations.",
    "Billing invoices can be downloaded from the account portal.",
] + [f"filler passage number {i} about " + "data " * (i % 37) for i in range(60)]



def test_auto_uses_cuda_and_the_fp16_variant(tiny_bert_folder: Path) -> None:
    rr = Reranker.load(tiny_bert_folder)
    assert rr.provider == "cuda" and rr.providers[0] == CUDA
    assert rr.variant == "fp16"


@pytest.mark.parametrize("variant,atol", [("fp32", 1e-3), ("optimized", 1e-3), ("fp16", 2e-2)])
def test_cuda_scores_match_cpu(tiny_bert_folder: Path, variant: str, atol: float) -> None:
    cpu = Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu").score(QUERY, DOCS, raw=True)
    rr = Reranker.load(tiny_bert_folder, variant=variant, provider="cuda")
    gpu = rr.score(QUERY, DOCS, raw=True)
    np.testing.assert_allclose(gpu, cpu, atol=atol, rtol=0)
    # fp32-precision variants run without TF32 (the CUDA provider's default would round products
    # to a 10-bit mantissa); what onnxruntime granted, not what was asked
    granted = rr._session._sess.get_provider_options()[CUDA]
    assert granted.get("use_tf32") == ("0" if variant != "fp16" else "1"), granted


def test_one_session_for_the_rerankers_life_with_io_binding(tiny_bert_folder: Path, monkeypatch) -> None:
    rr = Reranker.load(tiny_bert_folder, provider="cuda")
    sess = rr._session._sess
    calls = {"iobinding": 0, "run": 0}
    real_bind, real_run = sess.run_with_iobinding, sess.run

    def bind(*a, **k):
        calls["iobinding"] += 1
        return real_bind(*a, **k)

    def run(*a, **k):
        calls["run"] += 1
        return real_run(*a, **k)

    monkeypatch.setattr(sess, "run_with_iobinding", bind)
    monkeypatch.setattr(sess, "run", run)
    scores, info = rr.score(QUERY, DOCS, return_info=True)
    rr.rerank(QUERY, DOCS)
    assert rr._session._sess is sess
    assert calls["iobinding"] == 2 * len(info.batch_shapes) and calls["run"] == 0
    assert np.isfinite(scores).all()


@pytest.mark.slow
def test_real_model_cuda_parity(real_model_folder: Path) -> None:
    cpu = Reranker.load(real_model_folder, variant="fp32", provider="cpu")
    ref = cpu.score(QUERY, DOCS, raw=True)
    for variant, atol in (("optimized", 1e-3), ("fp16", 2e-2)):
        rr = Reranker.load(real_model_folder, variant=variant, provider="cuda")
        np.testing.assert_allclose(rr.score(QUERY, DOCS, raw=True), ref, atol=atol, rtol=0, err_msg=variant)
        assert [r.index for r in rr.rerank(QUERY, DOCS[:3])][0] == 0
