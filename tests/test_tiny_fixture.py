"""The committed tiny model folder (tests/fixtures/tiny-bert) is what a fresh export writes today.

The runtime tests load the committed folder so that they run on the lean install; this module (full
install only) keeps it from rotting: a change to the exporter that changes the manifest or the scores
fails here until ``python tests/fixtures/regenerate.py`` is run again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossrank import Reranker
from crossrank.manifest import MANIFEST_NAME

COMMITTED = Path(__file__).resolve().parent / "fixtures" / "tiny-bert"
CPU_VARIANTS = ("fp32", "optimized", "int8")
# What may differ between two exports of the same model: where it ran from, when, how long it took,
# the library versions, the exporting CPU's instruction-set class (int8's isa_target: the fixture was
# regenerated on an AVX512-VNNI machine, CI may run on AVX2), and the figures that follow from bytes
# which onnx/onnxruntime releases may order differently (the scores below must still agree).
MEASURED = {"seconds", "created", "versions", "sha256", "bytes", "dataset", "isa_target",
            "max_abs_diff", "mean_abs_diff", "max_abs_diff_score", "spearman", "top1_agreement", "top5_agreement"}
STALE = "the committed tests/fixtures/tiny-bert is stale: run python tests/fixtures/regenerate.py"


def _described(manifest: dict[str, Any]) -> Any:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in MEASURED}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    out = strip(manifest)
    out["source"].pop("id")
    return out


def _pairs() -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    words = "data export import csv json settings page billing invoice account portal file format the a of to".split()
    docs = [" ".join(rng.choice(words, size=int(rng.integers(1, 150)))) for _ in range(40)] + ["", "😀 ünïcödé 中文"]
    return [(q, d) for q in ("how do i export my data", "billing") for d in docs]


def test_committed_manifest_matches_a_fresh_export(tiny_bert_export: Path) -> None:
    committed = json.loads((COMMITTED / MANIFEST_NAME).read_text(encoding="utf-8"))
    fresh = json.loads((tiny_bert_export / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert _described(committed) == _described(fresh), STALE
    assert sorted(p.name for p in COMMITTED.iterdir()) == sorted(p.name for p in tiny_bert_export.iterdir()), STALE


@pytest.mark.parametrize("variant", CPU_VARIANTS)
def test_committed_scores_equal_a_fresh_exports(tiny_bert_export: Path, tiny_bert_folder: Path, variant: str) -> None:
    pairs = _pairs()
    committed = Reranker.load(tiny_bert_folder, variant=variant, provider="cpu", cache_dir=False).score_pairs(pairs, raw=True)
    fresh = Reranker.load(tiny_bert_export, variant=variant, provider="cpu", cache_dir=False).score_pairs(pairs, raw=True)
    assert committed.shape == (len(pairs),) and np.ptp(committed) > 1e-3  # real, varied scores
    np.testing.assert_allclose(committed, fresh, atol=1e-6, rtol=0, err_msg=STALE)
