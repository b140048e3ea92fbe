"""Which int8 scheme crossrank uses by default, and why: the measurement behind it.

For each int8 candidate of a cross-encoder (and its fp32 / ORT-optimized graphs) this measures

* nDCG@10 (trec_eval's definition: linear gain, log2 discount, ties by candidate position,
  normalised by ``ideal_top10``) on TREC DL 2020 (54 queries x 100 BM25 candidates) and SciFact
  (300 claims x 20 BM25 abstracts) at max_length 512 and 256, scoring length-sorted batches of
  <= 32 pairs padded to their own longest;
* the latency of reranking 50 TREC DL candidates (tokenization included; median over N queries,
  all candidates interleaved query by query in one process, so the ratios share the same noise);
* batch invariance: max |Δ logit| of the same 100 candidates scored as one padded batch of 100,
  as length-sorted batches of <= 32, and one pair at a time;
* fidelity: mean / max |Δ logit| against the fp32 graph on TREC DL;
* with ``--fidelity``, pair-level fidelity against fp32 per query on every scored set: mean
  Spearman over queries, top-1 agreement (same best candidate), top-5 agreement (mean overlap of
  the top-5 sets), max and mean |Δ logit| over all pairs.

    python benchmarks/int8_study.py --model /path/to/hf-cross-encoder [--data ../shared/data]
        [--work /tmp/int8-study] [--candidates all] [--threads 2] [--latency-queries 20]

    # the calibration study of docs/int8-fidelity.md: graphs from an exported crossrank folder
    python benchmarks/int8_study.py --folder /path/to/crossrank-folder --fidelity \
        --ndcg trec:512,wikiqa:512,scifact:512 --slices trec=14:54:50,scifact=0:40: \
        --candidates crossrank-static,static-p99.99,...

``--folder`` takes the graphs of a crossrank model folder instead of exporting them: ``fp32`` is
then the folder's ORT-optimized fp32 graph ``model.opt.onnx`` (the int8 source; its scores are
within 1e-5 of PyTorch's). ``--slices set=first:last:candidates`` scores only queries
``[first:last]`` of a set and the first ``candidates`` of each (empty = all); the slice is part of
the score cache key.

Data is read from ``--data`` (default ``../shared/data`` beside the repository); nothing is copied.
Scores are cached under ``--work`` so that an interrupted run resumes; the markdown table goes to
stdout (and ``--out``). Needs the ``export`` and ``bench`` extras.

Candidates (``--candidates`` takes a comma list of these names):

=========================  ===================================================================
fp32                       plain optimum export (the reference)
optimized                  ORT transformer fusions (Attention, SkipLayerNorm, BiasGelu...)
crossrank-static           crossrank.export.quantize, scheme "static" as it was before issue 14
                           (MinMax, no scale migration, every projection int8); every
                           ``static-*`` name below starts from it
crossrank-default          crossrank.export.quantize with nothing set: today's default (scale
                           migration at 0.7, first three FFN down-projections fp32; the same
                           graph as ``static-keep-ffn-down@012-smooth-a0.7`` on MiniLM-L6)
crossrank-dynamic          crossrank.export.quantize, scheme "dynamic", every projection int8
dyn-fused-s8-tensor        quantize_dynamic on the fused graph, s8 weights per tensor, full range
                           (the issue's quick prototype)
dyn-fused-u8-channel       quantize_dynamic on the fused graph, u8 weights per channel (U8U8)
dyn-plain-st               sentence-transformers' avx2 recipe (optimum AutoQuantizationConfig.avx2:
                           plain graph, dynamic, u8 weights per channel, all IntegerOps)
static-fastgelu            crossrank static on the fused graph with BiasGelu (erf) swapped for
                           FastGelu (tanh approximation): approximate GELU, a floor lever
static-qdq-plain-naive     quantize_static QDQ on the plain graph with ORT's defaults (s8
                           activations and weights, per channel, MatMul)
static-qdq-plain-repaired  the same made usable: u8 activations, 7-bit weights, weight MatMuls
                           only, MatMul outputs not quantized, residual stream kept fp32
static[-PAIRS][-smooth-aA][-pP]
                           crossrank static with its options, composed by name, e.g.
                           ``static-p99.999``, ``static-smooth-a0.7``, ``static-long-smooth-a0.7-p99.999``:
                           PAIRS ``long`` = built-in pairs plus long synthetic ones (each built-in
                           query with its own passages joined, ~300-500 tokens), ``trec-heldout`` =
                           TREC DL 2020 queries 0-13, first 20 candidates each (evaluate TREC only
                           on queries 14-53); ``smoothing_alpha=A``; ``calibration_method=
                           "percentile"`` at P; default: built-in pairs, MinMax
static-keep-SPEC           crossrank static (MinMax) with operators left fp32 (``keep_fp32``; BERT
                           node names); SPEC is ``+``-joined GROUP[@LAYERS]: GROUP qkv, attn-out,
                           ffn-up, ffn-down, layer (all four), cls (the pruned last layer's
                           operators that run on the [CLS] row only); LAYERS digits; optionally
                           ``-smooth-aA`` (scale migration of the rest), e.g. ``static-keep-ffn-down``
                           (all layers), ``static-keep-cls+ffn-down@04``, ``static-keep-ffn-down@01-smooth-a0.85``
=========================  ===================================================================
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SETS = {"trec": "trec-dl-2020.jsonl.gz", "wikiqa": "wikiqa-test.jsonl.gz", "scifact": "scifact-test-bm25top20.jsonl.gz"}
HELDOUT_TREC_QUERIES = 14  # static-trec-heldout calibrates on TREC queries [0:14]


# ------------------------------------------------------------------------------------------------
# data and metric
# ------------------------------------------------------------------------------------------------
def load_set(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _dcg(gains: list[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))


def ndcg10(record: dict, scores: np.ndarray | list[float]) -> float:
    labels = [c["label"] for c in record["candidates"]]
    order = sorted(range(len(labels)), key=lambda i: (-float(scores[i]), i))  # ties: candidate position
    ideal = record.get("ideal_top10") or labels
    idcg = _dcg(sorted(ideal, reverse=True))
    return _dcg([labels[i] for i in order]) / idcg if idcg > 0 else 0.0


def mean_ndcg(records: list[dict], flat_scores: np.ndarray) -> float:
    out, k = [], 0
    for r in records:
        n = len(r["candidates"])
        out.append(ndcg10(r, flat_scores[k : k + n]))
        k += n
    return float(np.mean(out))


# ------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------
class _Row:
    """One encoded pair, shaped like a `tokenizers` Encoding for score() and _Reader."""

    def __init__(self, ids: np.ndarray, type_ids: np.ndarray) -> None:
        self.ids, self.type_ids = ids, type_ids


class _RuntimeTokenizer:
    """The runtime's own PairEncoder (crossrank.tokenize), so the study's inputs are the ones users get."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def encode_batch(self, pairs: list[tuple[str, str]]) -> list[_Row]:
        enc = self.encoder.encode(list(pairs))
        o = enc.offsets
        return [_Row(enc.ids[o[i] : o[i + 1]], enc.type_ids[o[i] : o[i + 1]]) for i in range(len(enc))]


def make_tokenizer(path: Path, max_length: int) -> _RuntimeTokenizer:
    from crossrank.tokenize import PairEncoder

    # num_special_tokens_pair 0: the tokenizer's own pair template decides (an HF folder has no manifest)
    return _RuntimeTokenizer(PairEncoder(path, max_length=max_length, num_special_tokens_pair=0))


def make_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # shared machine: spinning threads only steal time from the other process's threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(session, encs, names: list[str]) -> np.ndarray:
    width = max(len(e.ids) for e in encs)
    feed = {k: np.zeros((len(encs), width), np.int64) for k in INPUTS}
    for i, e in enumerate(encs):
        feed["input_ids"][i, : len(e.ids)] = e.ids
        feed["attention_mask"][i, : len(e.ids)] = 1
        feed["token_type_ids"][i, : len(e.ids)] = e.type_ids
    return session.run(None, {k: feed[k] for k in names})[0][:, 0]


def score(session, tok, pairs: list[tuple[str, str]], *, mode: str = "sorted", batch: int = 32) -> np.ndarray:
    """Logits in input order. mode: sorted (length-sorted batches), one (input order), single."""
    names = [i.name for i in session.get_inputs()]
    encs = tok.encode_batch(pairs)
    out = np.empty(len(pairs), np.float32)
    if mode == "single":
        for i, e in enumerate(encs):
            out[i] = _run(session, [e], names)[0]
        return out
    idx = list(range(len(encs)))
    if mode == "sorted":
        idx.sort(key=lambda i: len(encs[i].ids))
    for s in range(0, len(idx), batch):
        chunk = idx[s : s + batch]
        out[chunk] = _run(session, [encs[i] for i in chunk], names)
    return out


# ------------------------------------------------------------------------------------------------
# graphs
# ------------------------------------------------------------------------------------------------
def prepare_graphs(model: Path, work: Path) -> tuple[Path, Path, Path]:
    """(plain fp32 graph, ORT-optimized graph, tokenizer.json), exported once into ``work``."""
    from onnxruntime.transformers.optimizer import optimize_model
    from optimum.exporters.onnx import main_export
    from transformers import AutoConfig

    plain = work / "fp32" / "model.onnx"
    if not plain.is_file():
        main_export(str(model), work / "fp32", task="text-classification")
    opt = work / "model.opt.onnx"
    if not opt.is_file():
        cfg = AutoConfig.from_pretrained(model)
        m = optimize_model(str(plain), model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
        m.save_model_to_file(str(opt))
    return plain, opt, work / "fp32" / "tokenizer.json"


def _keep_residual_fp32(path: Path) -> None:
    """QDQ repair: consumers of a dequantized activation other than MatMul read the fp32 original
    (ORT's QDQ quantizer feeds one shared Q/DQ pair to every consumer, residual Add included)."""
    import onnx

    m = onnx.load(str(path))
    g = m.graph
    init = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    source = {}
    for n in g.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in init:
            source[n.output[0]] = q.input[0]
    for n in g.node:
        if n.op_type in ("MatMul", "QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(n.input):
            if name in source:
                n.input[k] = source[name]
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not set(n.output) & used]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    onnx.save(m, str(path))


class _Reader:
    def __init__(self, tok, pairs):
        self.feeds = []
        for e in tok.encode_batch(pairs):
            n = len(e.ids)
            self.feeds.append({"input_ids": np.array([e.ids], np.int64), "attention_mask": np.ones((1, n), np.int64),
                               "token_type_ids": np.array([e.type_ids], np.int64)})
        self.it = iter(self.feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.feeds)


def long_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Long synthetic calibration pairs from ``pairs``: each query with all its passages joined,
    rotated so that each passage leads once (~300-500 tokens for the built-in set)."""
    by_query: dict[str, list[str]] = {}
    for q, d in pairs:
        by_query.setdefault(q, []).append(d)
    out = []
    for q, docs in by_query.items():
        for k in range(len(docs)):
            out.append((q, " ".join(docs[k:] + docs[:k])))
    return out


def heldout_pairs(data: Path) -> list[tuple[str, str]]:
    recs = load_set(data / SETS["trec"])[:HELDOUT_TREC_QUERIES]
    return [(r["query"], c["text"]) for r in recs for c in r["candidates"][:20]]


# quantize_int8 options that give the scheme as it was before issue 14 (no migration, every projection int8)
BARE = {"static": {"smoothing_alpha": 0, "fp32_ffn_down_layers": 0}, "dynamic": {"fp32_ffn_down_layers": 0}}


def build_candidates(plain: Path, opt: Path, tokenizer: Path, work: Path, max_length: int,
                     data: Path | None = None) -> dict[str, Callable[[], Path]]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from crossrank.export.quantize import load_calibration_pairs, quantize_int8

    q = work / "int8"
    q.mkdir(parents=True, exist_ok=True)
    default_type = {"DefaultTensorType": onnx.TensorProto.FLOAT}

    def cached(name: str, make: Callable[[Path], None]) -> Callable[[], Path]:
        def build() -> Path:
            out = q / f"{name}.onnx"
            if not out.is_file():
                make(out)
            return out
        return build

    def crossrank(scheme: str, pairs: Callable[[], list] | None = None, **options):
        # the candidates are levers over the bare scheme (the default before issue 14), so that a
        # name builds the same graph whatever quantize_int8's defaults are today
        options = {**BARE[scheme], **options}
        return lambda out: quantize_int8(opt, out, scheme=scheme, calibration_pairs=None if pairs is None else pairs(),
                                         tokenizer_json=tokenizer, input_names=list(INPUTS), max_length=max_length,
                                         **options)

    def composed(name: str) -> Callable[[], Path] | None:
        """static[-long|-trec-heldout][-smooth-aA][-pP]: calibration pairs, scale migration, percentile."""
        m = re.fullmatch(r"static(-long|-trec-heldout)?(?:-smooth-a([0-9.]+))?(?:-p([0-9.]+))?", name)
        if m is None or name == "static":
            return None
        pairs = {None: None, "-long": lambda: builtin() + long_pairs(builtin()), "-trec-heldout": held}[m.group(1)]
        options: dict = {}
        if m.group(2):
            options["smoothing_alpha"] = float(m.group(2))
        if m.group(3):
            options.update(calibration_method="percentile", calibration_percentile=float(m.group(3)))
        return cached(name, crossrank("static", pairs, **options))

    def keep(spec: str) -> Callable[[], Path]:
        """static-keep-SPEC: the default with some operators left fp32 (per-operator sensitivity).

        SPEC is ``+``-joined GROUP[@LAYERS] tokens, e.g. ``ffn-down``, ``ffn-down@05``, ``cls+ffn-down@0``,
        optionally ending in ``-smooth-aA`` (scale migration of the operators still quantized).
        """
        import onnx as _onnx

        from crossrank.export.quantize import _nodes_to_quantize

        def layer_of(n: str) -> int:
            m = re.match(r"Attention_(\d+)", n) or re.search(r"/layer\.(\d+)/", n)
            return int(m.group(1)) if m else -1

        groups = {"qkv": lambda n: n.startswith("Attention_"),
                  "attn-out": lambda n: "/attention/output/dense/" in n,
                  "ffn-up": lambda n: "/intermediate/dense/" in n,
                  "ffn-down": lambda n: "/output/dense/" in n and "/attention/" not in n,
                  "layer": lambda n: True,
                  # the pruned last layer's operators that run on the [CLS] row only (all but K/V):
                  # keeping them fp32 costs one row per pair
                  "cls": lambda n: n == "Attention_5/cls_only/q_matmul"
                  or ("/layer.5/" in n and "kv_matmul" not in n)}
        m = re.fullmatch(r"(.+?)(?:-smooth-a([0-9.]+))?", spec)
        options = {"smoothing_alpha": float(m.group(2))} if m.group(2) else {}
        picks = []
        for token in m.group(1).split("+"):
            group, _, layers = token.partition("@")
            if group not in groups or (layers and not layers.isdigit()):
                return None
            picks.append((groups[group], {int(c) for c in layers} if layers else None))

        def make(out: Path) -> None:
            names = list(_nodes_to_quantize(_onnx.load(str(opt), load_external_data=False)))
            kept = [n for n in names if any(g(n) and (ls is None or layer_of(n) in ls) for g, ls in picks)]
            quantize_int8(opt, out, scheme="static", calibration_pairs=None, tokenizer_json=tokenizer,
                          input_names=list(INPUTS), max_length=max_length, keep_fp32=kept,
                          **{**BARE["static"], **options})
        return cached(f"static-keep-{spec}", make)

    class Candidates(dict):
        def __missing__(self, name: str) -> Callable[[], Path]:
            build = composed(name)
            if build is None and name.startswith("static-keep-"):
                build = keep(name[len("static-keep-"):])
            if build is None:
                raise KeyError(name)
            return build

        def __contains__(self, name: object) -> bool:
            return dict.__contains__(self, name) or (isinstance(name, str) and self._composable(name))

        @staticmethod
        def _composable(name: str) -> bool:
            if name.startswith("static-keep-"):
                return keep(name[len("static-keep-"):]) is not None
            return composed(name) is not None

    def static_plain(out: Path, *, repaired: bool) -> None:
        reader = _Reader(make_tokenizer(tokenizer, max_length), load_calibration_pairs(None))
        extra = dict(default_type, ActivationSymmetric=not repaired, WeightSymmetric=True)
        if repaired:
            extra.update(MatMulConstBOnly=True, OpTypesToExcludeOutputQuantization=["MatMul"])
        quantize_static(str(plain), str(out), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=True, reduce_range=repaired,
                        activation_type=QuantType.QUInt8 if repaired else QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
        if repaired:
            _keep_residual_fp32(out)

    def fastgelu(out: Path) -> None:
        """The default int8 of the fused graph with its exact (erf) BiasGelu swapped for
        com.microsoft FastGelu (tanh approximation, same inputs: x and bias): the floor study's
        approximate-GELU lever."""
        g = onnx.load(str(opt))
        swapped = 0
        for node in g.graph.node:
            if node.op_type == "BiasGelu" and node.domain == "com.microsoft":
                node.op_type = "FastGelu"
                swapped += 1
        if not swapped:
            raise SystemExit(f"{opt} has no BiasGelu to approximate")
        approx = out.with_name("fastgelu.opt.onnx")
        onnx.save(g, str(approx))
        quantize_int8(approx, out, scheme="static", calibration_pairs=None, tokenizer_json=tokenizer,
                      input_names=list(INPUTS), max_length=max_length, **BARE["static"])

    builtin = lambda: load_calibration_pairs(None)  # noqa: E731
    held = lambda: heldout_pairs(data)  # noqa: E731
    return Candidates({
        "fp32": lambda: plain,
        "optimized": lambda: opt,
        "crossrank-static": cached("crossrank-static", crossrank("static")),
        "crossrank-default": cached("crossrank-default", lambda out: quantize_int8(
            opt, out, scheme="static", calibration_pairs=None, tokenizer_json=tokenizer, input_names=list(INPUTS),
            max_length=max_length)),
        "static-fastgelu": cached("static-fastgelu", fastgelu),
        "crossrank-dynamic": cached("crossrank-dynamic", crossrank("dynamic")),
        "dyn-fused-s8-tensor": cached("dyn-fused-s8-tensor", lambda out: quantize_dynamic(
            str(opt), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
            extra_options=default_type)),
        "dyn-fused-u8-channel": cached("dyn-fused-u8-channel", lambda out: quantize_dynamic(
            str(opt), str(out), weight_type=QuantType.QUInt8, per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"], extra_options=default_type)),
        "dyn-plain-st": cached("dyn-plain-st", lambda out: quantize_dynamic(
            str(plain), str(out), weight_type=QuantType.QUInt8, per_channel=True,
            op_types_to_quantize=["Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization"],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})),
        "static-qdq-plain-naive": cached("static-qdq-plain-naive", lambda out: static_plain(out, repaired=False)),
        "static-qdq-plain-repaired": cached("static-qdq-plain-repaired", lambda out: static_plain(out, repaired=True)),
    })


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------
def per_query_fidelity(records: list[dict], ref: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """Pair-level fidelity of ``s`` against ``ref`` (flat, in record order): mean Spearman over
    queries, top-1 agreement, top-5 overlap (queries with > 5 candidates), max / mean |Δ logit|."""
    from crossrank.export.validate import spearman

    rho, top1, top5, k = [], [], [], 0
    for r in records:
        n = len(r["candidates"])
        a, b = ref[k : k + n], s[k : k + n]
        k += n
        rho.append(spearman(a, b))
        ra, rb = np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable")
        top1.append(float(ra[0] == rb[0]))
        if n > 5:
            top5.append(len(set(ra[:5].tolist()) & set(rb[:5].tolist())) / 5.0)
    d = np.abs(s - ref)
    return {"spearman": float(np.mean(rho)), "top1": float(np.mean(top1)),
            "top5": float(np.mean(top5)) if top5 else float("nan"), "max_d": float(d.max()), "mean_d": float(d.mean())}


def parse_slices(text: str) -> dict[str, tuple[int | None, int | None, int | None]]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, spec = item.split("=")
        first, last, cands = (spec.split(":") + ["", "", ""])[:3]
        out[name] = tuple(int(v) if v else None for v in (first, last, cands))
    return out


def apply_slice(records: list[dict], cut: tuple[int | None, int | None, int | None] | None) -> list[dict]:
    if cut is None:
        return records
    first, last, cands = cut
    return [dict(r, candidates=r["candidates"][:cands]) for r in records[first:last]]


def cached_scores(work: Path, cand: str, set_name: str, max_length: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    f = work / "scores" / f"{cand}__{set_name}_{max_length}.npy"
    if f.is_file():
        return np.load(f)
    f.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    s = compute()
    np.save(f, s)
    print(f"  scored {cand} on {set_name}@{max_length} in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return s


def latency(sessions: dict[str, object], tok, records: list[dict], *, candidates: int, rounds: int) -> dict[str, list[float]]:
    names = list(sessions)
    times: dict[str, list[float]] = {n: [] for n in names}
    warm = [(records[0]["query"], c["text"]) for c in records[0]["candidates"][:candidates]]
    for n in names:
        score(sessions[n], tok, warm)
    for _ in range(rounds):
        for qi, r in enumerate(records):
            pairs = [(r["query"], c["text"]) for c in r["candidates"][:candidates]]
            for n in names[qi % len(names):] + names[: qi % len(names)]:  # rotate who goes first
                t = time.perf_counter()
                score(sessions[n], tok, pairs)
                times[n].append(time.perf_counter() - t)
    return times


def invariance(session, tok, records: list[dict], count: int) -> float:
    worst = 0.0
    for r in records:
        pairs = [(r["query"], c["text"]) for c in r["candidates"][:count]]
        one = score(session, tok, pairs, mode="one", batch=len(pairs))
        srt = score(session, tok, pairs, mode="sorted", batch=32)
        single = score(session, tok, pairs, mode="single")
        worst = max(worst, float(np.abs(one - srt).max()), float(np.abs(one - single).max()), float(np.abs(srt - single).max()))
    return worst


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="Hugging Face cross-encoder folder (exported here)")
    src.add_argument("--folder", type=Path, help="crossrank model folder: its model.opt.onnx is the fp32 reference")
    p.add_argument("--fidelity", action="store_true", help="per-query pair fidelity against fp32 on every set")
    p.add_argument("--slices", default="", help="set=first:last:candidates,... (score a slice of a set)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder of the relevance sets")
    p.add_argument("--work", type=Path, default=Path("/tmp/crossrank-int8-study"), help="scratch folder (graphs, score cache)")
    p.add_argument("--candidates", default="all", help="comma list of candidate names, or 'all'")
    p.add_argument("--ndcg", default="trec:512,scifact:512,scifact:256", help="set:max_length list ('' to skip nDCG)")
    p.add_argument("--calibration-length", type=int, default=512, help="max_length for calibration and latency")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-queries", type=int, default=20, help="0: no latency measurement")
    p.add_argument("--latency-candidates", type=int, default=50)
    p.add_argument("--latency-rounds", type=int, default=2)
    p.add_argument("--invariance-queries", type=int, default=2, help="0: no batch-invariance check")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    if args.folder:
        plain, opt, tokenizer = args.folder / "model.opt.onnx", args.folder / "model.opt.onnx", args.folder / "tokenizer.json"
    else:
        plain, opt, tokenizer = prepare_graphs(args.model, args.work)
    builders = build_candidates(plain, opt, tokenizer, args.work, args.calibration_length, args.data)
    names = list(builders) if args.candidates == "all" else [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = {n for n in names if n not in builders}
    if unknown:
        p.error(f"unknown candidates {sorted(unknown)}; choose from {', '.join(builders)}")
    if "fp32" not in names:
        names.insert(0, "fp32")  # the reference of every ratio
    paths = {}
    for n in names:
        t = time.perf_counter()
        paths[n] = builders[n]()
        print(f"  graph {n}: {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    data = {k: load_set(args.data / f) for k, f in SETS.items()}
    for k, recs in data.items():  # the metric must reproduce the published first-stage figures
        first_stage = mean_ndcg(recs, np.concatenate([-np.arange(len(r["candidates"]), dtype=np.float32) for r in recs]))
        print(f"first-stage nDCG@10 {k}: {first_stage:.4f}", file=sys.stderr)

    rows: dict[str, dict] = {n: {} for n in names}
    specs = [(s.split(":")[0], int(s.split(":")[1])) for s in args.ndcg.split(",") if s.strip()]
    slices = parse_slices(args.slices)
    for set_name, length in specs:
        recs = apply_slice(data[set_name], slices.get(set_name))
        key = set_name + ("[" + ":".join("" if v is None else str(v) for v in slices[set_name]) + "]"
                          if set_name in slices else "")
        pairs = [(r["query"], c["text"]) for r in recs for c in r["candidates"]]
        tok = make_tokenizer(tokenizer, length)
        for n in names:
            s = cached_scores(args.work, n, key, length,
                              lambda: score(make_session(paths[n], args.threads), tok, pairs))
            rows[n][f"{set_name}@{length}"] = mean_ndcg(recs, s)
            if args.fidelity:
                ref = cached_scores(args.work, "fp32", key, length, lambda: np.zeros(0))
                rows[n][f"fid {set_name}"] = per_query_fidelity(recs, ref, s)
            elif set_name == "trec":
                ref = cached_scores(args.work, "fp32", set_name, length, lambda: np.zeros(0))
                if ref.shape == s.shape:
                    rows[n]["mean_d"] = float(np.abs(s - ref).mean())
                    rows[n]["max_d"] = float(np.abs(s - ref).max())

    tok = make_tokenizer(tokenizer, args.calibration_length)
    sessions = {n: make_session(paths[n], args.threads) for n in names}
    for n in names:
        rows[n]["invariance"] = (invariance(sessions[n], tok, data["trec"][5 : 5 + args.invariance_queries], 100)
                                 if args.invariance_queries else float("nan"))
    if args.latency_queries:
        times = latency(sessions, tok, data["trec"][: args.latency_queries], candidates=args.latency_candidates,
                        rounds=args.latency_rounds)
        base = np.array(times["fp32"])
    for n in names:
        t = np.array(times[n]) if args.latency_queries else np.array([np.nan])
        rows[n]["ms"] = 1000 * float(np.median(t))
        rows[n]["speedup"] = float(np.median(base / t)) if args.latency_queries else float("nan")

    cols = [f"{s}@{l}" for s, l in specs]
    head = "| candidate |" + "".join(f" nDCG {c} (% fp32) |" for c in cols) + \
        f" mean/max abs Δ logit TREC | ms@{args.latency_candidates} | speedup vs fp32 | batch-invariance max abs Δ |"
    lines = [head, "|" + "---|" * (len(cols) + 5)]
    for n in names:
        r, ref = rows[n], rows["fp32"]
        cells = [f"{r[c]:.4f} ({100 * r[c] / ref[c]:.2f}%)" if c in r else "–" for c in cols]
        fid = f"{r['mean_d']:.3f} / {r['max_d']:.2f}" if "mean_d" in r else "–"
        lines.append(f"| {n} |" + "".join(f" {c} |" for c in cells) + f" {fid} | {r['ms']:.0f} | {r['speedup']:.2f}x | {r['invariance']:.2g} |")
    if args.fidelity:
        sets = [s for s, _ in specs]
        lines += ["", "| candidate | " + " | ".join(f"{s}: Spearman / top-1 / top-5 / max / mean abs Δ logit" for s in sets)
                  + " |", "|" + "---|" * (len(sets) + 1)]
        for n in names:
            cells = []
            for s in sets:
                f = rows[n][f"fid {s}"]
                cells.append(f"{f['spearman']:.4f} / {f['top1']:.3f} / {f['top5']:.3f} / {f['max_d']:.3f} / {f['mean_d']:.4f}")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
