"""crossrank.export.add_variant / `crossrank export --add VARIANT FOLDER`: one variant added or
replaced in an existing folder, all or nothing.

A tiny random BERT is exported once with fp32 and optimized only; each test works on its own
copy. A failing add must leave the folder byte for byte as it was (every file, names included)
and no staging folder beside it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import build_tiny_model, write_small_validation

from crossrank import Reranker
from crossrank.cli import main as crossrank_main
from crossrank.errors import ExportError, InvalidInputError, ValidationFailedError
from crossrank.export import add_variant, export_model, read_pairs
from crossrank.manifest import MANIFEST_NAME, load_manifest, sha256_file


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("add-variant")


@pytest.fixture(scope="module")
def src(root: Path) -> Path:
    return build_tiny_model("bert", root / "tiny-bert", num_labels=1, activation="sigmoid")


@pytest.fixture(scope="module")
def small_validation(root: Path) -> Path:
    return write_small_validation(root / "small.jsonl")


@pytest.fixture(scope="module")
def base(root: Path, src: Path, small_validation: Path) -> Path:
    out = root / "base"
    export_model(src, out, validation=small_validation)
    return out


@pytest.fixture
def folder(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(base, out)
    return out


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_staging_left(folder: Path) -> bool:
    return not [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.crossrank-")]


def test_add_int8_matches_a_full_export(folder: Path, root: Path, src: Path, small_validation: Path) -> None:
    before = snapshot(folder)
    m = add_variant(folder, "int8", validation=small_validation, keep_failed=True)
    assert m == load_manifest(folder)  # what it returns is what the folder says
    assert list(m.variants) == ["fp32", "optimized", "int8"]
    after = snapshot(folder)
    # the other files are untouched; only the int8 file and the manifest are new
    assert {k: v for k, v in after.items() if k not in ("model.int8.onnx", MANIFEST_NAME)} == {
        k: v for k, v in before.items() if k != MANIFEST_NAME
    }
    int8 = m.variants["int8"]
    assert int8.sha256 == sha256_file(folder / "model.int8.onnx") and int8.precision == "int8" and int8.providers == ("cpu",)
    assert int8.settings["scheme"] == "static" and "added" in int8.settings
    assert int8.validation["pairs"] == len(read_pairs(small_validation).pairs) and isinstance(int8.validation["passed"], bool)
    # a full export with int8 writes the same bytes: one builder, the same input graph and calibration
    full = export_model(src, root / "full-int8", validation=small_validation, int8=True, keep_failed=True)
    assert full.variants["int8"].sha256 == int8.sha256
    assert full.variants["int8"].validation["spearman"] == int8.validation["spearman"]
    rr = Reranker.load(folder, variant="int8")
    scores = rr.score("how do i export my data?", ["csv export from settings", "billing portal"])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert no_staging_left(folder)


def test_replace_optimized_and_add_fp16_from_the_cli(folder: Path, src: Path, small_validation: Path) -> None:
    old = load_manifest(folder).variants["optimized"]
    assert old.settings["last_layer_pruned"] is True
    argv = ["export", "--add", "optimized", str(folder), "--source", str(src), "--validation", str(small_validation),
            "--no-prune-last-layer"]
    assert crossrank_main(argv) == 0
    m = load_manifest(folder)
    assert m.variants["optimized"].settings["last_layer_pruned"] is False
    assert m.variants["optimized"].sha256 != old.sha256 and m.variants["optimized"].validation["passed"] is True
    assert crossrank_main(["export", "--add", "fp16", str(folder), "--validation", str(small_validation)]) == 0
    m = load_manifest(folder)
    assert m.variants["fp16"].validation["passed"] is True and m.variants["fp16"].settings["converted_from"] == "optimized"
    assert m.variants["fp16"].sha256 == sha256_file(folder / "model.fp16.onnx")
    assert no_staging_left(folder)


def test_failing_validation_leaves_the_folder_byte_identical(folder: Path, small_validation: Path, monkeypatch) -> None:
    from crossrank.export import validate

    before = snapshot(folder)
    monkeypatch.setitem(validate.THRESHOLDS, "optimized", {"max_abs_diff": 0.0})  # impossible to meet
    with pytest.raises(ValidationFailedError, match="optimized: max .* is unchanged") as err:
        add_variant(folder, "optimized", validation=small_validation)
    assert set(err.value.failures) == {"optimized"}
    assert snapshot(folder) == before and no_staging_left(folder)


def test_failing_builder_leaves_the_folder_byte_identical(folder: Path, small_validation: Path, monkeypatch) -> None:
    from crossrank.export import quantize

    before = snapshot(folder)
    real = quantize.quantize_int8

    def half_written(src_onnx, dst_onnx, **kwargs):
        Path(dst_onnx).write_bytes(b"half a graph")
        raise RuntimeError("disk went away")

    monkeypatch.setattr(quantize, "quantize_int8", half_written)
    with pytest.raises(ExportError, match="int8 quantization failed: RuntimeError: disk went away"):
        add_variant(folder, "int8", validation=small_validation)
    assert snapshot(folder) == before and no_staging_left(folder)
    # the same when replacing a variant the folder has: the old one stays, bytes and manifest
    monkeypatch.setattr(quantize, "quantize_int8", real)
    add_variant(folder, "int8", validate=False)
    before = snapshot(folder)
    monkeypatch.setattr(quantize, "quantize_int8", half_written)
    with pytest.raises(ExportError, match="disk went away"):
        add_variant(folder, "int8", validate=False)
    assert snapshot(folder) == before and no_staging_left(folder)


def test_unreachable_reference_is_refused_unless_validation_is_skipped(folder: Path, root: Path, small_validation: Path) -> None:
    moved = root / "moved-src"
    src = build_tiny_model("bert", root / "gone-src", num_labels=1, activation="sigmoid")
    out = root / "gone-export"
    export_model(src, out, validation=small_validation)
    src.rename(moved)  # the source the manifest records is gone
    before = snapshot(out)
    with pytest.raises(ExportError, match=r"PyTorch reference is unreachable: the source the manifest records .*--no-validate"):
        add_variant(out, "int8")
    assert snapshot(out) == before and no_staging_left(out)
    m = add_variant(out, "int8", validate=False)
    assert m.variants["int8"].validation == {"skipped": True}
    assert Reranker.load(out, variant="int8").score("q", ["d"]).shape == (1,)
    m = add_variant(out, "int8", source=moved, validation=small_validation, keep_failed=True)  # --source finds it
    assert m.variants["int8"].validation["pairs"] == len(read_pairs(small_validation).pairs)


def test_a_different_source_model_is_refused(folder: Path, root: Path) -> None:
    other = build_tiny_model("xlm-roberta", root / "other-src", num_labels=3)
    before = snapshot(folder)
    with pytest.raises(ExportError, match="not the model it was exported from"):
        add_variant(folder, "fp16", source=other)
    assert snapshot(folder) == before


def test_bad_requests(folder: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(InvalidInputError, match="variant 'fp32' cannot be added"):
        add_variant(folder, "fp32")
    with pytest.raises(InvalidInputError, match="int8_scheme 'fp8'"):
        add_variant(folder, "int8", int8_scheme="fp8")
    with pytest.raises(InvalidInputError, match="apply only when adding int8"):
        add_variant(folder, "fp16", int8_scheme="static")
    with pytest.raises(InvalidInputError, match="validate must be True or False"):
        add_variant(folder, "fp16", validate="no")
    with pytest.raises(ExportError, match="not a crossrank model folder"):
        add_variant(tmp_path, "int8")
    (folder / "model.opt.onnx").write_bytes(b"changed")
    before = snapshot(folder)
    with pytest.raises(ExportError, match=r"model\.opt\.onnx: sha256 .* differs"):
        add_variant(folder, "int8", validate=False)
    assert snapshot(folder) == before
    m = json.loads((folder / MANIFEST_NAME).read_text())
    del m["variants"]["optimized"]
    (folder / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(ExportError, match=r"built from the optimized variant, which the folder lacks \(add it first"):
        add_variant(folder, "fp16", validate=False)
    for argv, message in (
        (["export", "--add", "int8", str(folder), str(tmp_path / "x")], "--add takes one FOLDER"),
        (["export", "--add", "int8", str(folder), "--fp16"], "--fp16 do not apply with --add"),
        (["export", str(folder)], "needs SOURCE and OUT"),
        (["export", str(folder), str(tmp_path / "y"), "--no-validate"], "only with --add"),
    ):
        capsys.readouterr()
        assert crossrank_main(argv) == 1
        assert message in capsys.readouterr().err


def test_int8_levers_from_the_cli_are_built_validated_and_recorded(folder: Path, src: Path, small_validation: Path) -> None:
    """--int8-smoothing-alpha, --int8-calibration-percentile and --int8-fp32-ffn-down-layers reach
    quantize_int8 (the manifest records what was built) and the variant still passes its
    validation against PyTorch."""
    rc = crossrank_main(["export", "--add", "int8", str(folder), "--source", str(src), "--validation", str(small_validation),
                         "--int8-smoothing-alpha", "0.85", "--int8-calibration-percentile", "99.999",
                         "--int8-fp32-ffn-down-layers", "1"])
    assert rc == 0
    spec = load_manifest(folder).variants["int8"]
    assert spec.settings["fp32_ffn_down_layers"] == 1 and len(spec.settings["kept_fp32_nodes"]) == 1
    assert spec.settings["smoothing"]["alpha"] == 0.85 and spec.settings["smoothing"]["inputs_migrated"] > 0
    assert spec.settings["calibration"]["method"] == "Percentile" and spec.settings["calibration"]["percentile"] == 99.999
    assert spec.validation["passed"] is True
    scores = Reranker.load(folder, variant="int8", provider="cpu", cache_dir=False).score("q", ["a b c", "d"])
    assert np.isfinite(scores).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"int8_smoothing_alpha": 1.5}, r"int8_smoothing_alpha must be a number in \[0, 1\]"),
    ({"int8_smoothing_alpha": True}, r"int8_smoothing_alpha must be a number"),
    ({"int8_calibration_percentile": 50}, r"int8_calibration_percentile must be a number in \(50, 100\]"),
    ({"int8_calibration_percentile": 99.9, "int8_scheme": "dynamic"}, "apply only to the static int8 scheme"),
    ({"int8_fp32_ffn_down_layers": -1}, r"int8_fp32_ffn_down_layers must be an integer >= 0"),
    ({"int8_fp32_ffn_down_layers": 2.0}, r"int8_fp32_ffn_down_layers must be an integer >= 0"),
])
def test_int8_lever_values_are_checked_before_anything_is_built(folder: Path, kwargs: dict, message: str) -> None:
    before = snapshot(folder)
    with pytest.raises(InvalidInputError, match=message):
        add_variant(folder, "int8", validate=False, **kwargs)
    with pytest.raises(InvalidInputError, match="apply only when adding int8"):
        add_variant(folder, "fp16", validate=False, int8_smoothing_alpha=0.5)
    with pytest.raises(InvalidInputError, match="apply only when adding int8"):
        add_variant(folder, "fp16", validate=False, int8_fp32_ffn_down_layers=1)
    assert snapshot(folder) == before
