"""GPU check: CUDA vs CPU score parity and speed of one crossrank model folder.

    python benchmarks/gpu_check.py MODEL_DIR [--data trec-dl-2020.jsonl.gz] [--queries 8] [--json out.json]

Scores TREC DL 2020 passages (BM25 top-100 per query, from ../shared/data by default) with:

* CPU: the ``fp32`` reference (raw logits) and the default CPU variant (int8 when present);
* CUDA: every variant meant for it (``fp16`` when present, ``optimized``/``fp32``), through the
  Reranker's I/O-bound CUDA session;

and prints, per CUDA variant, the largest |logit difference| to CPU fp32, the Spearman correlation and
top-10 agreement, then median milliseconds to rerank 10, 50 and 100 candidates on each. Checks:
CUDA fp32-precision variants within 1e-3 of CPU fp32, fp16 within 2e-2, Spearman >= 0.99.

Without a CUDA execution provider it runs the CPU part, says so, and exits 0 (``--require-cuda``
makes that exit 2). Exit 1 when a parity check fails. Needs only the runtime (no torch).
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from crossrank import Reranker

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "trec-dl-2020.jsonl.gz"
SIZES = (10, 50, 100)
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": None}


def _rows(path: Path, n: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:n]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def _raw(rr: Reranker, rows: list[dict]) -> list[np.ndarray]:
    return [rr.score(r["query"], [c["text"] for c in r["candidates"]], raw=True) for r in rows]


def _timings(rr: Reranker, rows: list[dict], repeats: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for n in SIZES:
        # one untimed pass first: a GPU provider pays once for each new batch shape (kernel choice,
        # arena growth), which put half of the 16 timed calls at 50 candidates 3-4x over the rest
        for r in rows:
            rr.rerank(r["query"], [c["text"] for c in r["candidates"][:n]])
        times = []
        for _ in range(repeats):
            for r in rows:
                docs = [c["text"] for c in r["candidates"][:n]]
                t0 = time.perf_counter()
                rr.rerank(r["query"], docs)
                times.append(time.perf_counter() - t0)
        out[n] = 1000 * statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="crossrank model folder")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="TREC DL style .jsonl.gz (default: ../shared/data)")
    ap.add_argument("--queries", type=int, default=8, help="queries to use (default 8)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over the queries (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: onnxruntime's)")
    ap.add_argument("--require-cuda", action="store_true", help="exit 2 when CUDA is not available")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import onnxruntime

    rows = _rows(args.data, args.queries)
    report: dict = {"onnxruntime": onnxruntime.__version__, "providers_available": onnxruntime.get_available_providers(), "queries": len(rows)}
    print(f"onnxruntime {onnxruntime.__version__}; providers: {', '.join(report['providers_available'])}")

    cpu_ref = Reranker.load(args.model, variant="fp32", provider="cpu", threads=args.threads)
    ref = _raw(cpu_ref, rows)
    cpu_default = Reranker.load(args.model, provider="cpu", threads=args.threads)
    report["cpu"] = {
        "variant": cpu_default.variant,
        "ms": _timings(cpu_default, rows, args.repeats),
    }
    print(f"CPU {cpu_default.variant}: " + ", ".join(f"{n} candidates {ms:.1f} ms" for n, ms in report["cpu"]["ms"].items()))

    if "CUDAExecutionProvider" not in report["providers_available"]:
        print(
            'CUDA check skipped: this onnxruntime has no CUDAExecutionProvider (pip install "crossrank[gpu]" on a GPU machine). '
            "Only the CPU part ran."
        )
        _write(args.json, report)
        return 2 if args.require_cuda else 0

    failed = False
    report["cuda"] = {}
    variants = [v for v, spec in cpu_ref.manifest.variants.items() if "cuda" in spec.providers and spec.precision != "int8"]
    for variant in variants:
        rr = Reranker.load(args.model, variant=variant, provider="cuda")
        got = _raw(rr, rows)
        diff = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref))
        rho = min(_spearman(g, r) for g, r in zip(got, ref))
        top10 = statistics.mean(
            len(set(np.argsort(-g, kind="stable")[:10]) & set(np.argsort(-r, kind="stable")[:10])) / 10 for g, r in zip(got, ref)
        )
        precision = rr.manifest.variants[variant].precision
        tol = TOLERANCE.get(precision)
        ok = (tol is None or diff <= tol) and rho >= 0.99
        failed |= not ok
        ms = _timings(rr, rows, args.repeats)
        report["cuda"][variant] = {"providers": rr.providers, "max_abs_logit_diff": diff, "min_spearman": rho, "top10_agreement": top10, "ms": ms, "ok": ok}
        print(
            f"CUDA {variant} ({', '.join(rr.providers)}): max |dlogit| vs CPU fp32 {diff:.2e} (limit {tol}), "
            f"min Spearman {rho:.4f}, top-10 agreement {top10:.3f} -> {'OK' if ok else 'FAIL'}; "
            + ", ".join(f"{n} candidates {v:.1f} ms (CPU {report['cpu']['ms'][n] / v:.1f}x slower)" for n, v in ms.items())
        )
    _write(args.json, report)
    return 1 if failed else 0


def _write(path: Path | None, report: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
