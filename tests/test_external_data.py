"""Models over 2 GB: ONNX external data end to end (issue 8, item 4), on a tiny model forced onto that path.

A real 2 GB export is too slow for CI (docs/external-data.md records one); lowering
:data:`crossrank.export.external.EXTERNAL_DATA_BYTES` to 0 makes a tiny BERT take every step a
2 GB model takes: optimum's graph adopted with a side file, onnxruntime's fusions and the
last-layer pruning read and written with external data, static int8 calibrated and quantized from
it, fp16 converted from it, each file's sha256 in the manifest, the runtime loading, verifying and
caching it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import build_tiny_model, write_small_validation

from crossrank import Reranker
from crossrank.errors import IntegrityError, ModelFolderError
from crossrank.export import external
from crossrank.manifest import load_manifest, sha256_file

QUERY = "how do i export my data?"
DOCS = [
    "You can export data as CSV or JSON from the Settings page.",
    "Billing invoices can be downloaded from the account portal.",
    "why did my bread not rise " * 20,
    "export",
]


@pytest.fixture(scope="module")
def forced(tmp_path_factory: pytest.TempPathFactory):
    from crossrank.export import export_model

    root = tmp_path_factory.mktemp("external-data")
    src = build_tiny_model("bert", root / "src", num_labels=1)
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.setattr(external, "EXTERNAL_DATA_BYTES", 0)
    try:
        manifest = export_model(src, out, int8=True, fp16=True, validation=write_small_validation(root / "val.jsonl"), keep_failed=True)
    finally:
        mp.undo()
    return src, out, manifest


def torch_logits(src: Path) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(src).eval()
    enc = tok([QUERY] * len(DOCS), DOCS, truncation="only_second", max_length=128, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits[:, 0].numpy()


def test_every_variant_keeps_its_weights_in_a_listed_side_file(forced) -> None:
    import onnx

    _, out, m = forced
    assert m == load_manifest(out)
    assert set(m.variants) == {"fp32", "optimized", "int8", "fp16"}
    expected = {"crossrank.json", m.tokenizer.file}
    for name, v in m.variants.items():
        side = external.data_file_name(v.file)
        assert [d.file for d in v.data_files] == [side], name
        d = v.data_files[0]
        assert d.sha256 == sha256_file(out / side) and d.bytes == (out / side).stat().st_size > 0, name
        assert v.sha256 == sha256_file(out / v.file) and v.bytes == (out / v.file).stat().st_size
        graph = onnx.load(str(out / v.file), load_external_data=False)
        inline = [t.name for t in graph.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) > 1024]
        assert not inline, (name, inline)  # every large weight is in the side file
        assert external.data_files(out / v.file) == [side]
        expected |= {v.file, side}
    assert {p.name for p in out.iterdir()} == expected  # nothing else: no optimum "_data" file, no scratch


def test_external_variants_validate_like_single_files(forced) -> None:
    _, _, m = forced
    for name in ("fp32", "optimized", "fp16"):
        assert m.variants[name].validation["passed"] is True, (name, m.variants[name].validation)
    assert m.variants["fp32"].validation["max_abs_diff"] < 1e-5
    assert m.variants["optimized"].settings["last_layer_pruned"] is True
    assert m.variants["optimized"].settings["attention_fused"] is True
    int8 = m.variants["int8"]
    assert int8.settings["calibration"]["frozen_quantizers"] > 0 and int8.validation["spearman"] > 0.9


@pytest.mark.parametrize("variant,limit", [("fp32", 1e-4), ("optimized", 1e-4), ("int8", 0.25)])
def test_reranker_loads_caches_and_matches_pytorch(forced, tmp_path: Path, variant: str, limit: float) -> None:
    src, out, _ = forced
    want = torch_logits(src)
    cache = tmp_path / "cache"
    first = Reranker.load(out, variant=variant, cache_dir=cache)
    got = first.score(QUERY, DOCS, raw=True)
    assert np.abs(got - want).max() <= limit
    assert first._session.cached_graph is None
    entries = sorted(cache.glob("*.onnx"))
    assert len(entries) == 1
    assert len(list(cache.glob("*.onnx.data"))) == 1  # the optimized copy's weights, in its own side file
    second = Reranker.load(out, variant=variant, cache_dir=cache)
    assert second._session.cached_graph == entries[0]  # started from the cached graph and its side file
    assert np.array_equal(second.score(QUERY, DOCS, raw=True), got)
    assert np.array_equal(Reranker.load(out, variant=variant, cache_dir=False).score(QUERY, DOCS, raw=True), got)


def test_damaged_or_missing_side_file_is_named(forced, tmp_path: Path) -> None:
    _, out, m = forced
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    side = copy / m.variants["optimized"].data_files[0].file
    data = bytearray(side.read_bytes())
    data[len(data) // 2] ^= 0xFF
    side.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.opt\.onnx\.data: sha256"):
        Reranker.load(copy, variant="optimized", cache_dir=False)
    side.unlink()
    with pytest.raises(ModelFolderError, match=r"model\.opt\.onnx\.data.* missing"):
        Reranker.load(copy, variant="optimized", cache_dir=False)
    with pytest.raises(ModelFolderError, match=r"model\.opt\.onnx\.data.* missing"):
        Reranker.load(copy, variant="optimized", cache_dir=False, verify=False)


def test_weight_bytes_counts_shapes_not_serialized_size() -> None:
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.zeros(12, np.float32).tobytes(), raw=True)
    h = helper.make_tensor("h", TensorProto.FLOAT16, [5], np.zeros(5, np.float16).tobytes(), raw=True)
    c = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.INT64, [2], [1, 2]))
    graph = helper.make_graph([c], "g", [], [helper.make_tensor_value_info("c", TensorProto.INT64, [2])], initializer=[w, h])
    model = helper.make_model(graph)
    assert external.weight_bytes(model) == 12 * 4 + 5 * 2 + 2 * 8
    assert external.needs_external_data(model) is False  # the real threshold: 1.8 GB
