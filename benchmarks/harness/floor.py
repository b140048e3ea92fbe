"""How far a reranking call is from the compute floor of this CPU, and where its time goes.

The floor of one request is the weight multiply-adds its real (unpadded, truncated) tokens need,
divided by the rate of onnxruntime's own u8 x s8 kernel (``com.microsoft.MatMulIntegerToFloat``,
what the static int8 variant runs) on one large, well-shaped matrix:

    floor_s = (tokens x per_token_macs + pairs x per_pair_macs) / kernel_macs_per_s

``per_token_macs`` sums K x N over the weight products that run for every token (the attention
QKV and output projections, both feed-forward projections); ``per_pair_macs`` over those that run
once per pair (the last layer after crossrank's [CLS] pruning, the pooler, the classifier). Both are
read from an onnxruntime profile of the variant itself (each weight operator's input shapes), so the
floor follows the graph that runs, pruned or not. Attention's activation x activation products,
layer norms, GELU, quantize/dequantize, padding and Python are all outside the floor: the ratio
``latency / floor`` is what they (and GEMM inefficiency on small matrices) cost.

:func:`profile_call` also gives the op-type breakdown of one call (onnxruntime's node kernel
times, summed by operator type). The same kernel measurement is the command-line study
``benchmarks/kernel_peak.py``.
"""
from __future__ import annotations

import gc
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from crossrank.errors import BenchmarkError

__all__ = ["int8_matmul_model", "fp32_matmul_model", "kernel_rate", "OpProfile", "profile_call", "floor_table"]

# Operators whose second input may be a 2-D weight: K x N multiply-adds per input row.
_WEIGHT_OPS = frozenset({"MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "Attention",
                         "MatMul", "FusedMatMul", "Gemm", "FusedGemm"})


# ------------------------------------------------------------------------------------------------
# the kernel rate
# ------------------------------------------------------------------------------------------------
def int8_matmul_model(m: int, k: int, n: int, rng: np.random.Generator) -> Any:
    """One ``MatMulIntegerToFloat``: uint8 activations [m, k] x int8 7-bit weights [k, n] -> float."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    inits = [
        numpy_helper.from_array(rng.integers(-63, 64, (k, n), dtype=np.int8), "w"),
        numpy_helper.from_array(np.array(0.01, np.float32), "a_scale"),
        numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
    ]
    node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "a_scale", "w_scale", "a_zero"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "int8", [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    # IR 8 (what opset 17 needs), not the installed onnx's newest: older onnxruntime builds load it too
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8)


def fp32_matmul_model(m: int, k: int, n: int, rng: np.random.Generator) -> Any:
    """One fp32 ``MatMul``: [m, k] x [k, n]."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "fp32",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def kernel_rate(*, k: int, n: int, m: int = 2048, threads: int | None = None, kind: str = "int8", runs: int = 20,
                seed: int = 0) -> float:
    """Measured multiply-adds per second of one [m, k] x [k, n] product in onnxruntime on the CPU.

    Args:
        k, n: the weight's shape (the bench passes the model's widest per-token weight, the
            feed-forward up-projection: 384 x 1536 for MiniLM-L6).
        m: rows (tokens); 2048 is a large, well-shaped batch (default of ``kernel_peak.py``).
        threads: intra-op threads (None: onnxruntime's default, one per physical core, as the
            runtime's own default).
        kind: ``"int8"`` (u8 x s8 ``MatMulIntegerToFloat``) or ``"fp32"`` (``MatMul``).
        runs: timed runs after 3 warm-up runs; the mean is used.

    Returns:
        multiply-adds per second (float).
    """
    import onnxruntime as ort  # noqa: PLC0415

    if kind not in ("int8", "fp32"):
        raise BenchmarkError(f"kind must be 'int8' or 'fp32', got {kind!r}")
    rng = np.random.default_rng(seed)
    if kind == "int8":
        model, feed = int8_matmul_model(m, k, n, rng), {"a": rng.integers(0, 256, (m, k), dtype=np.uint8)}
    else:
        model, feed = fp32_matmul_model(m, k, n, rng), {"a": rng.standard_normal((m, k)).astype(np.float32)}
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feed)
    seconds = (time.perf_counter() - t0) / runs
    return m * k * n / seconds


# ------------------------------------------------------------------------------------------------
# one profiled call
# ------------------------------------------------------------------------------------------------
@dataclass
class OpProfile:
    """One profiled ``Reranker.rerank`` call.

    ``op_ms``: operator type -> summed node kernel time (ms) in that call; ``per_token_macs`` /
    ``per_pair_macs``: weight multiply-adds per real token / per pair (see the module docstring);
    ``widest_weight``: (K, N) of the largest per-token weight (for :func:`kernel_rate`);
    ``executed_weight_macs``: multiply-adds the weight operators ran in the call, padding included.
    """

    variant: str
    candidates: int
    runs: int
    wall_ms: float
    op_ms: dict[str, float]
    per_token_macs: int
    per_pair_macs: int
    widest_weight: tuple[int, int]
    executed_weight_macs: int
    weight_op_ms: float
    weight_nodes: dict[str, str] = field(default_factory=dict)  # node name -> "token" | "pair"

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.op_ms.values())
        return {
            "variant": self.variant, "candidates": self.candidates, "runs": self.runs, "wall_ms": round(self.wall_ms, 2),
            "kernel_ms": round(total, 2),
            "op_ms": {k: round(v, 3) for k, v in sorted(self.op_ms.items(), key=lambda kv: -kv[1])},
            "per_token_macs": self.per_token_macs, "per_pair_macs": self.per_pair_macs,
            "widest_weight": list(self.widest_weight), "executed_weight_macs": self.executed_weight_macs,
            "weight_op_ms": round(self.weight_op_ms, 2),
            "weight_nodes": {"per_token": sum(v == "token" for v in self.weight_nodes.values()),
                             "per_pair": sum(v == "pair" for v in self.weight_nodes.values())},
        }


def _shapes(event: Mapping[str, Any]) -> list[list[int]]:
    return [list(next(iter(d.values()))) for d in event.get("args", {}).get("input_type_shape", []) if d]


def profile_call(model_dir: str | Path, variant: str, query: str, docs: Sequence[str], *,
                 threads: int | None = None) -> OpProfile:
    """Profile one ``rerank(query, docs)`` of ``variant`` (after one unprofiled-in-result warm-up call).

    The Reranker is loaded through its public ``session_options=`` escape hatch with onnxruntime's
    profiler on (the graph cache is then off); the profile file is written when the session is
    released and read back from a temporary folder.

    Raises:
        BenchmarkError: the profile could not be read or holds no weight operator.
    """
    import onnxruntime as ort  # noqa: PLC0415

    from crossrank import Reranker  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="crossrank-profile-") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        if threads is not None:
            so.intra_op_num_threads = threads
        rr = Reranker.load(model_dir, variant=variant, provider="cpu", session_options=so)
        rr.rerank(query, list(docs))  # warm-up: arena growth and first-run costs stay out of the figures
        t0 = time.perf_counter()
        rr.rerank(query, list(docs))
        wall_ms = (time.perf_counter() - t0) * 1e3
        del rr
        gc.collect()  # onnxruntime writes the profile when the session is destroyed
        files = sorted(Path(tmp).glob("ort*.json"))
        if len(files) != 1:
            raise BenchmarkError(f"expected one onnxruntime profile in {tmp}, found {[f.name for f in files]}")
        events = json.loads(files[0].read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(runs) < 2 or len(runs) % 2:
        raise BenchmarkError(f"the profile holds {len(runs)} model runs; expected the same even number for two calls")
    measured = runs[len(runs) // 2:]
    start = measured[0]["ts"]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
             and e["ts"] >= start]
    op_ms: dict[str, float] = {}
    kinds: dict[str, str] = {}
    widths: dict[str, int] = {}
    widest = (0, 0)
    executed = 0
    weight_ms = 0.0
    for e in nodes:
        op = e["args"].get("op_name", "?")
        op_ms[op] = op_ms.get(op, 0.0) + e["dur"] / 1e3
        if op not in _WEIGHT_OPS:
            continue
        # The profile lists the shapes of the non-constant inputs only: a weight product has
        # exactly one input of rank >= 2 (the activations); scales and zero points are 1-D or scalars.
        acts = [sh for sh in _shapes(e) if len(sh) >= 2]
        outs = [list(next(iter(d.values()))) for d in e["args"].get("output_type_shape", []) if d]
        if len(acts) != 1 or not outs or not outs[0]:
            continue  # activation x activation (attention scores/context): not a weight product
        a = acts[0]
        n = int(outs[0][-1]) * (3 if op in ("QAttention", "Attention") else 1)  # fused attention: Q, K and V
        w = (int(a[-1]), n)
        k_n = w[0] * w[1]
        rows = int(np.prod(a[:-1]))
        executed += rows * k_n
        weight_ms += e["dur"] / 1e3
        name = e["name"][: -len("_kernel_time")]
        kind = "token" if len(a) == 3 and a[1] > 1 else "pair"  # [batch, seq, K] vs [batch, K] / [batch, 1, K]
        kinds[name] = kind
        widths[name] = k_n
        if kind == "token" and k_n > widest[0] * widest[1]:
            widest = (int(w[0]), int(w[1]))
    if not kinds:
        raise BenchmarkError(f"no weight operator in the profile of variant {variant!r}")
    return OpProfile(
        variant=variant, candidates=len(docs), runs=len(measured), wall_ms=wall_ms, op_ms=op_ms,
        per_token_macs=sum(widths[n] for n, k in kinds.items() if k == "token"),
        per_pair_macs=sum(widths[n] for n, k in kinds.items() if k == "pair"),
        widest_weight=widest, executed_weight_macs=executed, weight_op_ms=weight_ms, weight_nodes=kinds,
    )


def floor_table(latency: Mapping[str, Mapping[str, Any]], profile: OpProfile, rate: float) -> dict[str, dict[str, Any]]:
    """Per candidate count: the floor (ms) of the measured requests' mean token count, and the
    ratios of the measured median and mean latency to it.

    Args:
        latency: one system's latency summaries by count (``tokens_per_request``, ``p50_ms``,
            ``mean_ms`` as :func:`crossrank.bench.latency.summarize` gives them).
        profile: the variant's :class:`OpProfile` (per-token and per-pair multiply-adds).
        rate: kernel multiply-adds per second (:func:`kernel_rate`).
    """
    if rate <= 0:
        raise BenchmarkError(f"kernel rate must be positive, got {rate}")
    out: dict[str, dict[str, Any]] = {}
    for count, v in sorted(latency.items(), key=lambda kv: int(kv[0])):
        tokens = v.get("tokens_per_request")
        if tokens is None:
            continue
        macs = tokens * profile.per_token_macs + int(count) * profile.per_pair_macs
        floor_ms = macs / rate * 1e3
        out[str(count)] = {"tokens_per_request": round(float(tokens), 1), "weight_macs": int(macs),
                           "floor_ms": round(floor_ms, 2), "p50_ms": v["p50_ms"], "mean_ms": v.get("mean_ms"),
                           "ratio_p50": round(v["p50_ms"] / floor_ms, 3),
                           "ratio_mean": round(v["mean_ms"] / floor_ms, 3) if v.get("mean_ms") else None}
    return out
