"""Small pieces of crossrank.export that need no model: pairs files, figures, label and activation rules."""
from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from crossrank.errors import ExportError, InvalidInputError, OutputExistsError, SourceModelError
from crossrank.export import read_pairs
from crossrank.export.options import ExportOptions
from crossrank.export.pairs import PairsFileError
from crossrank.export.pairs import builtin_validation_path
from crossrank.export.source import resolve_activation, resolve_positive_label
from crossrank.export.validate import check_thresholds, spearman
from crossrank.export.writer import StagedFolder, check_destination


# -- pairs files -------------------------------------------------------------------------------
def test_pairs_file_formats_and_groups(tmp_path: Path) -> None:
    f = tmp_path / "pairs.jsonl"
    rows = [
        {"query": "q1", "passage": "a"},
        {"query": "q2", "documents": ["b", "c"]},
        {},  # replaced by a blank line below
        {"queries": ["q1", "q3"], "passages": ["d", "e"]},
        {"query": "q2", "text": "f"},
    ]
    f.write_text("\n".join("" if not r else json.dumps(r) for r in rows) + "\n")
    ps = read_pairs(f)
    assert ps.pairs == (("q1", "a"), ("q2", "b"), ("q2", "c"), ("q1", "d"), ("q1", "e"), ("q3", "d"), ("q3", "e"), ("q2", "f"))
    assert ps.groups == ((0, 3, 4), (1, 2, 7), (5, 6))
    assert ps.source == str(f) and ps.num_queries == 3
    gz = tmp_path / "pairs.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as g:
        g.write(f.read_text())
    assert read_pairs(gz).pairs == ps.pairs


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no query/passage pairs"),
        ("not json\n", r":1: not a JSON line"),
        ('{"query": "q"}\n', r":1: needs a string 'passage'"),
        ('{"query": "q", "passages": ["a", 3]}\n', r":1: needs a string 'passage'"),
        ('{"passage": "p"}\n', r":1: 'query' must be a string"),
        ('[1, 2]\n', r":1: each line must be a JSON object"),
        ('{"query": " ", "passage": "p"}\n', r":1: 'query' is empty"),
    ],
)
def test_bad_pairs_files(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    # one error class for validation and calibration files: an input error that stops an export
    for what in ("validation", "calibration"):
        with pytest.raises(PairsFileError, match=message) as info:
            read_pairs(f, what=what)
        assert isinstance(info.value, InvalidInputError) and isinstance(info.value, ExportError)


def test_calibration_files_are_pairs_files(tmp_path: Path) -> None:
    """The committed calibration set and a user's {"query", "document", "label"} lines read with the one reader."""
    from crossrank.export.quantize import BUILTIN_CALIBRATION, load_calibration_pairs

    ps = read_pairs(None, what="calibration")
    assert ps.source == "built-in" and len(ps.pairs) == 179
    assert ps.pairs == read_pairs(BUILTIN_CALIBRATION).pairs
    assert load_calibration_pairs(None) == list(ps.pairs)
    f = tmp_path / "cal.jsonl"
    f.write_text(json.dumps({"query": "q1", "document": "d1", "label": 1}) + "\n")
    assert read_pairs(f, what="calibration").pairs == (("q1", "d1"),)


def test_builtin_validation_set() -> None:
    ps = read_pairs(None)
    assert ps.source == "built-in" and builtin_validation_path().is_file()
    assert ps.num_queries == 40 and len(ps.pairs) == 304
    sizes = [len(g) for g in ps.groups]
    assert min(sizes) >= 7  # top-5 agreement is meaningful for every query
    words = [len(d.split()) for _, d in ps.pairs]
    assert min(words) < 15 and max(words) > 600  # short passages and ones far over 512 tokens


# -- figures -----------------------------------------------------------------------------------
def test_spearman() -> None:
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ties take average ranks: x ranks [1, 2.5, 2.5, 4]; y ranks [1, 2, 3, 4] -> Pearson of the ranks
    x, y = np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert spearman(np.ones(4), np.arange(4.0)) == 0.0


def test_check_thresholds() -> None:
    assert check_thresholds("fp32", {"max_abs_diff": 5e-5}) == []
    assert check_thresholds("fp32", {"max_abs_diff": 2e-4}) == ["max |Δ logit| 0.0002 > 0.0001"]
    assert check_thresholds("fp16", {"max_abs_diff": 1.5e-2}) == []
    assert check_thresholds("int8", {"spearman": 0.995, "max_abs_diff": 0.3}) == []
    assert check_thresholds("int8", {"spearman": 0.98}) == ["Spearman 0.9800 < 0.99"]
    assert check_thresholds("fp32", {"nonfinite": 3, "max_abs_diff": None}) == ["3 non-finite logits", "max_abs_diff could not be measured"]
    assert check_thresholds("fp16", {"error": "CPUExecutionProvider cannot run it: x"}) == ["CPUExecutionProvider cannot run it: x"]


# -- labels and activation ---------------------------------------------------------------------
def test_positive_label_rules() -> None:
    assert resolve_positive_label(("LABEL_0",), None) == 0
    assert resolve_positive_label(("contradiction", "entailment", "neutral"), None) == 1
    assert resolve_positive_label(("not_relevant", "Relevant"), None) == 1  # whole-name match, any case
    assert resolve_positive_label(("LABEL_0", "LABEL_1", "LABEL_2"), "LABEL_2") == 2
    assert resolve_positive_label(("LABEL_0", "LABEL_1", "LABEL_2"), "label_1") == 1
    assert resolve_positive_label(("LABEL_0", "LABEL_1", "LABEL_2"), "2") == 2
    assert resolve_positive_label(("a", "b"), 0) == 0
    with pytest.raises(SourceModelError, match="none is obviously"):
        resolve_positive_label(("LABEL_0", "LABEL_1"), None)
    with pytest.raises(SourceModelError, match="several look relevant"):
        resolve_positive_label(("yes", "relevant", "no"), None)
    with pytest.raises(InvalidInputError, match="out of range"):
        resolve_positive_label(("a", "b"), 2)
    with pytest.raises(InvalidInputError, match="label name or index"):
        resolve_positive_label(("a", "b"), True)


def _src(num_labels: int, raw: dict) -> SimpleNamespace:
    return SimpleNamespace(num_labels=num_labels, raw_config=raw)


@pytest.mark.parametrize(
    "raw, labels, expected",
    [
        ({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"}}, 1, "sigmoid"),
        ({"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}}, 1, "identity"),
        ({"sentence_transformers": {"activation_fn": "torch.nn.Softmax"}}, 3, "softmax"),
        ({"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}, 1, "identity"),
        # the newer key wins over the older one
        (
            {
                "sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"},
                "sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity",
            },
            1,
            "sigmoid",
        ),
        ({}, 1, "sigmoid"),  # CrossEncoder's default for one label
        ({}, 3, "softmax"),
    ],
)
def test_activation_from_config(raw: dict, labels: int, expected: str) -> None:
    activation, origin = resolve_activation(_src(labels, raw), None)
    assert activation == expected and origin


def test_activation_override_and_errors() -> None:
    assert resolve_activation(_src(1, {"sentence_transformers": {"activation_fn": "torch.nn.Sigmoid"}}), "identity")[0] == "identity"
    with pytest.raises(SourceModelError, match="Tanh"):
        resolve_activation(_src(1, {"sentence_transformers": {"activation_fn": "torch.nn.Tanh"}}), None)
    with pytest.raises(SourceModelError, match="at least 2 labels"):
        resolve_activation(_src(1, {}), "softmax")
    with pytest.raises(InvalidInputError):
        resolve_activation(_src(1, {}), "relu")


# -- destination rules -------------------------------------------------------------------------
def test_destination_rules(tmp_path: Path) -> None:
    check_destination(tmp_path / "new", force=False)  # absent: fine
    empty = tmp_path / "empty"
    empty.mkdir()
    check_destination(empty, force=False)  # an empty folder holds nothing to lose
    (empty / "x").write_text("x")
    with pytest.raises(OutputExistsError):
        check_destination(empty, force=True)


def test_staged_folder_cleans_up_on_error(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with StagedFolder(out, force=False) as stage:
            assert stage.path is not None and stage.path.parent == tmp_path
            (stage.path / "model.onnx").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_commit_into_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    with StagedFolder(out, force=False) as stage:
        (stage.work / "scratch.bin").write_bytes(b"scratch")
        (stage.path / "crossrank.json").write_text("{}")
        stage.commit()
    assert sorted(p.name for p in out.iterdir()) == ["crossrank.json"]  # the scratch folder is gone
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# -- quiet libraries ---------------------------------------------------------------------------
def test_quiet_libraries_restores_everything() -> None:
    from crossrank.export.quiet import quiet_libraries

    lg = logging.getLogger("optimum.crossrank_test")
    lg.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            assert lg.level == logging.ERROR
            warnings.warn("noise", UserWarning)
        warnings.warn("after", UserWarning)
    assert lg.level == logging.INFO
    assert [str(w.message) for w in caught] == ["after"]


# -- import cost -------------------------------------------------------------------------------
def test_importing_the_exporter_and_cli_is_cheap() -> None:
    code = (
        "import sys, crossrank.export, crossrank.export.cli, crossrank.info_cli, crossrank.cli\n"
        "crossrank.cli.build_parser()\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- hub sources (the hub is not reachable here: its client is replaced) ------------------------
def test_hub_id_is_fetched_and_recorded(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub
    from tiny_models import build_tiny_model

    from crossrank.export.source import resolve_source

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = build_tiny_model("bert", tmp_path / "snapshots" / commit, num_labels=1)
    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    src = resolve_source("some-org/tiny-reranker", revision="v1.0")
    assert (src.id, src.local, src.revision, src.commit) == ("some-org/tiny-reranker", False, "v1.0", commit)
    assert src.folder == snapshot and src.architecture == "BertForSequenceClassification"
    (repo, revision, patterns), = calls
    assert (repo, revision) == ("some-org/tiny-reranker", "v1.0")
    assert "model.safetensors" in patterns and not any(p.endswith(".bin") for p in patterns)  # no pickle by default

    # a repository with pickle weights only: the download filter skipped them, the error says why
    (snapshot / "model.safetensors").unlink()
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: ["config.json", "pytorch_model.bin"])
    with pytest.raises(SourceModelError, match=r"'some-org/tiny-reranker' at revision 'v1.0' has only pickle weights"):
        resolve_source("some-org/tiny-reranker", revision="v1.0")


def test_revision_for_a_local_folder_is_an_error(tmp_path: Path) -> None:
    from crossrank.export.source import resolve_source

    with pytest.raises(InvalidInputError, match="revision='main' applies to hub ids only"):
        resolve_source(tmp_path, revision="main")


def test_export_cli_passes_the_pruning_choice(monkeypatch, tmp_path: Path) -> None:
    import crossrank.export as exporter
    from crossrank.cli import main
    from crossrank.errors import ExportError
    from crossrank.export import export_model

    seen: dict = {}

    def fake_export(source, out, **kwargs):
        seen.clear()
        seen.update(kwargs)
        raise ExportError("stopped by the test")

    monkeypatch.setattr(exporter, "export_model", fake_export)
    # the command line builds the same validated ExportOptions the Python API does
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "out"), "--no-prune-last-layer"]) == 1
    assert isinstance(seen["options"], ExportOptions) and seen["options"].prune_last_layer is False
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "out")]) == 1
    assert seen["options"].prune_last_layer is True
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "out"), "--int8", "--calibration", "c.jsonl"]) == 1
    assert seen["options"] == ExportOptions(int8=True, int8_scheme="static", calibration=Path("c.jsonl"))
    monkeypatch.undo()
    with pytest.raises(InvalidInputError, match="prune_last_layer must be True or False"):
        export_model(tmp_path / "src", tmp_path / "out", prune_last_layer="no")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(int8="yes"), "int8 must be True or False"),
        (dict(fp16=1), "fp16 must be True or False"),
        (dict(keep_failed=None), "keep_failed must be True or False"),
        (dict(activation="tanh"), "activation 'tanh' is not one of"),
        (dict(opset=13), "opset must be an integer >= 14"),
        (dict(opset=True), "opset must be an integer >= 14"),
        (dict(max_length="128"), "max_length must be an integer"),
        (dict(positive_label=1.5), "positive_label must be a label name or index"),
        (dict(revision=""), "revision must be a non-empty string"),
        (dict(validation=3), "validation must be a file path"),
        (dict(int8_scheme="static"), "apply only with int8"),
        (dict(int8=True, int8_scheme="fp8"), "int8_scheme 'fp8' is not one of static, dynamic"),
        (dict(int8=True, int8_scheme="dynamic", calibration="c.jsonl"), "only by the static int8 scheme"),
        (dict(int8_fp32_ffn_down_layers=2), "int8_fp32_ffn_down_layers apply only with int8"),
        (dict(int8=True, int8_fp32_ffn_down_layers=-1), "int8_fp32_ffn_down_layers must be an integer >= 0"),
        (dict(int8=True, int8_fp32_ffn_down_layers=False), "int8_fp32_ffn_down_layers must be an integer >= 0"),
    ],
)
def test_export_options_name_the_wrong_option(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        ExportOptions(**kwargs)


def test_export_options_are_frozen_and_resolved() -> None:
    import dataclasses

    opts = ExportOptions(int8=True, fp16=True, validation="~/v.jsonl")
    assert opts.int8_scheme == "static" and opts.validation == Path("~/v.jsonl").expanduser()
    assert opts.variants == ("fp32", "optimized", "int8", "fp16")
    assert ExportOptions().variants == ("fp32", "optimized")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.int8 = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        ExportOptions(int8_schem="static")  # type: ignore[call-arg]  # a typo is an error, not ignored


def test_export_model_refuses_options_twice(tmp_path: Path) -> None:
    from crossrank.export import export_model

    with pytest.raises(InvalidInputError, match="not both .*int8"):
        export_model(tmp_path / "src", tmp_path / "out", int8=True, options=ExportOptions())


# -- dummy trace inputs and token ranges (issue 8, items 3 and 7) -------------------------------
def test_dummy_inputs_are_folded_into_the_models_tables() -> None:
    import torch

    from crossrank.export.onnx_export import DummyLimits, clamp_dummy_inputs

    raw = {
        "input_ids": torch.arange(40).reshape(2, 20),
        "token_type_ids": torch.ones(2, 20, dtype=torch.int64),
        "attention_mask": torch.ones(2, 20, dtype=torch.int64),
    }
    out = clamp_dummy_inputs(dict(raw), DummyLimits(token_rows=7, type_rows=1, sequence_length=20))
    assert int(out["input_ids"].max()) == 6 and int(out["input_ids"].min()) == 0
    assert int(out["token_type_ids"].max()) == 0
    assert out["attention_mask"] is raw["attention_mask"]
    out = clamp_dummy_inputs(dict(raw), DummyLimits(token_rows=100, type_rows=2, sequence_length=20))
    assert torch.equal(out["input_ids"], raw["input_ids"]) and torch.equal(out["token_type_ids"], raw["token_type_ids"])
    assert int(clamp_dummy_inputs(dict(raw), DummyLimits(100, None, 20))["token_type_ids"].max()) == 0  # no type table


@pytest.mark.parametrize("arch", ["xlm-roberta", "deberta-v2"])
def test_tiny_unigram_tokenizers_fit_the_embedding_they_size(arch: str) -> None:
    """The fixtures' Unigram vocabulary listed a piece twice: ids ran one past len(tokenizer)."""
    from tiny_models import _deberta_tokenizer, _xlmr_tokenizer

    from crossrank.export.tokenizer import highest_token_id

    tok = (_xlmr_tokenizer if arch == "xlm-roberta" else _deberta_tokenizer)(128)
    top, _ = highest_token_id(tok)
    assert top == len(tok) - 1  # the builders give the model len(tokenizer) embedding rows


def test_highest_token_id_sees_ids_a_duplicate_piece_hides() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -1.0), ("a", -2.0)], unk_id=0))
    )
    from crossrank.export.tokenizer import highest_token_id

    assert highest_token_id(tok)[0] == 3
