"""int8 quantization of an exported cross-encoder graph for the CPU.

Two schemes (:data:`INT8_SCHEMES`):

``static`` (the default, :data:`DEFAULT_INT8_SCHEME`)
    Activation scales are calibrated once, on representative query/passage pairs, and frozen into
    the graph as QuantizeLinear/DequantizeLinear (QDQ) pairs around every MatMul whose second
    operand is a weight: the Q/K/V, attention-output and both feed-forward projections of every
    layer. Weights are int8, symmetric, one scale per output channel, and held to 7 bits
    (``reduce_range``) so that the u8 x s8 kernels of CPUs without VNNI (AVX2, AVX-512F) never
    saturate their 16-bit intermediate sums. Activations are uint8, asymmetric, calibrated with
    MinMax (symmetric int8 activations lost most of the ranking); MatMul outputs are not
    re-quantized, and residual Adds / LayerNorms read the fp32 tensors, not their QDQ copies.
    Everything else stays fp32: embeddings, LayerNorm, GELU, softmax, the two
    activation x activation attention products (QK^T and PV), the pooler and the classifier.
    Because every scale is a constant, a pair's score depends only on the pair: it is the same
    whichever other pairs share its batch and however much padding the batch adds (the residual
    difference is the fp32 parts' rounding, bounded by the figure recorded in the study).

``dynamic``
    Weights are int8 (per channel, 7-bit on non-VNNI x86); activation scales are computed from
    the data on every call. No calibration needed, but the scale of a MatMul input is taken over
    the whole padded batch, so a pair's score moves with its batch companions, and the extra
    min/max pass costs time on every call.

Source graph
    ``static`` expects the plain fp32 export, ``model.onnx`` (variant ``fp32``). ONNX Runtime's
    transformer fusions pack the Q/K/V projections into a com.microsoft ``Attention`` operator,
    which has no QDQ form: quantizing ``model.opt.onnx`` statically would leave a quarter of the
    encoder's weight FLOPs in fp32. Starting from the plain graph, every weight MatMul gets its
    QDQ pair, and onnxruntime's own session-level optimizer (ORT_ENABLE_ALL, which the runtime
    uses) still fuses LayerNorm, GELU and the QDQ groups into integer kernels at load time.
    ``dynamic`` expects the ORT-optimized graph, ``model.opt.onnx`` (variant ``optimized``): there
    the fused ``Attention`` has a dynamic integer form (``QAttention``), so all weight MatMuls are
    quantized and the fused kernels are kept. :data:`SOURCE_VARIANT` maps each scheme to the
    variant whose file to pass; :func:`quantize_int8` checks the graph and refuses the wrong one.

    The figures behind these choices (nDCG@10 retention on TREC DL 2020 and SciFact, latency,
    batch invariance) are in ``benchmarks/int8_study.py`` and the study notes it writes.

Calibration pairs
    :func:`load_calibration_pairs` reads JSON Lines ``{"query": ..., "document": ...}``; with no
    path it returns the built-in set ``data/calibration.jsonl`` (invented English search/RAG pairs,
    short and long passages, relevant and not). Calibration runs one pair per batch, tokenized
    exactly as the runtime tokenizes (pair truncation ``only_second`` at ``max_length``), so no
    padding enters the activation ranges.
"""
from __future__ import annotations

import json
import logging
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from crossrank.errors import ExportError, MissingDependencyError

__all__ = [
    "INT8_SCHEMES",
    "DEFAULT_INT8_SCHEME",
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
SOURCE_VARIANT = {"static": "fp32", "dynamic": "optimized"}
BUILTIN_CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration.jsonl"

# Graph operators that only ORT's transformer optimizer writes: their presence means a fused graph.
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
# Above this size the quantized graph must keep its weights outside the protobuf (2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000


# --------------------------------------------------------------------------------------------
# Calibration pairs
# --------------------------------------------------------------------------------------------
def load_calibration_pairs(path: Path | str | None = None) -> list[tuple[str, str]]:
    """Read calibration pairs from JSON Lines ``{"query": str, "document": str}``.

    ``None`` reads the built-in set. Blank lines are skipped. A missing or unreadable file, a line
    that is not a JSON object with string ``query`` and ``document``, or a file without any pair
    raises :class:`~crossrank.errors.ExportError` naming the file (and the line).
    """
    file = BUILTIN_CALIBRATION if path is None else Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ExportError(f"calibration file {file} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ExportError(f"calibration file {file} cannot be read: {err}") from err
    pairs: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ExportError(f"calibration file {file}, line {lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise ExportError(
                f"calibration file {file}, line {lineno}: expected an object "
                f'{{"query": ..., "document": ...}}, got {type(row).__name__}'
            )
        query, document = row.get("query"), row.get("document")
        for key, value in (("query", query), ("document", document)):
            if not isinstance(value, str):
                what = "missing" if value is None else f"a {type(value).__name__}, not a string"
                raise ExportError(f'calibration file {file}, line {lineno}: "{key}" is {what}')
        if not query.strip():
            raise ExportError(f'calibration file {file}, line {lineno}: "query" is empty')
        pairs.append((query, document))
    if not pairs:
        raise ExportError(f"calibration file {file} holds no pairs")
    return pairs


# --------------------------------------------------------------------------------------------
# Instruction set
# --------------------------------------------------------------------------------------------
def detect_isa() -> str:
    """The CPU's integer-GEMM instruction-set class: ``avx512_vnni``, ``avx_vnni``, ``avx512``,
    ``avx2``, ``arm64`` (``arm64_i8mm`` / ``arm64_dotprod`` where known), ``x86_64`` or the machine name.

    This is what decides whether u8 x s8 products can saturate (AVX2 and AVX-512 without VNNI)
    and therefore whether 7-bit weights are needed.
    """
    machine = platform.machine().lower()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
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


def _has_vnni(isa: str) -> bool:
    return isa in ("avx512_vnni", "avx_vnni")


# --------------------------------------------------------------------------------------------
# Quantization
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


def _graph_facts(onnx: Any, src: Path) -> tuple[bool, dict[str, int]]:
    """(is the graph ORT-fused?, {input name: ONNX element type})."""
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ValueError...
        raise ExportError(f"cannot read ONNX graph {src}: {err}") from err
    fused = any(node.op_type in _FUSED_OPS for node in model.graph.node)
    init = {i.name for i in model.graph.initializer}
    types = {
        i.name: i.type.tensor_type.elem_type for i in model.graph.input if i.name not in init
    }
    return fused, types


class _PairReader:
    """onnxruntime CalibrationDataReader over tokenized pairs, one pair per batch (no padding)."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = feeds
        self._it: Iterator[dict[str, Any]] = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def _calibration_feeds(
    pairs: Sequence[tuple[str, str]],
    *,
    tokenizer_json: Path,
    input_types: dict[str, int],
    input_names: Sequence[str],
    max_length: int,
    onnx: Any,
) -> list[dict[str, Any]]:
    import numpy as np
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_json))
    except Exception as err:  # tokenizers raises a bare Exception on bad files
        raise ExportError(f"cannot load tokenizer {tokenizer_json}: {err}") from err
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="only_second")
    np_types = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}
    for name in input_names:
        if name not in input_types:
            raise ExportError(
                f"input {name!r} is not an input of the graph (it declares {sorted(input_types)})"
            )
        if input_types[name] not in np_types:
            raise ExportError(f"graph input {name!r} has element type {input_types[name]}, expected int64 or int32")
    unknown = set(input_names) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise ExportError(f"cannot build calibration inputs for {sorted(unknown)}")
    feeds = []
    for i, (query, document) in enumerate(pairs):
        try:
            enc = tok.encode(query, document)
        except Exception as err:
            raise ExportError(f"calibration pair {i}: tokenization failed ({err})") from err
        n = len(enc.ids)
        values = {
            "input_ids": enc.ids,
            "attention_mask": [1] * n,
            "token_type_ids": enc.type_ids,
        }
        feeds.append(
            {name: np.asarray([values[name]], dtype=np_types[input_types[name]]) for name in input_names}
        )
    return feeds


def quantize_int8(
    src_onnx: Path,
    dst_onnx: Path,
    *,
    scheme: str,
    calibration_pairs: list[tuple[str, str]] | None,
    tokenizer_json: Path,
    input_names: list[str],
    max_length: int,
) -> dict:
    """Quantize ``src_onnx`` to int8 and write ``dst_onnx``; return the settings for the manifest.

    ``scheme`` is one of :data:`INT8_SCHEMES`. ``src_onnx`` must be the graph of
    ``SOURCE_VARIANT[scheme]`` (plain fp32 for static, ORT-optimized for dynamic).
    ``calibration_pairs`` (static only) default to the built-in set; ``tokenizer_json``,
    ``input_names`` and ``max_length`` make calibration inputs exactly as the runtime makes them.
    Every failure raises :class:`~crossrank.errors.ExportError` (the onnxruntime error as its cause).
    """
    if scheme not in INT8_SCHEMES:
        raise ExportError(f"unknown int8 scheme {scheme!r}; choose one of {', '.join(INT8_SCHEMES)}")
    if not isinstance(max_length, int) or max_length < 4:
        raise ExportError(f"max_length must be an integer >= 4, got {max_length!r}")
    src_onnx, dst_onnx, tokenizer_json = Path(src_onnx), Path(dst_onnx), Path(tokenizer_json)
    if not src_onnx.is_file():
        raise ExportError(f"source graph {src_onnx} does not exist")
    onnx, onnxruntime, quantization = _import_ort()
    fused, input_types = _graph_facts(onnx, src_onnx)
    want_fused = SOURCE_VARIANT[scheme] == "optimized"
    if fused != want_fused:
        raise ExportError(
            f"{scheme} int8 quantizes the {'ORT-optimized (fused)' if want_fused else 'plain fp32'} graph "
            f"(variant {SOURCE_VARIANT[scheme]!r}), but {src_onnx.name} is "
            f"{'a fused' if fused else 'an unfused'} graph"
        )
    isa = detect_isa()
    # u8 x s8 kernels on x86 without VNNI sum pairs of products in int16 (vpmaddubsw) and can
    # saturate with full-range weights; 7-bit weights cannot. VNNI and arm64 do not need it, but
    # the file may be copied to an older CPU: keep 7 bits unless the build machine has VNNI.
    reduce_range = not (_has_vnni(isa) or isa.startswith("arm64"))
    use_external = src_onnx.stat().st_size > _EXTERNAL_DATA_BYTES
    QuantType, QuantFormat = quantization.QuantType, quantization.QuantFormat
    settings: dict[str, Any] = {
        "scheme": scheme,
        "source_variant": SOURCE_VARIANT[scheme],
        "per_channel": True,
        "reduce_range": reduce_range,
        "weight_type": "int8",
        "weight_symmetric": True,
        "isa_target": isa,
        "onnxruntime": onnxruntime.__version__,
        "max_length": max_length,
    }
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    try:
        if scheme == "static":
            pairs = load_calibration_pairs(None) if calibration_pairs is None else list(calibration_pairs)
            if not pairs:
                raise ExportError("static int8 needs at least one calibration pair")
            feeds = _calibration_feeds(
                pairs,
                tokenizer_json=tokenizer_json,
                input_types=input_types,
                input_names=input_names,
                max_length=max_length,
                onnx=onnx,
            )
            op_types = ["MatMul"]
            with tempfile.TemporaryDirectory(prefix="crossrank-calib-") as tmp:
                # onnxruntime's calibration writes its augmented model into the working folder
                _quantize_static(quantization, src_onnx, dst_onnx, feeds, reduce_range, use_external, onnx, Path(tmp))
            settings.update(
                {
                    "quant_format": "QDQ",
                    "activation_type": "uint8",
                    "activation_symmetric": False,
                    "matmul_outputs_quantized": False,
                    "bypass_reads_fp32": True,
                    "op_types": op_types,
                    "excluded": "MatMuls without a constant weight (attention QK^T, PV); everything but MatMul",
                    "calibration": {
                        "method": "MinMax",
                        "pairs": len(pairs),
                        "source": "built-in" if calibration_pairs is None else "user",
                        "batch": 1,
                    },
                }
            )
        else:
            op_types = ["MatMul", "Attention"]
            quantization.quantize_dynamic(
                str(src_onnx),
                str(dst_onnx),
                op_types_to_quantize=op_types,
                per_channel=True,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                use_external_data_format=use_external,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            settings.update(
                {
                    "quant_format": "QOperator",
                    "activation_type": "uint8 (dynamic, per call)",
                    "activation_symmetric": False,
                    "op_types": op_types,
                    "excluded": "embeddings, LayerNorm, GELU, pooler and classifier (fp32)",
                    "calibration": None,
                }
            )
    except ExportError:
        raise
    except Exception as err:  # onnxruntime/onnx raise RuntimeError, ValueError, Fail, ...
        _remove(dst_onnx)
        raise ExportError(f"{scheme} int8 quantization of {src_onnx.name} failed: {err}") from err
    if not dst_onnx.is_file():
        raise ExportError(f"{scheme} int8 quantization of {src_onnx.name} wrote no {dst_onnx.name}")
    logger.info("int8 (%s) written to %s for %s", scheme, dst_onnx, isa)
    return settings


def _quantize_static(
    quantization: Any,
    src_onnx: Path,
    dst_onnx: Path,
    feeds: list[dict[str, Any]],
    reduce_range: bool,
    use_external: bool,
    onnx: Any,
    workdir: Path,
) -> None:
    """Static QDQ int8 of every weight MatMul, then keep the fp32 paths fp32.

    The recipe kept from the study (``benchmarks/int8_study.py``): QDQ around MatMuls whose second
    operand is a constant weight (the attention QK^T / PV products stay fp32), per-channel 7/8-bit
    symmetric weights, asymmetric uint8 activations calibrated with MinMax, MatMul outputs not
    re-quantized, and every consumer that is not a quantized MatMul (residual Adds, LayerNorm)
    reading the fp32 tensor instead of its quantize-dequantize copy. Symmetric int8 activations
    lost most of the ranking (Spearman 0.60); this recipe kept Spearman ≥ 0.995 on TREC DL.
    """
    del workdir  # onnxruntime keeps its augmented calibration model in its own temporary folder
    quantization.quantize_static(
        str(src_onnx),
        str(dst_onnx),
        _PairReader(feeds),
        quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax,
        use_external_data_format=use_external,
        extra_options={
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "MatMulConstBOnly": True,
            "OpTypesToExcludeOutputQuantization": ["MatMul"],
            "DefaultTensorType": onnx.TensorProto.FLOAT,
        },
    )
    _bypass_reads_fp32(onnx, dst_onnx, use_external)


def _bypass_reads_fp32(onnx: Any, path: Path, use_external: bool) -> int:
    """Rewire non-quantized consumers of an activation's Q->DQ copy to the fp32 original.

    Returns how many inputs were rewired; Q/DQ nodes left without consumers are dropped.
    """
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    fp32_of: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producer:
            q = producer[node.input[0]]
            if q.op_type == "QuantizeLinear" and q.input[0] not in initializers:
                fp32_of[node.output[0]] = q.input[0]
    rewired = 0
    for node in graph.node:
        if node.op_type in ("MatMul", "QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            if name in fp32_of:
                node.input[k] = fp32_of[name]
                rewired += 1
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    onnx.save(model, str(path), save_as_external_data=use_external)
    return rewired


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
