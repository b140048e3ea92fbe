"""The real trained cross-encoder (../shared/models/crossrank-minilm-l6), exported once per session.

``real_model_folder`` (tests/conftest.py) is the crossrank folder of the real model with every
variant (fp32, optimized, int8 with the default scheme, fp16), exported once per session.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossrank.activation import apply_activation
from crossrank.cli import main as crossrank_main
from crossrank.manifest import load_manifest

SEED_QUERY = "How do I export my data?"
SEED_DOCS = [
    "You can export data as CSV or JSON from the Settings page.",
    "Our platform supports multiple file formats for import operations.",
    "Billing invoices can be downloaded from the account portal.",
]
SEED_SCORES = [0.9045, 0.3739, 0.0638]  # sentence-transformers CrossEncoder, model card


def _pairs() -> list[tuple[str, str]]:
    from crossrank.export import read_pairs

    pairs = [(SEED_QUERY, d) for d in SEED_DOCS]
    builtin = read_pairs(None).pairs
    pairs += list(builtin[::15])  # a spread of short, medium and over-long (truncated) passages
    assert any(len(d.split()) > 600 for _, d in pairs)
    return pairs


def _onnx_scores(folder: Path, variant: str, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Score pairs one by one with onnxruntime and the folder's own tokenizer.json (no padding involved)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    m = load_manifest(folder)
    tok = Tokenizer.from_file(str(folder / m.tokenizer.file))
    session = ort.InferenceSession(str(folder / m.variants[variant].file), providers=["CPUExecutionProvider"])
    logits = []
    for q, d in pairs:
        enc = tok.encode(q, d)
        arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        feed = {i.name: np.asarray([arrays[i.name]], dtype=np.int64) for i in m.inputs}
        logits.append(session.run(None, feed)[0][0])
    return apply_activation(np.asarray(logits), m.activation, m.positive_label)


@pytest.mark.slow
def test_real_model_exports_every_variant_within_thresholds(real_model_folder: Path) -> None:
    m = load_manifest(real_model_folder)
    assert set(m.variants) == {"fp32", "optimized", "int8", "fp16"}
    assert (m.architecture, m.model_type, m.num_labels, m.activation) == ("BertForSequenceClassification", "bert", 1, "sigmoid")
    assert [i.name for i in m.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m.max_length == 512
    for name, v in m.variants.items():
        val = v.validation
        assert val["passed"] is True, (name, val)
        assert val["dataset"] == "built-in" and val["pairs"] == 304 and val["queries"] == 40
        assert val["top1_agreement"] is not None and val["top5_agreement"] is not None
    assert m.variants["fp32"].validation["max_abs_diff"] <= 1e-4
    assert m.variants["optimized"].validation["max_abs_diff"] <= 1e-4
    assert m.variants["fp16"].validation["max_abs_diff"] <= 2e-2
    assert m.variants["int8"].validation["spearman"] >= 0.99
    assert m.variants["optimized"].settings["fused_operators"]["Attention"] == 6  # one per layer
    assert m.variants["int8"].settings.get("scheme") in ("static", "dynamic")
    assert m.variants["int8"].providers == ("cpu",) and m.variants["fp16"].providers == ("cuda",)
    # encoder weights are int8 (the 30522 x 384 embedding table stays fp32); fp16 halves everything
    assert m.variants["int8"].bytes < 0.75 * m.variants["fp32"].bytes
    assert m.variants["fp16"].bytes < 0.55 * m.variants["fp32"].bytes


@pytest.mark.slow
def test_real_fp32_matches_sentence_transformers(real_hf_model: Path, real_model_folder: Path) -> None:
    from sentence_transformers import CrossEncoder

    pairs = _pairs()
    ours = _onnx_scores(real_model_folder, "fp32", pairs)
    reference = CrossEncoder(str(real_hf_model), device="cpu").predict(pairs, batch_size=8, show_progress_bar=False)
    np.testing.assert_allclose(ours, np.asarray(reference, np.float32), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[:3], SEED_SCORES, atol=6e-4)
    assert ours[0] > ours[1] > ours[2]


@pytest.mark.slow
def test_real_int8_and_optimized_rank_the_seed_example_like_pytorch(real_model_folder: Path) -> None:
    pairs = [(SEED_QUERY, d) for d in SEED_DOCS]
    for variant in ("optimized", "int8"):
        scores = _onnx_scores(real_model_folder, variant, pairs)
        assert list(np.argsort(-scores)) == [0, 1, 2], variant
        assert np.abs(scores - SEED_SCORES).max() < (1e-3 if variant == "optimized" else 0.1), (variant, scores)


@pytest.mark.slow
def test_info_summarises_the_real_folder(real_model_folder: Path, capsys) -> None:
    capsys.readouterr()
    assert crossrank_main(["info", str(real_model_folder)]) == 0
    text = capsys.readouterr().out
    for expected in ("BertForSequenceClassification", "sigmoid", "512 tokens", "token_type_ids:int64", "MiB", "Spearman"):
        assert expected in text
    for name in ("fp32", "optimized", "int8", "fp16"):
        assert f"    {name} " in text
    assert text.count("passed [") == 4
    assert crossrank_main(["info", str(real_model_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((real_model_folder / "crossrank.json").read_text())
