"""How fast onnxruntime's int8 and fp32 matrix products run on this CPU, on one large matrix.

    python benchmarks/kernel_peak.py [--threads 1,2] [--shape 2048,384,1536]

Times one ``com.microsoft.MatMulIntegerToFloat`` (uint8 activations x int8 7-bit weights, the
kernel the static int8 variant runs) and one fp32 ``MatMul`` of the same shape (M tokens x K in ->
N out; the default is a MiniLM-L6 feed-forward up-projection over ~2k tokens) and prints
multiply-adds per second. Those rates bound what any graph can reach: a reranking call's weight
products cannot run faster than the kernel does on one big, well-shaped matrix.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from crossrank.bench.floor import fp32_matmul_model, int8_matmul_model  # the bench's floor uses the same kernels


def _session(model, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _seconds(sess: ort.InferenceSession, feeds: dict, runs: int) -> float:
    for _ in range(3):
        sess.run(None, feeds)
    t0 = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feeds)
    return (time.perf_counter() - t0) / runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2", help="intra-op thread counts to try (default 1,2)")
    p.add_argument("--shape", default="2048,384,1536", help="M,K,N (default 2048,384,1536)")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    m, k, n = (int(x) for x in args.shape.split(","))
    rng = np.random.default_rng(0)
    feeds = {
        "int8 u8xs8 MatMulIntegerToFloat": (int8_matmul_model(m, k, n, rng), {"a": rng.integers(0, 256, (m, k), dtype=np.uint8)}),
        "fp32 MatMul": (fp32_matmul_model(m, k, n, rng), {"a": rng.standard_normal((m, k)).astype(np.float32)}),
    }
    print(f"onnxruntime {ort.__version__}, shape M={m} K={k} N={n}")
    for threads in (int(t) for t in args.threads.split(",")):
        for name, (model, feed) in feeds.items():
            s = _seconds(_session(model, threads), feed, args.runs)
            print(f"{name:<34} {threads} thread(s): {m * k * n / s / 1e9:6.0f} G multiply-adds/s ({s * 1e3:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
