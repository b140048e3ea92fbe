"""Which session settings bring a reranking call closer to the compute floor (issue 14, part 3).

    python benchmarks/floor_study.py MODEL_DIR [--variant int8] [--counts 50,100] [--rounds 8]
        [--settings default,threads1,no-spinning,no-arena,denormal-zero,tokens2048,tokens8192,openvino]

Each setting is one ``crossrank.Reranker`` over the same variant file; all settings are timed
round by round, interleaved, on the same TREC DL 2020 requests (``crossrank.bench.data``), so their
ratios share the machine's noise. The floor of each count is :mod:`crossrank.bench.floor`'s (weight
multiply-adds of the requests' real tokens / the measured u8 x s8 kernel rate). Prints a markdown
table: median ms and median / floor per setting and count.

Settings:

================  ==============================================================================
default           ``Reranker.load(dir, variant=...)`` as a user gets it
threads1          one intra-op thread (the kernel rate is then measured at one thread too)
no-spinning       ``spinning=False``: worker threads sleep between operators instead of spinning
no-arena          ``memory_arena=False``: no onnxruntime CPU arena
denormal-zero     ``session.set_denormal_as_zero=1`` through ``session_options=``
tokensN           ``batch_tokens=N`` (default from docs/batching-defaults.md)
openvino          onnxruntime's OpenVINO execution provider on the same file, where that build of
                  onnxruntime is installed (``onnxruntime-openvino`` replaces the CPU wheel); else
                  reported as not installed
================  ==============================================================================
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _reranker(model_dir: Path, variant: str, setting: str) -> Any:
    import onnxruntime as ort  # noqa: PLC0415

    from crossrank import Reranker  # noqa: PLC0415

    if setting == "default":
        return Reranker.load(model_dir, variant=variant)
    if setting == "threads1":
        return Reranker.load(model_dir, variant=variant, threads=1)
    if setting == "no-spinning":
        return Reranker.load(model_dir, variant=variant, spinning=False)
    if setting == "no-arena":
        return Reranker.load(model_dir, variant=variant, memory_arena=False)
    if setting == "denormal-zero":
        so = ort.SessionOptions()
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
        so.log_severity_level = 3
        return Reranker.load(model_dir, variant=variant, session_options=so)
    if setting.startswith("tokens"):
        return Reranker.load(model_dir, variant=variant, batch_tokens=int(setting[len("tokens"):]))
    raise SystemExit(f"unknown setting {setting!r}")


class _OpenVino:
    """The same file on onnxruntime's OpenVINO execution provider, fed by crossrank's own encoder."""

    def __init__(self, model_dir: Path, variant: str) -> None:
        import onnxruntime as ort  # noqa: PLC0415

        from crossrank import Reranker  # noqa: PLC0415

        if "OpenVINOExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("onnxruntime-openvino is not installed (this onnxruntime offers "
                               f"{', '.join(ort.get_available_providers())})")
        self._rr = Reranker.load(model_dir, variant=variant)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        path = model_dir / self._rr.manifest.variants[variant].file
        self._sess = ort.InferenceSession(str(path), so, providers=["OpenVINOExecutionProvider", "CPUExecutionProvider"])

    def rerank(self, query: str, docs: list[str]) -> Any:
        # scores through the OpenVINO session, batches and padding as crossrank plans them
        rr = self._rr
        enc = rr._encoder.encode([(query, d) for d in docs])  # noqa: SLF001 - a study, not a caller of the API
        from crossrank.batching import plan_batches  # noqa: PLC0415

        for batch in plan_batches(enc.lengths, batch_tokens=rr.batch_tokens, max_batch_size=rr.max_batch_size):
            feeds = rr._session.feed.pad([(enc, batch.rows)])  # noqa: SLF001
            self._sess.run(None, feeds)
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--variant", default="int8")
    p.add_argument("--counts", default="50,100")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--queries", type=int, default=8, help="distinct TREC DL 2020 queries cycled through (default 8)")
    p.add_argument("--settings", default="default,threads1,no-spinning,no-arena,denormal-zero,tokens2048,tokens8192,openvino")
    p.add_argument("--data", default=None, help="the shared data folder (default ../shared/data beside the repository)")
    args = p.parse_args(argv)

    from crossrank.bench.data import latency_workload, load_dataset  # noqa: PLC0415
    from crossrank.bench.floor import kernel_rate, profile_call  # noqa: PLC0415
    from crossrank.tokenize import PairEncoder  # noqa: PLC0415
    from crossrank.manifest import load_manifest  # noqa: PLC0415

    counts = [int(c) for c in args.counts.split(",")]
    ds = load_dataset("trec-dl-2020", args.data)
    requests = {c: latency_workload(ds, c, args.queries) for c in counts}
    manifest = load_manifest(args.model_dir)
    enc = PairEncoder(args.model_dir / manifest.tokenizer.file, max_length=manifest.max_length,
                      num_special_tokens_pair=manifest.tokenizer.num_special_tokens_pair)
    tokens = {c: [int(enc.encode([(q, d) for d in docs]).lengths.sum()) for q, docs in reqs] for c, reqs in requests.items()}

    systems: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for s in args.settings.split(","):
        try:
            systems[s] = _OpenVino(args.model_dir, args.variant) if s == "openvino" else _reranker(args.model_dir, args.variant, s)
        except Exception as err:  # a setting this machine cannot run is reported, not fatal
            notes[s] = f"{type(err).__name__}: {err}"
    samples: dict[str, dict[int, list[float]]] = {s: {c: [] for c in counts} for s in systems}
    for s, rr in systems.items():  # warm-up
        rr.rerank(*requests[counts[0]][0])
    for r in range(args.rounds):
        for c in counts:
            q, docs = requests[c][r % len(requests[c])]
            for s, rr in systems.items():
                t0 = time.perf_counter()
                rr.rerank(q, docs)
                samples[s][c].append((time.perf_counter() - t0) * 1e3)

    prof = profile_call(args.model_dir, args.variant, *requests[counts[0]][0])
    kind = "int8" if manifest.variants[args.variant].precision == "int8" else "fp32"
    rate = {t: kernel_rate(k=prof.widest_weight[0], n=prof.widest_weight[1], kind=kind, threads=t) for t in (None, 1)}
    print(f"variant {args.variant}; kernel {kind} {prof.widest_weight[0]}x{prof.widest_weight[1]}: "
          f"{rate[None] / 1e9:.1f} G multiply-adds/s (default threads), {rate[1] / 1e9:.1f} (1 thread); "
          f"{args.rounds} rounds, {args.queries} queries")
    print()
    print("| setting | " + " | ".join(f"{c} cand. ms | / floor" for c in counts) + " |")
    print("|---|" + "---|---|" * len(counts))
    for s in systems:
        cells = []
        for c in counts:
            med = statistics.median(samples[s][c])
            floor_ms = statistics.mean(t * prof.per_token_macs + c * prof.per_pair_macs for t in tokens[c]) \
                / rate[1 if s == "threads1" else None] * 1e3
            cells += [f"{med:,.1f}", f"{med / floor_ms:.2f}×"]
        print(f"| {s} | " + " | ".join(cells) + " |")
    for s, why in notes.items():
        print(f"\n{s}: not measured — {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
