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
* fidelity: mean / max |Δ logit| against the fp32 graph on TREC DL.

    python benchmarks/int8_study.py --model /path/to/hf-cross-encoder [--data ../shared/data]
        [--work /tmp/int8-study] [--candidates all] [--threads 2] [--latency-queries 20]

Data is read from ``--data`` (default ``../shared/data`` beside the repository); nothing is copied.
Scores are cached under ``--work`` so that an interrupted run resumes; the markdown table goes to
stdout (and ``--out``). Needs the ``export`` and ``bench`` extras.

Candidates (``--candidates`` takes a comma list of these names):

=========================  ===================================================================
fp32                       plain optimum export (the reference)
optimized                  ORT transformer fusions (Attention, SkipLayerNorm, BiasGelu...)
crossrank-static           crossrank.export.quantize, scheme "static" (the default)
crossrank-dynamic          crossrank.export.quantize, scheme "dynamic"
dyn-fused-s8-tensor        quantize_dynamic on the fused graph, s8 weights per tensor, full range
                           (the issue's quick prototype)
dyn-fused-u8-channel       quantize_dynamic on the fused graph, u8 weights per channel (U8U8)
dyn-plain-st               sentence-transformers' avx2 recipe (optimum AutoQuantizationConfig.avx2:
                           plain graph, dynamic, u8 weights per channel, all IntegerOps)
static-qdq-plain-naive     quantize_static QDQ on the plain graph with ORT's defaults (s8
                           activations and weights, per channel, MatMul)
static-qdq-plain-repaired  the same made usable: u8 activations, 7-bit weights, weight MatMuls
                           only, MatMul outputs not quantized, residual stream kept fp32
=========================  ===================================================================
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SETS = {"trec": "trec-dl-2020.jsonl.gz", "scifact": "scifact-test-bm25top20.jsonl.gz"}


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


def build_candidates(plain: Path, opt: Path, tokenizer: Path, work: Path, max_length: int) -> dict[str, Callable[[], Path]]:
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

    def crossrank(scheme: str):
        return lambda out: quantize_int8(opt, out, scheme=scheme, calibration_pairs=None, tokenizer_json=tokenizer,
                                         input_names=list(INPUTS), max_length=max_length)

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

    return {
        "fp32": lambda: plain,
        "optimized": lambda: opt,
        "crossrank-static": cached("crossrank-static", crossrank("static")),
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
    }


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------
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
    p.add_argument("--model", type=Path, required=True, help="Hugging Face cross-encoder folder")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder of the relevance sets")
    p.add_argument("--work", type=Path, default=Path("/tmp/crossrank-int8-study"), help="scratch folder (graphs, score cache)")
    p.add_argument("--candidates", default="all", help="comma list of candidate names, or 'all'")
    p.add_argument("--ndcg", default="trec:512,scifact:512,scifact:256", help="set:max_length list ('' to skip nDCG)")
    p.add_argument("--calibration-length", type=int, default=512, help="max_length for calibration and latency")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-queries", type=int, default=20)
    p.add_argument("--latency-candidates", type=int, default=50)
    p.add_argument("--latency-rounds", type=int, default=2)
    p.add_argument("--invariance-queries", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    plain, opt, tokenizer = prepare_graphs(args.model, args.work)
    builders = build_candidates(plain, opt, tokenizer, args.work, args.calibration_length)
    names = list(builders) if args.candidates == "all" else [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = set(names) - set(builders)
    if unknown:
        p.error(f"unknown candidates {sorted(unknown)}; choose from {', '.join(builders)}")
    if "fp32" not in names:
        names.insert(0, "fp32")  # the reference of every ratio
    paths = {n: builders[n]() for n in names}
    data = {k: load_set(args.data / f) for k, f in SETS.items()}
    for k, recs in data.items():  # the metric must reproduce the published first-stage figures
        first_stage = mean_ndcg(recs, np.concatenate([-np.arange(len(r["candidates"]), dtype=np.float32) for r in recs]))
        print(f"first-stage nDCG@10 {k}: {first_stage:.4f}", file=sys.stderr)

    rows: dict[str, dict] = {n: {} for n in names}
    specs = [(s.split(":")[0], int(s.split(":")[1])) for s in args.ndcg.split(",") if s.strip()]
    for set_name, length in specs:
        recs = data[set_name]
        pairs = [(r["query"], c["text"]) for r in recs for c in r["candidates"]]
        tok = make_tokenizer(tokenizer, length)
        for n in names:
            s = cached_scores(args.work, n, set_name, length,
                              lambda: score(make_session(paths[n], args.threads), tok, pairs))
            rows[n][f"{set_name}@{length}"] = mean_ndcg(recs, s)
            if set_name == "trec":
                ref = cached_scores(args.work, "fp32", set_name, length, lambda: np.zeros(0))
                if ref.shape == s.shape:
                    rows[n]["mean_d"] = float(np.abs(s - ref).mean())
                    rows[n]["max_d"] = float(np.abs(s - ref).max())

    tok = make_tokenizer(tokenizer, args.calibration_length)
    sessions = {n: make_session(paths[n], args.threads) for n in names}
    for n in names:
        rows[n]["invariance"] = invariance(sessions[n], tok, data["trec"][5 : 5 + args.invariance_queries], 100)
    times = latency(sessions, tok, data["trec"][: args.latency_queries], candidates=args.latency_candidates,
                    rounds=args.latency_rounds)
    base = np.array(times["fp32"])
    for n in names:
        t = np.array(times[n])
        rows[n]["ms"] = 1000 * float(np.median(t))
        rows[n]["speedup"] = float(np.median(base / t))  # per-query ratio: robust to load drifting over the run

    cols = [f"{s}@{l}" for s, l in specs]
    head = "| candidate | " + " | ".join(f"nDCG {c} (% fp32)" for c in cols) + \
        f" | mean/max abs Δ logit TREC | ms@{args.latency_candidates} | speedup vs fp32 | batch-invariance max abs Δ |"
    lines = [head, "|" + "---|" * (len(cols) + 5)]
    for n in names:
        r, ref = rows[n], rows["fp32"]
        cells = [f"{r[c]:.4f} ({100 * r[c] / ref[c]:.2f}%)" if c in r else "–" for c in cols]
        fid = f"{r['mean_d']:.3f} / {r['max_d']:.2f}" if "mean_d" in r else "–"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {fid} | {r['ms']:.0f} | {r['speedup']:.2f}x | {r['invariance']:.2g} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
