"""int8 quantization of an exported cross-encoder graph for the CPU.

Two schemes, :data:`INT8_SCHEMES`; both quantize the ORT-optimized (fused) graph
``model.opt.onnx`` (variant ``optimized``, see *Source graph* below):

``static`` (the default, :data:`DEFAULT_INT8_SCHEME`)
    Weights int8, symmetric, one scale per output channel, 7-bit range. Activations uint8 with a
    scale and zero point *calibrated once* (MinMax over representative query/passage pairs by
    default; see *Calibration range* below), after SmoothQuant-style scale migration (alpha
    :data:`DEFAULT_SMOOTHING_ALPHA`, *Scale migration*), and frozen into the graph as constants: every ``DynamicQuantizeLinear`` that dynamic quantization
    would put in front of a quantized operator becomes a ``QuantizeLinear`` with the calibrated
    constants, and each ``MatMulInteger -> Cast -> Mul(scale)`` chain becomes one
    ``com.microsoft.MatMulIntegerToFloat``. Quantized: the fused ``Attention`` (as ``QAttention``:
    the packed Q/K/V projection), the attention-output and both feed-forward projections of every
    layer but the feed-forward down-projection of the first :data:`DEFAULT_FP32_FFN_DOWN_LAYERS`
    layers (*fp32 down-projections*). fp32: those, embeddings, LayerNorm/SkipLayerNorm, GELU, the
    softmax and attention products inside the attention kernel, the pooler and the classifier.
    Because every scale is a constant and the integer products are exact, batch mates and padding
    no longer enter a pair's quantization; what remains is the fp32 kernels' summation order
    (measured: max |Δ logit| = 0 between one padded batch of 100, length-sorted batches of 32 and
    one pair at a time, TREC DL 2020 candidates; the tests allow 1e-6).

``dynamic``
    The same weights and operators, but activation scales computed from the data on every call
    (``DynamicQuantizeLinear``). No calibration, but each scale is taken over the whole padded
    batch, so a pair's score moves with its batch companions (measured: up to 0.6 logit), and
    the min/max pass costs time on every call.

Static is the default: it ranks as well as dynamic, is as fast, and is the only exactly
batch-invariant one; the measurements and the commands that made them are in
``docs/int8-scheme.md``. Its migration and fp32 down-projections (since issue 14) keep the ranking
of fp32 per query more closely, on three relevance sets: ``docs/int8-fidelity.md``.

Source graph
    ``model.opt.onnx``: ONNX Runtime's transformer fusions pack Q/K/V into a com.microsoft
    ``Attention`` whose integer form ``QAttention`` keeps the fused attention kernel, and
    LayerNorm/GELU/bias stay fused around the integer MatMuls. Quantizing the plain graph
    (``model.onnx``) with QDQ gives the same accuracy only after extra repairs (uint8 activations,
    no quantized MatMul outputs, the residual stream kept out of the QDQ pairs) and runs the
    attention unfused, a little slower. :data:`SOURCE_VARIANT` maps each scheme to the variant
    whose file to pass. Where the optimized graph's last layer was pruned to the [CLS] position
    (:mod:`crossrank.export.prune`), that layer has no ``Attention``: its query and packed
    key/value projections are plain weight MatMuls and are quantized like the others (one
    ``QAttention`` fewer, two ``MatMulIntegerToFloat`` more). Graphs the optimizer could not fuse attention in (DeBERTa-v2, ModernBERT,
    or its basic-passes fallback) work too: their weight MatMuls are quantized the same way
    (``source_fused_ops`` and ``attention_quantized`` in the settings say what was there).

7-bit weights everywhere
    The u8 x s8 integer kernels of x86 CPUs without VNNI (AVX2, AVX-512F/BW) add pairs of products
    in 16 bits (``vpmaddubsw``) and saturate with full-range weights; 7-bit weights cannot
    saturate. The int8 file is built with ``reduce_range`` whatever CPU builds it, so it stays
    correct wherever it is copied; on this model that costs no measurable accuracy. The build
    machine's instruction set is recorded as ``isa_target`` (:func:`detect_isa`).

External data
    A source graph over 2 GB (weights in ``model.opt.onnx.data``, :mod:`crossrank.export.external`)
    is inspected without loading its weights, calibrated and quantized from its side file; the
    int8 graph, a quarter of the weights, is one file again unless it still exceeds
    :data:`~crossrank.export.external.EXTERNAL_DATA_BYTES`.

Calibration pairs
    :func:`load_calibration_pairs` reads any pairs file (:mod:`crossrank.export.pairs`, e.g. JSON
    Lines ``{"query": ..., "document": ...}``); with no path it returns the built-in set
    ``data/calibration.jsonl`` (invented English search/RAG pairs, short and long passages,
    relevant and not). Calibration feeds one pair per batch, encoded by the runtime's own
    ``PairEncoder`` (:func:`crossrank.export.pairs.encode_batches`), so no padding enters the
    ranges. Use the ``max_length`` the runtime will use.

Calibration range
    ``calibration_method`` (:data:`CALIBRATION_METHODS`) says how the calibrated activations
    become each quantizer's range. ``"minmax"`` (the default, :data:`DEFAULT_CALIBRATION_METHOD`)
    takes the smallest and largest value seen. ``"percentile"`` runs the calibration pairs twice:
    the first pass finds each tensor's MinMax, the second fills a histogram of
    :data:`PERCENTILE_BINS` bins over it, and the range becomes the ``(100 - p)``-th and ``p``-th
    percentiles (``calibration_percentile``, default :data:`DEFAULT_CALIBRATION_PERCENTILE`), so a
    few outliers stop widening every other value's step; values outside clip. MinMax stays the
    default: measured on TREC DL 2020, WikiQA and SciFact (``docs/int8-fidelity.md``), 99.99
    clipped the outlier channels this model needs (max |Δ logit| 3.5 against 0.8) and 99.999 was
    MinMax within noise.

Scale migration (``smoothing_alpha``)
    SmoothQuant-style: a few input channels of a projection carry activations tens of times
    larger than the rest, and one per-tensor uint8 scale must cover them. With
    ``smoothing_alpha=a`` (static only) each quantized operator's input channel j is divided by
    ``s_j = max|X_j|^a / max|W_j,:|^(1-a)`` (``max|X_j|`` over the calibration pairs, ``W_j,:``
    the weight row it multiplies, s clipped to [1e-2, 1e2]) and that row multiplied by it: exact
    in fp32, flatter activations, a little wider weights (per-channel int8 over output channels).
    In this post-LayerNorm graph a LayerNorm's output also feeds the residual, so its gamma/beta
    cannot absorb ``1/s``; a ``Mul`` by the constant ``1/s`` goes in front of the quantized
    operator alone (one per distinct input; the feed-forward down-projection, whose input is the
    GELU output, is migrated the same way). ``smoothing_alpha=0`` turns migration off (SmoothQuant's
    own alpha-0 point, all of the weights' range moved onto the activations, is of no use: 0.3
    already cost 9% of WikiQA nDCG@10). Measured (``docs/int8-fidelity.md``): alone, alpha 0.85
    cut mean |Δ logit| against fp32 by 30-38% but lowered WikiQA nDCG@10; alpha 0.7 together with
    the fp32 down-projections of the first three layers (the default) cut it by 55-61% and raised
    per-query Spearman, top-1 and top-5 agreement on TREC DL 2020, WikiQA and SciFact while
    keeping >= 99.79% of fp32's nDCG@10 on each; alpha <= 0.5 hurt.

fp32 down-projections (``fp32_ffn_down_layers``)
    The feed-forward down-projection reads the GELU output, the activation with the widest, most
    skewed range of a layer, and its uint8 step makes the largest rounding error of the graph
    (measured per operator group and per layer in ``docs/int8-fidelity.md``: the first layers'
    matter most). ``fp32_ffn_down_layers=n`` leaves that projection fp32 in the first ``n``
    encoder layers. It is found by structure, not by name: the weight ``MatMul`` that reads a
    GELU output (fused ``Gelu`` / ``BiasGelu`` / ``FastGelu`` / ``QuickGelu``, the erf or tanh
    form, or GeGLU's product), in graph order, so the option works for every family the exporter
    supports. Each layer kept runs a third of that layer's weight products in fp32 (default
    :data:`DEFAULT_FP32_FFN_DOWN_LAYERS`: the first three, half of MiniLM-L6's layers, a quarter
    of a 12-layer model's; 0 quantizes them all).
"""
from __future__ import annotations

import logging
import numbers
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from crossrank.atomic import mkdtemp
from crossrank.cpu import cpu_flags
from crossrank.errors import ExportError, MissingDependencyError

from .external import data_file_name, needs_external_data
from .pairs import builtin_calibration_path, encode_batches, read_pairs

__all__ = [
    "INT8_SCHEMES",
    "DEFAULT_INT8_SCHEME",
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_METHOD",
    "DEFAULT_CALIBRATION_PERCENTILE",
    "DEFAULT_FP32_FFN_DOWN_LAYERS",
    "DEFAULT_SMOOTHING_ALPHA",
    "SOURCE_VARIANT",
    "BUILTIN_CALIBRATION",
    "load_calibration_pairs",
    "quantize_int8",
    "detect_isa",
]

logger = logging.getLogger("crossrank.export.quantize")

INT8_SCHEMES = ("static", "dynamic")
DEFAULT_INT8_SCHEME = "static"
# Which variant's graph each scheme quantizes (see the module docstring for why).
SOURCE_VARIANT = {"static": "optimized", "dynamic": "optimized"}
BUILTIN_CALIBRATION = builtin_calibration_path()
# How calibrated activations become a quantizer's range (module docstring, *Calibration range*).
CALIBRATION_METHODS = ("minmax", "percentile")
DEFAULT_CALIBRATION_METHOD = "minmax"
# 99.999: the default of onnxruntime's own percentile calibrator (onnxruntime.quantization.calibrate);
# it clips one value in 100,000 at each end.
DEFAULT_CALIBRATION_PERCENTILE = 99.999
# Histogram resolution of the percentile pass: 2**14 bins over a MinMax range of tens puts the
# chosen bound within ~1e-3 of the exact percentile, far below one uint8 step (range / 255).
PERCENTILE_BINS = 1 << 14
# Leading encoder layers whose feed-forward down-projection stays fp32 (module docstring,
# *fp32 down-projections*; measured in docs/int8-fidelity.md).
DEFAULT_FP32_FFN_DOWN_LAYERS = 3
# SmoothQuant alpha of static int8 (module docstring, *Scale migration*; docs/int8-fidelity.md).
DEFAULT_SMOOTHING_ALPHA = 0.7

# Operators only ORT's transformer optimizer writes: one of them means the graph is the fused one.
_FUSED_OPS = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "EmbedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "BiasGelu",
        "FastGelu",
        "GemmFastGelu",
    }
)
_QUANTIZED_OP_TYPES = ("MatMul", "Attention")
_INPUT_VALUES = ("input_ids", "attention_mask", "token_type_ids")


# --------------------------------------------------------------------------------------------
# Calibration pairs
# --------------------------------------------------------------------------------------------
def load_calibration_pairs(path: Path | str | None = None) -> list[tuple[str, str]]:
    """Read calibration pairs: any pairs file :func:`crossrank.export.pairs.read_pairs` reads
    (e.g. JSON Lines ``{"query": str, "document": str}``).

    Args:
        path: the file; None reads the built-in set (:data:`BUILTIN_CALIBRATION`).

    Returns:
        ``(query, document)`` pairs in file order.

    Raises:
        PairsFileError: the file is missing, unreadable or malformed (file and line named).
    """
    return list(read_pairs(path, what="calibration").pairs)


# --------------------------------------------------------------------------------------------
# Instruction set
# --------------------------------------------------------------------------------------------
def detect_isa() -> str:
    """The build CPU's integer-GEMM instruction-set class.

    One of ``avx512_vnni``, ``avx_vnni``, ``avx512``, ``avx2``, ``x86_64`` (x86 without AVX2),
    ``arm64_i8mm``, ``arm64_dotprod``, ``arm64``, or the machine name elsewhere. Read from
    :func:`crossrank.cpu.cpu_flags` where Linux reports them; elsewhere only the architecture is known.
    """
    machine = platform.machine().lower()
    flags = cpu_flags()  # crossrank.cpu: the one /proc/cpuinfo reader
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "arm64_i8mm"
        if "asimddp" in flags:
            return "arm64_dotprod"
        return "arm64"
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        if "avx512_vnni" in flags or "avx512vnni" in flags:
            return "avx512_vnni"
        if "avx_vnni" in flags or "avxvnni" in flags:
            return "avx_vnni"
        if "avx512f" in flags and "avx512bw" in flags:
            return "avx512"
        if "avx2" in flags:
            return "avx2"
        return "x86_64"
    return machine or "unknown"


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------
def quantize_int8(
    src_onnx: Path,
    dst_onnx: Path,
    *,
    scheme: str,
    calibration_pairs: list[tuple[str, str]] | None,
    tokenizer_json: Path,
    input_names: list[str],
    max_length: int,
    num_special_tokens_pair: int = 0,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    calibration_percentile: float | None = None,
    smoothing_alpha: float | None = None,
    fp32_ffn_down_layers: int | None = None,
    keep_fp32: Sequence[str] = (),
) -> dict:
    """Quantize ``src_onnx`` to int8, write ``dst_onnx``, and return the settings for the manifest.

    ``scheme`` is one of :data:`INT8_SCHEMES`; ``src_onnx`` is the graph of variant
    ``SOURCE_VARIANT[scheme]`` (the ORT-optimized one). ``calibration_pairs`` (static only;
    ``None`` = the built-in set), ``tokenizer_json``, ``input_names`` (the graph inputs the runtime
    feeds), ``max_length`` and ``num_special_tokens_pair`` (the manifest's; 0: what the
    tokenizer's template adds) make the calibration inputs exactly as the runtime makes them.
    ``calibration_method`` (static only; :data:`CALIBRATION_METHODS`) and, for ``"percentile"``,
    ``calibration_percentile`` (a percent in (50, 100]; None = :data:`DEFAULT_CALIBRATION_PERCENTILE`)
    choose how the calibrated values become ranges (module docstring, *Calibration range*).
    ``smoothing_alpha`` (static only; in [0, 1]; None = :data:`DEFAULT_SMOOTHING_ALPHA`; 0 = no
    migration) moves activation outliers into the weights first (module docstring, *Scale
    migration*). ``fp32_ffn_down_layers`` (an int
    >= 0; None = :data:`DEFAULT_FP32_FFN_DOWN_LAYERS`) leaves the feed-forward down-projections of
    that many leading encoder layers in fp32 (module docstring, *fp32 down-projections*); an
    explicit count > 0 on a graph with no such projection is an error. ``keep_fp32`` names operators
    (graph node names, each an ``Attention`` or weight ``MatMul`` that would be quantized) to leave
    in fp32: the per-operator sensitivity trial of ``docs/int8-fidelity.md``.
    Every failure raises :class:`~crossrank.errors.ExportError`, an onnxruntime error as its
    ``__cause__``; the file is written atomically, so a failure leaves ``dst_onnx`` as it was.
    """
    if scheme not in INT8_SCHEMES:
        raise ExportError(f"unknown int8 scheme {scheme!r}; choose one of {', '.join(INT8_SCHEMES)}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4:
        raise ExportError(f"max_length must be an integer >= 4, got {max_length!r}")
    src_onnx, dst_onnx, tokenizer_json = Path(src_onnx), Path(dst_onnx), Path(tokenizer_json)
    if not src_onnx.is_file():
        raise ExportError(f"source graph {src_onnx} does not exist")
    if scheme == "static" and calibration_pairs is not None and not calibration_pairs:
        raise ExportError("static int8 needs at least one calibration pair (got an empty list)")
    percentile = _check_calibration_method(scheme, calibration_method, calibration_percentile)
    if smoothing_alpha is not None:
        if scheme != "static":
            raise ExportError(f"smoothing_alpha applies only to the static int8 scheme, not {scheme!r}")
        if isinstance(smoothing_alpha, bool) or not isinstance(smoothing_alpha, numbers.Real) \
                or not 0.0 <= smoothing_alpha <= 1.0:
            raise ExportError(f"smoothing_alpha must be a number in [0, 1] (0: off), got {smoothing_alpha!r}")
    # static: the measured default unless asked otherwise; dynamic has no calibration to migrate with
    alpha = (DEFAULT_SMOOTHING_ALPHA if scheme == "static" else 0.0) if smoothing_alpha is None else float(smoothing_alpha)
    onnx, onnxruntime, quantization = _import_ort()

    model = _load(onnx, src_onnx)  # the graph's structure only: weights stay on disk
    fused_ops = sorted({node.op_type for node in model.graph.node if node.op_type in _FUSED_OPS})
    input_types = _input_types(model)
    for name in input_names:
        if name not in input_types:
            raise ExportError(f"input {name!r} is not an input of {src_onnx.name} (it has {sorted(input_types)})")
    targets = _nodes_to_quantize(model)
    if isinstance(keep_fp32, str):
        raise ExportError(f"keep_fp32 must be a sequence of node names, not the string {keep_fp32!r}")
    unknown = sorted(set(keep_fp32) - set(targets))
    if unknown:
        raise ExportError(f"keep_fp32: {', '.join(map(repr, unknown))} is not a quantizable operator of "
                          f"{src_onnx.name} (Attention or weight MatMul node names)")
    if fp32_ffn_down_layers is not None and (isinstance(fp32_ffn_down_layers, bool)
                                             or not isinstance(fp32_ffn_down_layers, numbers.Integral)
                                             or fp32_ffn_down_layers < 0):
        raise ExportError(f"fp32_ffn_down_layers must be an integer >= 0, got {fp32_ffn_down_layers!r}")
    ffn_layers = DEFAULT_FP32_FFN_DOWN_LAYERS if fp32_ffn_down_layers is None else int(fp32_ffn_down_layers)
    down = _ffn_down_projections(model, targets)
    if fp32_ffn_down_layers and not down:
        raise ExportError(f"fp32_ffn_down_layers={fp32_ffn_down_layers} (export option int8_fp32_ffn_down_layers, "
                          f"--int8-fp32-ffn-down-layers): {src_onnx.name} has no feed-forward down-projection "
                          "(a weight MatMul reading a GELU output); pass 0")
    if fp32_ffn_down_layers is not None and fp32_ffn_down_layers > len(down):
        logger.warning("int8: %d fp32 down-projections asked for, %s has %d (one per layer); keeping all of them",
                       fp32_ffn_down_layers, src_onnx.name, len(down))
    kept_down = down[:ffn_layers]
    kept = sorted(set(keep_fp32) | set(kept_down))
    targets = {name: tensor for name, tensor in targets.items() if name not in kept}
    if not targets:
        raise ExportError(f"{src_onnx.name} has no Attention or weight MatMul to quantize"
                          + (" once keep_fp32 is left out" if kept else ""))
    use_external = needs_external_data(model)  # the source's weights need a side file: so may the scratch graph
    del model

    isa = detect_isa()
    settings: dict[str, Any] = {
        "scheme": scheme,
        "source_variant": SOURCE_VARIANT[scheme],
        "quant_format": "QOperator",
        "weight_type": "int8",
        "weight_symmetric": True,
        "per_channel": True,
        "reduce_range": True,
        "activation_type": "uint8",
        "activation_symmetric": False,
        "activation_scales": "static (calibrated constants)" if scheme == "static" else "dynamic (per call, per batch)",
        "op_types_quantized": list(_QUANTIZED_OP_TYPES),
        "nodes_targeted": len(targets),
        "source_fused_ops": fused_ops,
        "kept_fp32": "embeddings, LayerNorm, GELU, attention softmax, pooler, classifier",
        **({"kept_fp32_nodes": kept} if kept else {}),
        # the count applied (<= the layers there are); written when asked for or when the default keeps any
        **({"fp32_ffn_down_layers": len(kept_down)} if ffn_layers or fp32_ffn_down_layers is not None else {}),
        "batch_invariant": scheme == "static",
        "isa_target": isa,
        "max_length": max_length,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        dst_onnx.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="crossrank-int8-") as tmp:
            source = src_onnx
            if scheme == "static":
                pairs = load_calibration_pairs(None) if calibration_pairs is None else list(calibration_pairs)
                feeds = _calibration_feeds(
                    pairs, tokenizer_json=tokenizer_json, input_types=input_types,
                    input_names=input_names, max_length=max_length, num_special_tokens_pair=num_special_tokens_pair,
                )
                if alpha > 0.0:
                    source = Path(tmp) / "smoothed.onnx"
                    migrated = _smooth(onnx, onnxruntime, src_onnx, source, targets, feeds, alpha)
                    targets = {n: t for n, t in _nodes_to_quantize(_load(onnx, source)).items() if n not in kept}
                    settings["smoothing"] = {"method": "SmoothQuant", "alpha": alpha, "inputs_migrated": migrated}
                else:
                    settings["smoothing"] = None  # turned off (0): said, so it is not mistaken for an older file
                # the range of every quantized operator's activation input, on the fp32 graph
                ranges = _activation_ranges(onnx, onnxruntime, source, sorted(set(targets.values())), feeds,
                                            percentile=percentile)
            dynamic_path = Path(tmp) / "dynamic.onnx"
            quantization.quantize_dynamic(
                str(source),
                str(dynamic_path),
                op_types_to_quantize=list(_QUANTIZED_OP_TYPES),
                nodes_to_quantize=list(targets),
                per_channel=True,
                reduce_range=True,
                weight_type=quantization.QuantType.QInt8,
                use_external_data_format=use_external,
                extra_options={
                    "MatMulConstBOnly": True,
                    "WeightSymmetric": True,
                    # fused com.microsoft outputs have no inferred type; they are all float
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                },
            )
            qmodel = onnx.load(str(dynamic_path))
            if scheme == "static":
                frozen = _freeze_activation_scales(qmodel, ranges)
                fused = _fuse_matmul_integer_to_float(onnx, qmodel)
                settings["calibration"] = {
                    "method": "MinMax" if percentile is None else "Percentile",
                    **({} if percentile is None else {"percentile": percentile, "histogram_bins": PERCENTILE_BINS}),
                    "pairs": len(pairs),
                    "source": "built-in" if calibration_pairs is None else "user",
                    "batch_size": 1,
                    "max_length": max_length,
                    "frozen_quantizers": frozen,
                }
                settings["matmul_integer_to_float"] = fused
            else:
                settings["calibration"] = None
            # what the written graph holds, not what was asked for (onnxruntime skips what it cannot do)
            ops = [n.op_type for n in qmodel.graph.node]
            settings["attention_quantized"] = ops.count("QAttention")
            settings["nodes_quantized"] = settings["attention_quantized"] + sum(
                ops.count(op) for op in ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
            )
            if settings["nodes_quantized"] < len(targets):
                logger.warning("int8: %d of %d targeted operators were left fp32 by onnxruntime's quantizer",
                               len(targets) - settings["nodes_quantized"], len(targets))
            # int8 weights are a quarter of fp32's: a 2.2 GB source fits in one file again
            _save_atomic(onnx, qmodel, dst_onnx, needs_external_data(qmodel))
    except ExportError:
        raise
    except Exception as err:  # onnxruntime/onnx raise RuntimeError, ValueError, Fail, InvalidGraph; OSError
        raise ExportError(f"{scheme} int8 quantization of {src_onnx.name} failed: {_first_line(err)}") from err
    logger.info("int8 (%s) written to %s (isa %s)", scheme, dst_onnx, isa)
    return settings


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _import_ort() -> tuple[Any, Any, Any]:
    try:
        import onnx
        import onnxruntime
        from onnxruntime import quantization
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            'int8 export needs onnx and onnxruntime: pip install "crossrank[export]"'
        ) from err
    return onnx, onnxruntime, quantization


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load(onnx: Any, path: Path) -> Any:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # DecodeError, OSError, ValueError...
        raise ExportError(f"cannot read ONNX graph {path}: {_first_line(err)}") from err


def _save_atomic(onnx: Any, model: Any, path: Path, external: bool) -> None:
    """Write ``path`` (and its ``.data`` file) in a temporary folder beside it, then rename them into
    place: an interrupted or failed write leaves ``path`` as it was. The files get the modes
    ``open`` gives under the caller's umask (:mod:`crossrank.atomic`)."""
    stage = mkdtemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        staged = stage / path.name
        if external:
            side = data_file_name(path.name)
            onnx.save(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True, location=side)
            os.replace(stage / side, path.with_name(side))
        else:
            onnx.save(model, str(staged))
        os.replace(staged, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _input_types(model: Any) -> dict[str, int]:
    init = {i.name for i in model.graph.initializer}
    return {i.name: i.type.tensor_type.elem_type for i in model.graph.input if i.name not in init}


def _nodes_to_quantize(model: Any) -> dict[str, str]:
    """Named Attention nodes and MatMuls whose second operand is a weight (initializer), each with
    the activation tensor it reads.

    Gemm (pooler, classifier: one row per pair, negligible time) and activation x activation
    MatMuls are left out on purpose.
    """
    init = {i.name for i in model.graph.initializer}
    targets: dict[str, str] = {}
    for node in model.graph.node:
        if not node.name:
            continue
        if node.op_type == "Attention" and node.domain == "com.microsoft":
            targets[node.name] = node.input[0]
        elif node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in init:
            targets[node.name] = node.input[0]
    return targets


_GELU_OPS = frozenset({"Gelu", "BiasGelu", "FastGelu", "QuickGelu"})


def _ffn_down_projections(model: Any, targets: dict[str, str] | None = None) -> list[str]:
    """Names of the quantizable operators (``targets``, :func:`_nodes_to_quantize`'s map; None:
    computed here) that read a GELU output, in graph order: the feed-forward
    down-projection of each encoder layer (BERT/XLM-R/ELECTRA/DeBERTa: ``W2 gelu(W1 x)``;
    GeGLU as in ModernBERT: ``W2 (gelu(a) * b)``, one ``Mul`` further back).

    Fused GELU kinds (``Gelu``, ``BiasGelu``, ``FastGelu``, ``QuickGelu``) and the unfused erf /
    tanh forms (an ``Erf`` or ``Tanh`` one to four elementwise nodes back, never the MatMul's
    direct input) are recognised.
    """
    init = {i.name for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}

    def reads_gelu(tensor: str, depth: int) -> bool:
        node = producer.get(tensor)
        if node is None:
            return False
        if node.op_type in _GELU_OPS:
            return True
        if node.op_type in ("Erf", "Tanh"):  # erf/tanh GELU: x * 0.5 * (1 + erf(...)), never a bare Erf/Tanh
            return depth > 0
        if depth < 4 and node.op_type in ("Mul", "Add", "Div"):
            return any(reads_gelu(t, depth + 1) for t in node.input if t not in init)
        return False

    targets = _nodes_to_quantize(model) if targets is None else targets
    return [name for name, tensor in targets.items() if reads_gelu(tensor, 0)]


def _calibration_feeds(
    pairs: Sequence[tuple[str, str]],
    *,
    tokenizer_json: Path,
    input_types: dict[str, int],
    input_names: Sequence[str],
    max_length: int,
    num_special_tokens_pair: int,
) -> list[dict[str, Any]]:
    from onnx import TensorProto

    dtypes = {TensorProto.INT64: "int64", TensorProto.INT32: "int32"}
    for name in input_names:
        if name not in _INPUT_VALUES:
            raise ExportError(f"cannot make calibration values for graph input {name!r}")
        if input_types[name] not in dtypes:
            raise ExportError(f"graph input {name!r} has ONNX element type {input_types[name]}, expected int64 or int32")
    # the runtime's own encoder, one pair per batch: no padding enters the ranges (their order
    # does not matter to MinMax)
    batches, _ = encode_batches(
        pairs,
        tokenizer_json,
        max_length=max_length,
        num_special_tokens_pair=num_special_tokens_pair,
        input_names=list(input_names),
        input_dtypes=[dtypes[input_types[n]] for n in input_names],
        pad_token_id=0,  # batches of one pair are never padded
        batch_tokens=max_length,
        max_batch_size=1,
    )
    return [b.feed for b in batches]


def _freeze_activation_scales(qmodel: Any, ranges: tuple[dict[str, float], dict[str, float]]) -> int:
    """Replace each DynamicQuantizeLinear of ``qmodel`` by a QuantizeLinear with constant scale and
    zero point from ``ranges`` (the calibrated MinMax of its input on the fp32 graph)."""
    import numpy as np
    from onnx import helper, numpy_helper

    lo, hi = ranges
    graph = qmodel.graph
    dql = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    missing = sorted({n.input[0] for n in dql} - set(lo))
    if missing:
        raise ExportError(f"internal error: no calibrated range for quantizer input(s) {', '.join(missing)}")
    for node in dql:
        x = node.input[0]
        # DynamicQuantizeLinear's own formula (range widened to include 0), on calibrated bounds
        rmin, rmax = min(0.0, lo[x]), max(0.0, hi[x])
        scale = (rmax - rmin) / 255.0 if rmax > rmin else 1.0
        zero_point = int(np.clip(np.round(-rmin / scale), 0, 255))
        y, y_scale, y_zero_point = node.output
        graph.initializer.append(numpy_helper.from_array(np.array(scale, dtype=np.float32), y_scale))
        graph.initializer.append(numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), y_zero_point))
        quant = helper.make_node("QuantizeLinear", [x, y_scale, y_zero_point], [y], name=node.name + "_static")
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, quant)
    return len(dql)


def _smooth(
    onnx: Any, onnxruntime: Any, src: Path, dst: Path, targets: dict[str, str], feeds: list[dict[str, Any]],
    alpha: float,
) -> int:
    """Write ``src`` with each quantized operator's input scaled per channel by ``1/s`` and its
    weight rows by ``s`` (module docstring, *Scale migration*) to ``dst``; the inputs migrated."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    tensors = sorted(set(targets.values()))
    probe = onnx.load(str(src))
    for t in tensors:
        probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    probe_path = dst.with_name("smooth-probe.onnx")
    onnx.save(probe, str(probe_path), save_as_external_data=needs_external_data(probe))
    del probe
    session = onnxruntime.InferenceSession(str(probe_path), options, providers=["CPUExecutionProvider"])
    amax: dict[str, Any] = {}
    for feed in feeds:
        for t, value in zip(tensors, session.run(tensors, feed)):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            amax[t] = np.maximum(amax[t], m) if t in amax else m
    del session
    model = onnx.load(str(src))
    init = {i.name: i for i in model.graph.initializer}
    by_input: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.name in targets:
            by_input.setdefault(targets[node.name], []).append(node)
    migrated = 0
    for t, users in by_input.items():
        weights = [numpy_helper.to_array(init[n.input[1]]) for n in users]
        if t not in amax or any(w.ndim != 2 or w.shape[0] != amax[t].shape[0] for w in weights):
            continue  # not a [in, out] weight over the activation's last axis: leave it as it is
        wmax = np.concatenate([np.abs(w) for w in weights], axis=1).max(axis=1)
        # epsilon 1e-5: a channel that is all zeros on the pairs keeps a finite scale
        s = np.maximum(amax[t], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1.0 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{t}_smooth_inv")
        model.graph.initializer.append(inv)
        mul = helper.make_node("Mul", [t, inv.name], [f"{t}_smoothed"], name=f"{t}_smooth")
        model.graph.node.insert(min(list(model.graph.node).index(n) for n in users), mul)
        for node, w in zip(users, weights):
            init[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
            node.input[0] = f"{t}_smoothed"
        migrated += 1
    onnx.save(model, str(dst), save_as_external_data=needs_external_data(model))
    return migrated


def _check_calibration_method(scheme: str, method: str, percentile: float | None) -> float | None:
    """Validate the calibration options; the percentile to clip at, or None for MinMax."""
    if method not in CALIBRATION_METHODS:
        raise ExportError(
            f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}"
        )
    if method != "percentile":
        if percentile is not None:
            raise ExportError(f"calibration_percentile applies only to calibration_method='percentile', not {method!r}")
        return None
    if scheme != "static":
        raise ExportError(f"calibration_method={method!r} applies only to the static int8 scheme, not {scheme!r}")
    if percentile is None:
        return DEFAULT_CALIBRATION_PERCENTILE
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50.0 < percentile <= 100.0:
        raise ExportError(f"calibration_percentile must be a number in (50, 100] (a percent), got {percentile!r}")
    return float(percentile)


def _activation_ranges(
    onnx: Any, onnxruntime: Any, fp32_path: Path, tensors: list[str], feeds: list[dict[str, Any]],
    *, percentile: float | None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Each tensor's calibrated ``(low, high)``: MinMax over ``feeds``; with ``percentile``, a second
    pass histograms every tensor over its MinMax range and takes the two percentiles."""
    import numpy as np
    from onnx import TensorProto, helper

    model = onnx.load(str(fp32_path))
    outputs = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="crossrank-calib-") as tmp:
        path = Path(tmp) / "calibrate.onnx"
        onnx.save(model, str(path), save_as_external_data=needs_external_data(model))
        del model
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        lo = {t: 0.0 for t in tensors}
        hi = {t: 0.0 for t in tensors}
        for feed in feeds:
            for t, value in zip(tensors, session.run(tensors, feed)):
                if value.size:
                    lo[t] = min(lo[t], float(value.min()))
                    hi[t] = max(hi[t], float(value.max()))
        if percentile is None:
            return lo, hi
        # second pass: the values again (keeping them all would hold ~GBs), histogrammed over MinMax
        counts = {t: np.zeros(PERCENTILE_BINS, np.int64) for t in tensors}
        for feed in feeds:
            for t, value in zip(tensors, session.run(tensors, feed)):
                if value.size and hi[t] > lo[t]:
                    counts[t] += np.histogram(value, bins=PERCENTILE_BINS, range=(lo[t], hi[t]))[0]
    tail = (100.0 - percentile) / 100.0
    for t in tensors:
        total = int(counts[t].sum())
        if not total:
            continue
        cum = np.cumsum(counts[t])
        width = (hi[t] - lo[t]) / PERCENTILE_BINS
        # the lower bound: the left edge of the bin holding the tail-th value; the upper: the right
        # edge of the bin holding the (1 - tail)-th, so a bound never cuts into its own bin
        low_bin = int(np.searchsorted(cum, tail * total, side="right"))
        high_bin = int(np.searchsorted(cum, (1.0 - tail) * total, side="left"))
        low_edge = lo[t] + min(low_bin, PERCENTILE_BINS - 1) * width
        high_edge = lo[t] + (min(high_bin, PERCENTILE_BINS - 1) + 1) * width
        lo[t], hi[t] = low_edge, min(high_edge, hi[t])
    return lo, hi


def _fuse_matmul_integer_to_float(onnx: Any, qmodel: Any) -> int:
    """``MatMulInteger(A, B) -> Cast -> Mul(Mul(a_scale, b_scale))`` into one
    ``com.microsoft.MatMulIntegerToFloat`` (what onnxruntime fuses by itself only for dynamic
    quantizers). A chain that does not match exactly is left as it is (correct, slower)."""
    from onnx import helper

    graph = qmodel.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    remove: list[Any] = []
    fused = 0
    for node in list(graph.node):
        if node.op_type != "MatMulInteger" or len(node.input) < 2:
            continue
        cast = consumers.get(node.output[0], [])
        if len(cast) != 1 or cast[0].op_type != "Cast":
            continue
        mul = consumers.get(cast[0].output[0], [])
        if len(mul) != 1 or mul[0].op_type != "Mul":
            continue
        scale_name = [i for i in mul[0].input if i != cast[0].output[0]]
        scale_mul = producer.get(scale_name[0]) if len(scale_name) == 1 else None
        quant_a = producer.get(node.input[0])
        if scale_mul is None or scale_mul.op_type != "Mul" or quant_a is None or quant_a.op_type != "QuantizeLinear":
            continue
        a_scale = quant_a.input[1]
        if a_scale not in scale_mul.input:
            continue
        b_scale = [i for i in scale_mul.input if i != a_scale]
        if len(b_scale) != 1:
            continue
        a_zp = node.input[2] if len(node.input) > 2 else ""
        b_zp = node.input[3] if len(node.input) > 3 else ""
        new = helper.make_node(
            "MatMulIntegerToFloat",
            [node.input[0], node.input[1], a_scale, b_scale[0], a_zp, b_zp],
            [mul[0].output[0]],
            name=node.name + "_to_float",
            domain="com.microsoft",
        )
        graph.node.insert(list(graph.node).index(node), new)
        remove += [node, cast[0], mul[0]]
        if len(consumers.get(scale_mul.output[0], [])) == 1:
            remove.append(scale_mul)
        fused += 1
    for n in remove:
        graph.node.remove(n)
    if fused and not any(o.domain == "com.microsoft" for o in qmodel.opset_import):
        qmodel.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused
