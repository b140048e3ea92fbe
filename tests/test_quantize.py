"""crossrank.export.quantize: calibration files, argument errors, and what each int8 scheme writes.

The graph-level tests quantize a tiny random BERT's fused graph (exported with optimum and
optimized the way the exporter does), so they check structure and batch invariance, not quality:
quality on the real model is measured by benchmarks/int8_study.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossrank.errors import ExportError, InvalidInputError
from crossrank.export import quantize
from crossrank.export.pairs import PairsFileError
from crossrank.export.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_CALIBRATION_PERCENTILE,
    DEFAULT_FP32_FFN_DOWN_LAYERS,
    DEFAULT_INT8_SCHEME,
    DEFAULT_SMOOTHING_ALPHA,
    INT8_SCHEMES,
    SOURCE_VARIANT,
    detect_isa,
    load_calibration_pairs,
    quantize_int8,
)

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
# every operator quantized, no scale migration: what the mechanics tests below count
BARE = {"fp32_ffn_down_layers": 0, "smoothing_alpha": 0}


# --------------------------------------------------------------------------------------------
# calibration pairs
# --------------------------------------------------------------------------------------------
def test_builtin_calibration_set_is_varied() -> None:
    pairs = load_calibration_pairs(None)
    assert 100 <= len(pairs) <= 200
    assert all(isinstance(q, str) and isinstance(d, str) and q.strip() for q, d in pairs)
    words = sorted(len(d.split()) for _, d in pairs)
    assert words[0] < 15 and words[-1] > 300  # one-line snippets up to passages past 512 tokens
    assert len({q for q, _ in pairs}) >= 40
    assert pairs == load_calibration_pairs(quantize.BUILTIN_CALIBRATION)


def test_user_calibration_file(tmp_path: Path) -> None:
    f = tmp_path / "cal.jsonl"
    f.write_text(
        json.dumps({"query": "q1", "document": "d1", "label": 1}) + "\n\n" + json.dumps({"query": "q2", "document": ""}) + "\n",
        encoding="utf-8",
    )
    assert load_calibration_pairs(f) == [("q1", "d1"), ("q2", "")]


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"query": "a", "document": "b"}', '{"query": "a", "document": '], r":2: not a JSON line"),
        (['["a", "b"]'], r":1: each line must be a JSON object"),
        (['{"query": "a"}'], r":1: needs a string 'passage'"),
        (['{"query": 3, "document": "b"}'], r":1: 'query' must be a string"),
        (['{"query": "  ", "document": "b"}'], r":1: 'query' is empty"),
        (["", "   "], r"holds no query/passage pairs"),
    ],
)
def test_bad_calibration_file_names_file_and_line(tmp_path: Path, lines: list[str], match: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # one reader and one error class for calibration and validation files (crossrank.export.pairs)
    with pytest.raises(PairsFileError, match=match) as info:
        load_calibration_pairs(f)
    assert isinstance(info.value, ExportError) and isinstance(info.value, InvalidInputError)
    assert str(f) in str(info.value)


def test_missing_and_undecodable_calibration_file(tmp_path: Path) -> None:
    with pytest.raises(PairsFileError, match="does not exist"):
        load_calibration_pairs(tmp_path / "nope.jsonl")
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"query": "caf\xe9", "document": "x"}\n')
    with pytest.raises(PairsFileError, match="cannot read calibration file"):
        load_calibration_pairs(f)


def test_public_constants_and_isa() -> None:
    assert INT8_SCHEMES == ("static", "dynamic")
    assert DEFAULT_INT8_SCHEME in INT8_SCHEMES
    assert set(SOURCE_VARIANT) == set(INT8_SCHEMES) and set(SOURCE_VARIANT.values()) <= {"fp32", "optimized"}
    isa = detect_isa()
    assert isinstance(isa, str) and isa
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if " avx2" in flags and "vnni" not in flags and "avx512f" not in flags:
        assert isa == "avx2"


# --------------------------------------------------------------------------------------------
# graphs
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from optimum.exporters.onnx import main_export
    from tiny_models import build_tiny_model
    from transformers import AutoConfig

    from crossrank.export.optimize import optimize_graph

    root = tmp_path_factory.mktemp("tiny-quant")
    hf = build_tiny_model("bert", root / "hf", num_labels=1)
    main_export(str(hf), root / "onnx", task="text-classification")
    plain = root / "onnx" / "model.onnx"
    opt = root / "model.opt.onnx"
    settings = optimize_graph(plain, opt, model_type="bert", config=AutoConfig.from_pretrained(hf))
    assert settings.get("attention_fused") is True
    return {"plain": plain, "opt": opt, "tokenizer": root / "onnx" / "tokenizer.json"}


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _batch(tokenizer: Path, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    tok.enable_truncation(max_length=128, strategy="only_second")
    encs = tok.encode_batch(pairs)
    n, width = len(encs), max(len(e.ids) for e in encs)
    feed = {k: np.zeros((n, width), np.int64) for k in NAMES}
    for i, e in enumerate(encs):
        feed["input_ids"][i, : len(e.ids)] = e.ids
        feed["attention_mask"][i, : len(e.ids)] = 1
        feed["token_type_ids"][i, : len(e.ids)] = e.type_ids
    return feed


PAIRS = [
    ("how do i export my data", "you can export data as csv or json from the settings page"),
    ("how do i export my data", "billing"),
    ("reset password", "to reset your password open the account page and send the email " * 6),
    ("coffee", "tea and coffee are served with milk in the station cafe before the train"),
]


def _scores(path: Path, tokenizer: Path) -> tuple[np.ndarray, np.ndarray]:
    """(scores of PAIRS in one padded batch, scores of each pair alone)."""
    s = _session(path)
    together = s.run(None, _batch(tokenizer, PAIRS))[0][:, 0]
    alone = np.array([s.run(None, _batch(tokenizer, [p]))[0][0, 0] for p in PAIRS])
    return together, alone


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _quantize(graphs: dict[str, Path], dst: Path, scheme: str, **kw) -> dict:
    args = dict(calibration_pairs=None, tokenizer_json=graphs["tokenizer"], input_names=NAMES, max_length=128)
    args.update(kw)
    return quantize_int8(graphs["opt"], dst, scheme=scheme, **args)


def test_static_int8_freezes_scales_and_is_batch_invariant(tiny_graphs, tmp_path: Path) -> None:
    dst = tmp_path / "model.int8.onnx"
    settings = _quantize(tiny_graphs, dst, "static")
    ops = _ops(dst)
    assert "DynamicQuantizeLinear" not in ops and "DynamicQuantizeMatMul" not in ops
    assert {"QAttention", "QuantizeLinear", "MatMulIntegerToFloat"} <= ops
    assert settings["scheme"] == "static" and settings["batch_invariant"] is True
    assert settings["reduce_range"] is True and settings["per_channel"] is True
    assert settings["isa_target"] == detect_isa()
    # counted in the written graph: layer 0 QAttention + 3 MatMulIntegerToFloat; the last layer,
    # pruned to [CLS] by optimize_graph, 5 (query, packed key/value, output, two feed-forward);
    # by default the feed-forward down-projections of the first three layers (both of these) stay fp32
    assert DEFAULT_FP32_FFN_DOWN_LAYERS >= 2 and settings["fp32_ffn_down_layers"] == 2
    assert len(settings["kept_fp32_nodes"]) == 2 and all("/output/dense/" in n for n in settings["kept_fp32_nodes"])
    assert settings["attention_quantized"] == 1 and settings["nodes_quantized"] == settings["nodes_targeted"] == 7
    assert settings["matmul_integer_to_float"] == 6
    cal = settings["calibration"]
    assert cal["method"] == "MinMax" and cal["source"] == "built-in"
    assert cal["pairs"] == len(load_calibration_pairs(None)) and cal["frozen_quantizers"] == 7
    assert settings["smoothing"]["alpha"] == DEFAULT_SMOOTHING_ALPHA and settings["smoothing"]["inputs_migrated"] > 0
    json.dumps(settings)  # goes into the manifest as it is
    # everything quantized, no migration: the operators the scheme can quantize
    bare = _quantize(tiny_graphs, tmp_path / "bare.onnx", "static", fp32_ffn_down_layers=0, smoothing_alpha=0)
    assert bare["nodes_quantized"] == bare["nodes_targeted"] == 9 and bare["matmul_integer_to_float"] == 8
    import onnx

    assert bare["smoothing"] is None
    assert not any(n.name.endswith("_smooth") for n in onnx.load(str(tmp_path / "bare.onnx")).graph.node)
    assert any(n.name.endswith("_smooth") for n in onnx.load(str(dst)).graph.node)

    together, alone = _scores(dst, tiny_graphs["tokenizer"])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    ref, _ = _scores(tiny_graphs["opt"], tiny_graphs["tokenizer"])
    assert not np.array_equal(together, ref)  # int8 maths happened...
    assert np.abs(together - ref).max() < 0.5 * (np.abs(ref).max() + 1e-3)  # ...and it is still the model


def test_static_int8_user_calibration_pairs_change_the_scales(tiny_graphs, tmp_path: Path) -> None:
    import onnx

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    _quantize(tiny_graphs, a, "static")
    settings = _quantize(tiny_graphs, b, "static", calibration_pairs=[("coffee", "tea")])
    assert settings["calibration"]["source"] == "user" and settings["calibration"]["pairs"] == 1

    def scales(p: Path) -> dict[str, float]:
        g = onnx.load(str(p)).graph
        init = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
        return {n.input[1]: float(init[n.input[1]]) for n in g.node if n.op_type == "QuantizeLinear"}

    sa, sb = scales(a), scales(b)
    assert sa.keys() == sb.keys() and any(sa[k] != sb[k] for k in sa)


def _quantizer_scales(path: Path) -> dict[str, float]:
    """Each static QuantizeLinear's constant scale, by the tensor it quantizes."""
    import onnx

    g = onnx.load(str(path)).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in g.node if n.op_type == "QuantizeLinear"}


def test_percentile_calibration_clips_ranges_and_stays_batch_invariant(tiny_graphs, tmp_path: Path) -> None:
    assert DEFAULT_CALIBRATION_METHOD == "minmax" and set(CALIBRATION_METHODS) == {"minmax", "percentile"}
    minmax, clipped, full = tmp_path / "minmax.onnx", tmp_path / "p99.onnx", tmp_path / "p100.onnx"
    _quantize(tiny_graphs, minmax, "static", **BARE)
    settings = _quantize(tiny_graphs, clipped, "static", **BARE, calibration_method="percentile", calibration_percentile=99.0)
    cal = settings["calibration"]
    assert cal["method"] == "Percentile" and cal["percentile"] == 99.0
    assert cal["histogram_bins"] == quantize.PERCENTILE_BINS and cal["frozen_quantizers"] == 9
    json.dumps(settings)
    default = _quantize(tiny_graphs, tmp_path / "pdefault.onnx", "static", **BARE, calibration_method="percentile")
    assert default["calibration"]["percentile"] == DEFAULT_CALIBRATION_PERCENTILE
    _quantize(tiny_graphs, full, "static", **BARE, calibration_method="percentile", calibration_percentile=100)

    m, c, f = _quantizer_scales(minmax), _quantizer_scales(clipped), _quantizer_scales(full)
    assert m.keys() == c.keys() == f.keys() and len(m) == 9
    # clipping 1% of the values at each end narrows every range, most of them clearly
    assert all(c[k] <= m[k] * (1 + 1e-6) for k in m)
    assert sum(c[k] < 0.9 * m[k] for k in m) >= 5
    # the 100th percentile is MinMax again, to within one histogram bin of the range
    for k in m:
        assert abs(f[k] - m[k]) <= m[k] * 255 / quantize.PERCENTILE_BINS + 1e-9

    together, alone = _scores(clipped, tiny_graphs["tokenizer"])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)  # still static scales: batch-invariant
    ref, _ = _scores(tiny_graphs["opt"], tiny_graphs["tokenizer"])
    mm, _ = _scores(minmax, tiny_graphs["tokenizer"])
    assert not np.array_equal(together, mm)  # the clipped ranges reach the scores


@pytest.mark.parametrize(
    ("options", "scheme", "match"),
    [
        (dict(calibration_method="entropy"), "static", "unknown calibration method 'entropy'; choose one of minmax, percentile"),
        (dict(calibration_percentile=99.99), "static", "applies only to calibration_method='percentile'"),
        (dict(calibration_method="percentile", calibration_percentile=50), "static", r"in \(50, 100\]"),
        (dict(calibration_method="percentile", calibration_percentile=100.5), "static", r"in \(50, 100\]"),
        (dict(calibration_method="percentile", calibration_percentile=True), "static", r"in \(50, 100\]"),
        (dict(calibration_method="percentile", calibration_percentile="99.9"), "static", r"in \(50, 100\]"),
        (dict(calibration_method="percentile"), "dynamic", "only to the static int8 scheme, not 'dynamic'"),
        (dict(smoothing_alpha=0.5), "dynamic", "smoothing_alpha applies only to the static int8 scheme"),
        (dict(smoothing_alpha=1.5), "static", r"smoothing_alpha must be a number in \[0, 1\]"),
        (dict(smoothing_alpha=True), "static", r"smoothing_alpha must be a number in \[0, 1\]"),
    ],
)
def test_calibration_option_errors(tiny_graphs, tmp_path: Path, options: dict, scheme: str, match: str) -> None:
    dst = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match=match):
        _quantize(tiny_graphs, dst, scheme, **options)
    assert not dst.exists()


def test_scale_migration_is_exact_in_fp32_and_flattens_the_ranges(tiny_graphs, tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    model = onnx.load(str(tiny_graphs["opt"]))
    targets = quantize._nodes_to_quantize(model)
    feeds = quantize._calibration_feeds(
        load_calibration_pairs(None)[:40], tokenizer_json=tiny_graphs["tokenizer"],
        input_types=quantize._input_types(model), input_names=NAMES, max_length=128, num_special_tokens_pair=0,
    )
    smoothed = tmp_path / "smoothed.onnx"
    migrated = quantize._smooth(onnx, onnxruntime, tiny_graphs["opt"], smoothed, targets, feeds, 0.5)
    assert migrated == len(set(targets.values())) and migrated >= 5
    ops = [n for n in onnx.load(str(smoothed)).graph.node if n.name.endswith("_smooth")]
    assert len(ops) == migrated and {n.op_type for n in ops} == {"Mul"}
    ref, _ = _scores(tiny_graphs["opt"], tiny_graphs["tokenizer"])
    got, _ = _scores(smoothed, tiny_graphs["tokenizer"])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)  # the same function in fp32...

    # ...whose quantized inputs have flatter channels: the largest channel max over the median one
    def spread(path: Path, tensors: list[str]) -> list[float]:
        m = onnx.load(str(path))
        for t in tensors:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
        sess = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = sess.run(tensors, feeds[0])
        return [float(np.abs(v).max(axis=(0, 1)).max() / np.median(np.abs(v).max(axis=(0, 1)))) for v in outs]

    before = spread(tiny_graphs["opt"], sorted(set(targets.values())))
    after = spread(smoothed, sorted(f"{t}_smoothed" for t in set(targets.values())))
    assert np.mean(after) < np.mean(before)


def test_static_int8_with_scale_migration(tiny_graphs, tmp_path: Path) -> None:
    plain, smooth = tmp_path / "plain.onnx", tmp_path / "smooth.onnx"
    _quantize(tiny_graphs, plain, "static", **BARE)
    settings = _quantize(tiny_graphs, smooth, "static", fp32_ffn_down_layers=0, smoothing_alpha=0.5)
    assert settings["smoothing"] == {"method": "SmoothQuant", "alpha": 0.5, "inputs_migrated": 9}
    assert settings["nodes_quantized"] == settings["nodes_targeted"] == 9
    assert "Mul" in _ops(smooth) and "DynamicQuantizeLinear" not in _ops(smooth)
    json.dumps(settings)
    together, alone = _scores(smooth, tiny_graphs["tokenizer"])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)  # static scales: batch-invariant
    ref, _ = _scores(tiny_graphs["opt"], tiny_graphs["tokenizer"])
    base, _ = _scores(plain, tiny_graphs["tokenizer"])
    assert not np.array_equal(together, base)
    assert np.abs(together - ref).max() < 0.5 * (np.abs(ref).max() + 1e-3)
    assert _quantize(tiny_graphs, plain, "static", smoothing_alpha=0)["smoothing"] is None  # off, and said so


def test_keep_fp32_leaves_the_named_operators_unquantized(tiny_graphs, tmp_path: Path) -> None:
    import onnx

    names = list(quantize._nodes_to_quantize(onnx.load(str(tiny_graphs["opt"]))))
    attention = [n for n in names if n.startswith("Attention")]
    keep = attention + [names[-1]]
    dst = tmp_path / "keep.onnx"
    settings = _quantize(tiny_graphs, dst, "static", fp32_ffn_down_layers=0, keep_fp32=keep)
    assert settings["kept_fp32_nodes"] == sorted(keep)
    assert settings["nodes_targeted"] == settings["nodes_quantized"] == len(names) - len(keep)
    assert settings["attention_quantized"] == 0 and settings["calibration"]["frozen_quantizers"] == len(names) - len(keep)
    nodes = {n.name: n.op_type for n in onnx.load(str(dst)).graph.node}
    assert all(nodes.get(n) in ("Attention", "MatMul") for n in keep)  # still the fp32 operators
    assert "QAttention" not in nodes.values()
    together, alone = _scores(dst, tiny_graphs["tokenizer"])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    assert "kept_fp32_nodes" not in _quantize(tiny_graphs, tmp_path / "all.onnx", "static", fp32_ffn_down_layers=0)
    with pytest.raises(ExportError, match="'nope' is not a quantizable operator"):
        _quantize(tiny_graphs, tmp_path / "x.onnx", "static", keep_fp32=["nope"])
    with pytest.raises(ExportError, match="sequence of node names, not the string"):
        _quantize(tiny_graphs, tmp_path / "x.onnx", "static", keep_fp32=names[0])
    with pytest.raises(ExportError, match="once keep_fp32 is left out"):
        _quantize(tiny_graphs, tmp_path / "x.onnx", "static", fp32_ffn_down_layers=0, keep_fp32=names)


def test_dynamic_int8_keeps_per_call_scales(tiny_graphs, tmp_path: Path) -> None:
    dst = tmp_path / "model.int8.onnx"
    settings = _quantize(tiny_graphs, dst, "dynamic", calibration_pairs=None)
    assert "DynamicQuantizeLinear" in _ops(dst) and "QAttention" in _ops(dst)
    assert settings["scheme"] == "dynamic" and settings["calibration"] is None
    assert settings["batch_invariant"] is False


def test_quantize_argument_errors(tiny_graphs, tmp_path: Path) -> None:
    dst = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match="unknown int8 scheme 'fp8'"):
        _quantize(tiny_graphs, dst, "fp8")
    with pytest.raises(ExportError, match="does not exist"):
        quantize_int8(tmp_path / "missing.onnx", dst, scheme="static", calibration_pairs=None,
                      tokenizer_json=tiny_graphs["tokenizer"], input_names=NAMES, max_length=128)
    with pytest.raises(ExportError, match="'pixel_values' is not an input"):
        _quantize(tiny_graphs, dst, "static", input_names=["input_ids", "pixel_values"])
    with pytest.raises(ExportError, match="at least one calibration pair"):
        _quantize(tiny_graphs, dst, "static", calibration_pairs=[])
    with pytest.raises(ExportError, match="max_length"):
        _quantize(tiny_graphs, dst, "static", max_length=0)
    with pytest.raises(ExportError, match="cannot load tokenizer"):
        _quantize(tiny_graphs, dst, "static", tokenizer_json=tmp_path / "no-tokenizer.json")
    assert not dst.exists()


def test_onnxruntime_failures_become_export_errors(tiny_graphs, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(tiny_graphs["opt"].read_bytes()[:5000])
    dst = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match="broken.onnx") as info:
        quantize_int8(broken, dst, scheme="dynamic", calibration_pairs=None,
                      tokenizer_json=tiny_graphs["tokenizer"], input_names=NAMES, max_length=128)
    assert info.value.__cause__ is not None
    assert not dst.exists()




def test_a_failed_write_leaves_the_destination_as_it_was(tiny_graphs, tmp_path: Path, monkeypatch) -> None:
    import onnx

    dst = tmp_path / "model.int8.onnx"
    dst.write_bytes(b"an earlier, good file")
    real_save = onnx.save

    def save_then_fail(model, f, *args, **kwargs):
        real_save(model, f, *args, **kwargs)
        if str(tmp_path) in str(f):  # the int8 file itself (not quantize's own scratch graphs)...
            raise OSError(28, "No space left on device")  # ...is written, then the disk fills

    monkeypatch.setattr(onnx, "save", save_then_fail)
    with pytest.raises(ExportError, match="No space left on device") as info:
        _quantize(tiny_graphs, dst, "static")
    assert isinstance(info.value.__cause__, OSError)
    assert dst.read_bytes() == b"an earlier, good file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.int8.onnx"]  # no staging leftovers


def test_fp32_ffn_down_layers_keeps_the_leading_down_projections(tiny_graphs, tmp_path: Path) -> None:
    import onnx

    graph = onnx.load(str(tiny_graphs["opt"]))
    producer = {o: n for n in graph.graph.node for o in n.output}
    down = quantize._ffn_down_projections(graph)
    # one per encoder layer, in layer order, each reading the fused GELU's output
    layers = len({n.name.split("/layer.")[1].split("/")[0] for n in graph.graph.node if "/layer." in n.name})
    assert len(down) == layers >= 2
    assert [int(n.split("/layer.")[1].split("/")[0]) for n in down] == list(range(layers))
    assert all(producer[n.input[0]].op_type in ("BiasGelu", "Gelu", "FastGelu")
               for n in graph.graph.node if n.name in down)
    # the unfused erf GELU of the plain graph is recognised too
    assert len(quantize._ffn_down_projections(onnx.load(str(tiny_graphs["plain"])))) == layers

    dst = tmp_path / "ffn1.onnx"
    settings = _quantize(tiny_graphs, dst, "static", fp32_ffn_down_layers=1)
    assert settings["kept_fp32_nodes"] == [down[0]] and settings["fp32_ffn_down_layers"] == 1
    nodes = {n.name: n.op_type for n in onnx.load(str(dst)).graph.node}
    assert nodes.get(down[0]) == "MatMul" and nodes.get(down[1]) != "MatMul"
    together, alone = _scores(dst, tiny_graphs["tokenizer"])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)  # still batch-invariant
    # more layers than the graph has: every down-projection, and the count says how many
    settings = _quantize(tiny_graphs, tmp_path / "all.onnx", "static", fp32_ffn_down_layers=99)
    assert settings["kept_fp32_nodes"] == sorted(down) and settings["fp32_ffn_down_layers"] == layers
    # 0 keeps none and says so
    settings = _quantize(tiny_graphs, tmp_path / "none.onnx", "dynamic", fp32_ffn_down_layers=np.int64(0))
    assert "kept_fp32_nodes" not in settings and settings["fp32_ffn_down_layers"] == 0
    for bad in (-1, True, 1.5, "2"):
        with pytest.raises(ExportError, match="fp32_ffn_down_layers must be an integer >= 0"):
            _quantize(tiny_graphs, tmp_path / "x.onnx", "static", fp32_ffn_down_layers=bad)


def test_fp32_ffn_down_layers_names_a_graph_without_gelu(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((4, 1), np.float32), "w2")
    nodes = [helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="down")]
    g = helper.make_graph(nodes, "relu-ffn", [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", 4]) for n in NAMES],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 1])], [w, w2])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert quantize._ffn_down_projections(onnx.load(str(src))) == []
    # a bare Tanh in front of a weight MatMul is not a GELU
    g.node[2].op_type = "Tanh"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert quantize._ffn_down_projections(onnx.load(str(src))) == []
    with pytest.raises(ExportError, match=r"fp32_ffn_down_layers=2 \(export option int8_fp32_ffn_down_layers, "
                       r"--int8-fp32-ffn-down-layers\): relu.onnx has no feed-forward down-projection.*pass 0"):
        quantize_int8(src, tmp_path / "x.onnx", scheme="static", calibration_pairs=None, tokenizer_json=tmp_path / "t.json",
                      input_names=NAMES, max_length=128, fp32_ffn_down_layers=2)
    assert not (tmp_path / "x.onnx").exists()
