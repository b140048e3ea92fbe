"""Bad inputs to `crossrank export`: each one a clear typed error, one CLI line, nothing left behind."""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from tiny_models import build_bi_encoder, build_decoder, build_tiny_model, write_small_validation

from crossrank.cli import main as crossrank_main
from crossrank.errors import (
    ExportError,
    InvalidInputError,
    MissingDependencyError,
    OutputExistsError,
    SourceModelError,
    ValidationFailedError,
)
from crossrank.export import export_model
from crossrank.manifest import MANIFEST_NAME, load_manifest


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-errors")


@pytest.fixture(scope="module")
def tiny_bert(root: Path) -> Path:
    return build_tiny_model("bert", root / "tiny-bert", num_labels=1, activation="sigmoid")


@pytest.fixture(scope="module")
def small_validation(root: Path) -> Path:
    return write_small_validation(root / "small.jsonl")


def nothing_left(out: Path) -> bool:
    """True when neither the output nor any staging/aside folder of it exists."""
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.crossrank-")]
    return not out.exists() and not leftovers


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expect exit 1 and exactly one error line on stderr; return that line."""
    capsys.readouterr()
    rc = crossrank_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    errors = [line for line in err if line.startswith(f"crossrank {argv[0]}: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err  # one error line, and it is the last word
    assert not any(line.startswith("Traceback") for line in err)
    return errors[0]


# -- the source ----------------------------------------------------------------------------------
def test_missing_folder(root: Path, capsys) -> None:
    out = root / "out-missing"
    with pytest.raises(SourceModelError, match="does not exist"):
        export_model(root / "no-such-model", out)
    assert nothing_left(out)
    line = cli_error(capsys, ["export", str(root / "no-such-model"), str(out)])
    assert "no-such-model" in line and "does not exist" in line


def test_unreachable_hub_id_is_one_clear_line(root: Path, capsys) -> None:
    # No network here (or, with one, no such repository): either way one SourceModelError line.
    out = root / "out-hub"
    with pytest.raises(SourceModelError, match="crossrank-test-nonexistent/model"):
        export_model("crossrank-test-nonexistent/model", out)
    assert nothing_left(out)
    line = cli_error(capsys, ["export", "crossrank-test-nonexistent/model", str(out)])
    assert "Hugging Face hub" in line


def test_folder_without_config(root: Path) -> None:
    folder = root / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(SourceModelError, match=r"no config\.json \(found: notes\.txt\)"):
        export_model(folder, root / "out-noconfig")


def test_bi_encoder_is_refused(root: Path, capsys) -> None:
    folder = build_bi_encoder(root / "bi-encoder")
    out = root / "out-bi"
    with pytest.raises(SourceModelError, match="bi-encoder") as info:
        export_model(folder, out)
    assert "BertModel" in str(info.value) and "ForSequenceClassification" in str(info.value)
    assert nothing_left(out)
    assert "bi-encoder" in cli_error(capsys, ["export", str(folder), str(out)])


def test_bare_encoder_is_refused(root: Path) -> None:
    folder = build_bi_encoder(root / "bare")
    (folder / "modules.json").unlink()
    shutil.rmtree(folder / "1_Pooling")
    with pytest.raises(SourceModelError, match="BertModel .a bare encoder without a classification head."):
        export_model(folder, root / "out-bare")


def test_classifier_config_over_headless_weights_is_refused(root: Path) -> None:
    """A config claiming a classifier over weights without the head would export a random head."""
    folder = build_bi_encoder(root / "lying-config")
    (folder / "modules.json").unlink()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["BertForSequenceClassification"]
    cfg["id2label"], cfg["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceModelError, match=r"weights lack classifier\.(weight|bias)"):
        export_model(folder, root / "out-lying")


def test_decoder_is_refused(root: Path) -> None:
    folder = build_decoder(root / "gpt2")
    with pytest.raises(SourceModelError, match="decoder / generative model .GPT2LMHeadModel."):
        export_model(folder, root / "out-gpt2")


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_tokenizer_ids_beyond_the_embedding_table_are_refused(root: Path, small_validation: Path, arch: str, capsys) -> None:
    """Issue 8, item 7: a tokenizer that can emit id N over an N-row embedding is refused, both numbers named.

    The built-in pairs never hit the highest id, so validation alone passed such a model.
    """
    rows = json.loads((build_tiny_model(arch, root / f"{arch}-sized") / "config.json").read_text())["vocab_size"]
    folder = build_tiny_model(arch, root / f"{arch}-short-table", config_overrides={"vocab_size": rows - 1})
    out = root / f"out-{arch}-short-table"
    with pytest.raises(SourceModelError, match=rf"can emit token id {rows - 1} .* embedding table has {rows - 1} rows"):
        export_model(folder, out, validation=small_validation)
    assert nothing_left(out)
    line = cli_error(capsys, ["export", str(folder), str(out), "--validation", str(small_validation)])
    assert f"token id {rows - 1}" in line and f"has {rows - 1} rows" in line and "resize_token_embeddings" in line
    assert nothing_left(out)


def test_token_types_beyond_the_type_table_are_refused(root: Path, small_validation: Path) -> None:
    """The same kind for token types: a BERT with one token type whose tokenizer marks documents as type 1."""
    import transformers as tf

    folder = build_tiny_model("bert", root / "bert-two-type-tokenizer")
    config = tf.AutoConfig.from_pretrained(folder)
    config.type_vocab_size = 1
    model = tf.BertForSequenceClassification(config)
    model.save_pretrained(folder, safe_serialization=True)  # the tokenizer still gives documents type 1
    out = root / "out-bert-two-type-tokenizer"
    with pytest.raises(SourceModelError, match=r"document token type 1 but the model has type_vocab_size=1"):
        export_model(folder, out, validation=small_validation)
    assert nothing_left(out)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights(root: Path, tiny_bert: Path, damage: str, capsys) -> None:
    folder = root / f"corrupt-{damage}"
    shutil.copytree(tiny_bert, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        with weights.open("r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    else:
        weights.write_bytes(b"\x00not a safetensors file" * 10)
    out = root / f"out-corrupt-{damage}"
    with pytest.raises(SourceModelError, match=r"cannot load the weights .*model\.safetensors"):
        export_model(folder, out)
    assert nothing_left(out)
    assert "model.safetensors" in cli_error(capsys, ["export", str(folder), str(out)])


def test_pickle_weights_need_permission(root: Path, tiny_bert: Path, small_validation: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = root / "pickle-only"
    shutil.copytree(tiny_bert, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    out = root / "out-pickle"
    with pytest.raises(SourceModelError, match=r"only pickle weights \(pytorch_model\.bin\).*allow_pickle"):
        export_model(folder, out)
    assert nothing_left(out)
    manifest = export_model(folder, out, allow_pickle=True, validation=small_validation)
    assert manifest.variants["fp32"].validation["passed"] is True


def test_ambiguous_labels_need_a_positive_label(root: Path) -> None:
    folder = build_tiny_model("bert", root / "three-generic", num_labels=3)
    out = root / "out-three"
    with pytest.raises(SourceModelError, match=r"3 labels \(0=LABEL_0, 1=LABEL_1, 2=LABEL_2\).*positive_label") as info:
        export_model(folder, out)
    assert "--positive-label" in str(info.value)
    assert nothing_left(out)
    with pytest.raises(InvalidInputError, match="not one of the model's labels"):
        export_model(folder, out, positive_label="entailment")
    with pytest.raises(InvalidInputError, match="out of range"):
        export_model(folder, out, positive_label=3)


def test_bad_options(root: Path, tiny_bert: Path) -> None:
    out = root / "out-options"
    with pytest.raises(InvalidInputError, match="activation 'tanh'"):
        export_model(tiny_bert, out, activation="tanh")
    with pytest.raises(InvalidInputError, match="exceeds what .* can read \\(128"):
        export_model(tiny_bert, out, max_length=4096)
    with pytest.raises(InvalidInputError, match="only with int8"):
        export_model(tiny_bert, out, int8_scheme="static")
    with pytest.raises(InvalidInputError, match="does not exist"):
        export_model(tiny_bert, out, validation=root / "missing.jsonl")
    bad = root / "bad-validation.jsonl"
    bad.write_text('{"query": "q", "passage": "p"}\n{"query": 3}\n')
    with pytest.raises(InvalidInputError, match=r"bad-validation\.jsonl:2"):
        export_model(tiny_bert, out, validation=bad)
    with pytest.raises(SourceModelError, match="softmax .* needs at least 2 labels"):
        export_model(tiny_bert, out, activation="softmax")
    assert nothing_left(out)


def test_bad_int8_options(root: Path, tiny_bert: Path) -> None:
    out = root / "out-int8-options"
    with pytest.raises(InvalidInputError, match="int8_scheme 'fp8' is not one of static, dynamic"):
        export_model(tiny_bert, out, int8=True, int8_scheme="fp8")
    cal = root / "calibration.jsonl"
    cal.write_text(json.dumps({"query": "q", "document": "d"}) + "\n")
    with pytest.raises(InvalidInputError, match="only by the static int8 scheme"):
        export_model(tiny_bert, out, int8=True, int8_scheme="dynamic", calibration=cal)
    broken = root / "broken-calibration.jsonl"
    broken.write_text('{"query": "q"}\n')
    with pytest.raises(ExportError, match="broken-calibration.jsonl"):
        export_model(tiny_bert, out, int8=True, int8_scheme="static", calibration=broken)
    assert nothing_left(out)


def test_unknown_activation_in_config(root: Path) -> None:
    folder = build_tiny_model("bert", root / "tanh-model", num_labels=1)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Tanh"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceModelError, match="Tanh.*--activation"):
        export_model(folder, root / "out-tanh")


def test_missing_optimum_fails_only_when_forced(root: Path, tiny_bert: Path, monkeypatch) -> None:
    # without optimum-onnx, exporter="auto" uses torch.onnx (issue 12); forcing optimum says why not
    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"exporter='optimum' was forced but optimum-onnx"):
        export_model(tiny_bert, root / "out-nodeps", exporter="optimum")


def test_missing_export_extra_names_it(root: Path, tiny_bert: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "crossrank\[export\]"'):
        export_model(tiny_bert, root / "out-nodeps")


# -- the destination -------------------------------------------------------------------------------
def test_existing_foreign_folder_is_never_touched(root: Path, tiny_bert: Path, capsys) -> None:
    out = root / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    for force in (False, True):
        with pytest.raises(OutputExistsError, match="not a crossrank model folder"):
            export_model(tiny_bert, out, force=force)
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]
    assert (out / "thesis.txt").read_text() == "years of work"
    assert "never overwrites" in cli_error(capsys, ["export", str(tiny_bert), str(out), "--force"])
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]
    existing_file = root / "a-file"
    existing_file.write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        export_model(tiny_bert, existing_file)


@pytest.mark.parametrize("how", ["parent-is-a-file", "read-only-place"])
def test_unwritable_output_path(root: Path, tiny_bert: Path, how: str, capsys) -> None:
    if how == "parent-is-a-file":
        blocker = root / "blocker"
        blocker.write_text("a file, not a folder")
        out = blocker / "model"
    elif os.geteuid() != 0:
        ro = root / "read-only"
        ro.mkdir(exist_ok=True)
        ro.chmod(0o555)
        out = ro / "model"
    else:  # root ignores permission bits; /sys refuses new entries even to root
        out = Path("/sys/crossrank-test-output/model")
        try:
            out.parent.mkdir()
        except OSError:
            pass
        else:  # pragma: no cover - a writable /sys
            out.parent.rmdir()
            pytest.skip("no read-only location available to root on this machine")
    with pytest.raises(ExportError, match="cannot write to"):
        export_model(tiny_bert, out)
    assert not out.exists()
    assert "cannot write to" in cli_error(capsys, ["export", str(tiny_bert), str(out)])


def _fail_in_optimizer(monkeypatch, exc: BaseException) -> None:
    import crossrank.export.optimize as optimize

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(optimize, "optimize_graph", boom)


@pytest.mark.parametrize(
    "exc, expected",
    [
        (KeyboardInterrupt(), KeyboardInterrupt),
        (RuntimeError("fusion crashed"), ExportError),
        (OSError(errno.ENOSPC, "No space left on device"), ExportError),
    ],
    ids=["interrupt", "library-error", "disk-full"],
)
def test_failure_mid_export_leaves_nothing(root: Path, tiny_bert: Path, small_validation: Path, monkeypatch, exc, expected) -> None:
    out = root / f"out-mid-{type(exc).__name__}"
    _fail_in_optimizer(monkeypatch, exc)
    with pytest.raises(expected) as info:
        export_model(tiny_bert, out, validation=small_validation)
    if isinstance(exc, OSError):
        assert "disk full" in str(info.value)
    elif isinstance(exc, RuntimeError):
        assert "graph optimization failed: RuntimeError: fusion crashed" in str(info.value)
        assert info.value.__cause__ is exc
    assert nothing_left(out)


def test_force_replaces_a_crossrank_folder_and_survives_interruption(
    root: Path, tiny_bert: Path, small_validation: Path, monkeypatch
) -> None:
    out = root / "replace-me"
    first = export_model(tiny_bert, out, validation=small_validation)
    (out / "stale.txt").write_text("from the old export")
    with pytest.raises(OutputExistsError, match="already a crossrank model folder.*--force"):
        export_model(tiny_bert, out, validation=small_validation)
    # an interrupted forced export keeps the old folder exactly as it was
    with monkeypatch.context() as m:
        _fail_in_optimizer(m, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            export_model(tiny_bert, out, validation=small_validation, force=True)
    assert (out / "stale.txt").is_file() and load_manifest(out) == first
    assert not [p for p in root.iterdir() if p.name.startswith(".replace-me.crossrank-")]
    second = export_model(tiny_bert, out, validation=small_validation, force=True, fp16=True)
    assert not (out / "stale.txt").exists()
    assert "fp16" in second.variants and load_manifest(out) == second
    assert not [p for p in root.iterdir() if p.name.startswith(".replace-me.crossrank-")]


# -- validation failures ---------------------------------------------------------------------------
def test_failing_variant_is_left_out_and_named(root: Path, tiny_bert: Path, small_validation: Path, monkeypatch, capsys) -> None:
    from crossrank.export import validate

    monkeypatch.setitem(validate.THRESHOLDS, "optimized", {"max_abs_diff": 0.0})  # impossible to meet
    out = root / "out-failing"
    with pytest.raises(ValidationFailedError) as info:
        export_model(tiny_bert, out, validation=small_validation)
    assert set(info.value.failures) == {"optimized"}
    message = str(info.value)
    assert "optimized: max |Δ logit|" in message and "Spearman" in message and "56 pairs" in message
    assert "--keep-failed" in message
    manifest = load_manifest(out)  # the passing variants are written, the failing one is not
    assert set(manifest.variants) == {"fp32"}
    assert not (out / "model.opt.onnx").exists()

    kept = root / "out-kept"
    manifest = export_model(tiny_bert, kept, validation=small_validation, keep_failed=True)
    assert manifest.variants["optimized"].validation["passed"] is False
    assert (kept / "model.opt.onnx").is_file()

    line = cli_error(capsys, ["export", str(tiny_bert), str(root / "out-failing-cli"), "--validation", str(small_validation)])
    assert "optimized" in line and "max |Δ logit|" in line


def test_failing_fp32_writes_nothing(root: Path, tiny_bert: Path, small_validation: Path, monkeypatch) -> None:
    from crossrank.export import validate

    monkeypatch.setitem(validate.THRESHOLDS, "fp32", {"max_abs_diff": 0.0})
    out = root / "out-fp32-fails"
    with pytest.raises(ValidationFailedError, match="nothing written") as info:
        export_model(tiny_bert, out, validation=small_validation)
    assert "fp32" in info.value.failures
    assert nothing_left(out)
    assert not (out / MANIFEST_NAME).exists()
