"""Loading a model folder: missing, corrupt or mismatched files and manifests give typed errors
naming the file (ModelFolderError, IntegrityError, ManifestError, VariantNotFoundError).

Split from the former tests/test_runtime.py. Uses the ``tiny_bert_folder`` fixture (the committed tiny
BERT, 1 label, sigmoid, every variant); tests that damage a folder work on a copy in ``tmp_path``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import copy_folder, edit_manifest

import crossrank
from crossrank import (
    InferenceError,
    IntegrityError,
    ManifestError,
    ModelFolderError,
    Reranker,
    VariantNotFoundError,
)
from crossrank.manifest import MANIFEST_NAME


# -- model folder problems -----------------------------------------------------------------------
def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="does not exist"):
        Reranker.load(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match=MANIFEST_NAME):
        Reranker.load(tmp_path)


def test_missing_model_file_names_it(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(ModelFolderError, match="model.int8.onnx") as ei:
        Reranker.load(folder, variant="int8")
    assert not isinstance(ei.value, IntegrityError)
    with pytest.raises(ModelFolderError, match="model.int8.onnx"):
        Reranker.load(folder, variant="int8", verify=False)
    assert Reranker.load(folder, variant="fp32").variant == "fp32"


def test_missing_tokenizer_names_it(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="tokenizer.json"):
        Reranker.load(folder)


def test_sha256_mismatch_is_an_integrity_error_naming_the_file(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
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
    folder = copy_folder(tiny_bert_folder, tmp_path)
    p = folder / "model.int8.onnx"
    p.write_bytes(b"this is not an onnx model" * 10)
    with pytest.raises(IntegrityError, match="model.int8.onnx"):
        Reranker.load(folder, variant="int8")
    with pytest.raises(ModelFolderError, match="model.int8.onnx.*cannot load") as ei:
        Reranker.load(folder, variant="int8", verify=False)
    assert ei.value.__cause__ is not None


def test_corrupt_tokenizer_is_a_model_folder_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="tokenizer.json"):
        Reranker.load(folder, verify=False)


def test_newer_schema_is_a_manifest_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
    edit_manifest(folder, lambda d: d.update(schema_version=crossrank.SCHEMA_VERSION + 1))
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME}.*schema_version"):
        Reranker.load(folder)


def test_invalid_manifest_json_is_a_manifest_error(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / MANIFEST_NAME).write_text("{")
    with pytest.raises(ManifestError, match=MANIFEST_NAME):
        Reranker.load(folder)


def test_manifest_inputs_not_matching_the_graph(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)

    def drop_token_types(d):
        d["inputs"] = [i for i in d["inputs"] if i["name"] != "token_type_ids"]

    edit_manifest(folder, drop_token_types)
    with pytest.raises(ModelFolderError, match=r"model\.onnx.*inputs.*do not match"):
        Reranker.load(folder, variant="fp32")

    folder2 = copy_folder(tiny_bert_folder, tmp_path / "b")
    edit_manifest(folder2, lambda d: [i.update(dtype="int32") for i in d["inputs"]])
    with pytest.raises(ModelFolderError, match="do not match"):
        Reranker.load(folder2, variant="fp32")


def test_manifest_num_labels_not_matching_the_graph(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
    edit_manifest(folder, lambda d: d.update(num_labels=2, labels=["no", "yes"], positive_label=1, activation="softmax"))
    with pytest.raises((ModelFolderError, InferenceError), match="labels|shape"):
        Reranker.load(folder, variant="fp32").score("q", ["d"])


def test_missing_variant_lists_what_the_folder_has(tiny_bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_bert_folder, tmp_path)
    edit_manifest(folder, lambda d: d["variants"].pop("int8"))
    with pytest.raises(VariantNotFoundError, match=r"'int8'.*fp32.*optimized") as ei:
        Reranker.load(folder, variant="int8")
    assert isinstance(ei.value, ValueError)
    # auto without int8 falls back to the optimized fp32 graph on CPU.
    assert Reranker.load(folder).variant == "optimized"
