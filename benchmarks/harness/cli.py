"""``crossrank bench DIR``: latency against candidate count, budgets, peers, quality, regression gate.

    crossrank bench ./minilm                                   # full run: table.md, results.json, latency.png
    crossrank bench ./minilm --candidates 10,50,100 --budget-ms 50,100,200 --no-quality
    crossrank bench ./minilm --smoke --check                   # CI: a few minutes, exits 1 on a regression
    crossrank bench ./minilm --record-profile ci-2core-avx2    # write OUT/budgets.json with this run's figures

Registering is cheap: everything heavy is imported inside :func:`run`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _str_list(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return values


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark a model folder: latency vs candidates, budgets, peers, quality, gate",
        description="Measure end-to-end rerank latency against candidate count for each variant, next to "
        "sentence-transformers (PyTorch, ONNX, ONNX int8), fastembed and FlashRank on the same requests in the same run; answer "
        "latency budgets; score nDCG@10/MRR@10; write table.md, results.json and latency.png; "
        "--check gates against budgets.json.",
    )
    p.add_argument("model_dir", metavar="DIR", type=Path, help="a crossrank model folder (crossrank export ...)")
    p.add_argument("--candidates", type=_int_list, default=None, metavar="N,N,...",
                   help="candidate counts (default 1,10,25,50,100,200,500; smoke 1,10,50)")
    p.add_argument("--budget-ms", type=_float_list, default=None, metavar="B,B,...",
                   help="latency budgets: report the largest count whose p95 fits (default 50,100,200)")
    p.add_argument("--variants", type=_str_list, default=None, metavar="V,V,...",
                   help="crossrank variants (default: fp32,optimized,int8 on CPU; fp32,optimized,fp16 on CUDA; those present)")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="execution provider (default cpu)")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the peers (sentence-transformers, fastembed, FlashRank) in the same run (default on)")
    p.add_argument("--peer-names", type=_str_list, default=None, metavar="P,P,...",
                   help="which peers (default all: st-torch,st-onnx,st-onnx-int8,fastembed,flashrank; one whose extra is "
                   "not installed is reported skipped with the pip command)")
    p.add_argument("--peer-max-candidates", type=_positive_int, default=None, metavar="N",
                   help="measure peers only up to N candidates (default 200: a PyTorch call at 500 takes ~15 s here)")
    p.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True,
                   help="nDCG@10/MRR@10 on TREC DL 2020, WikiQA, SciFact (default on)")
    p.add_argument("--quality-variants", type=_str_list, default=None, metavar="V,V,...|all",
                   help="crossrank variants scored for quality (default: the default variant, int8 on CPU, next to the "
                   "PyTorch fp32 reference; 'all': every measured variant, ~5 more minutes per fp32 variant on 2 cores)")
    p.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True,
                   help="load time, first call and peak RSS, one fresh process per system (default on)")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="distance to the compute floor per count (weight multiply-adds of the real tokens / the "
                   "measured int8 kernel rate) and an onnxruntime op-type profile of one headline call (default on)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse quality scores whose model file, runtime code, settings, versions and data are all "
                   "unchanged (default on; --no-cache scores everything afresh)")
    p.add_argument("--dataset", choices=("trec-dl-2020", "scifact", "wikiqa"), default="trec-dl-2020",
                   help="latency requests: trec-dl-2020 (typical passages, default) or scifact (long abstracts)")
    p.add_argument("--queries", type=_positive_int, default=None, metavar="N",
                   help="distinct real queries the latency requests cycle through (default: all; smoke 8)")
    p.add_argument("--rounds", type=_positive_int, default=None, metavar="N",
                   help="most timed calls per system and count (default 30; smoke 3)")
    p.add_argument("--min-rounds", type=_positive_int, default=None, metavar="N",
                   help="fewest timed calls per system and count (default 3; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, metavar="N", help="untimed calls per system and count (default 2)")
    p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="time per system and count after which no more rounds are added (default 8; smoke 3)")
    p.add_argument("--quality-queries", type=_positive_int, default=None, metavar="N",
                   help="score only the first N queries of each relevance set (default: all; smoke 3)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                   help="output folder for table.md, results.json, latency.png (default ./bench-results)")
    p.add_argument("--check", action="store_true", help="gate the run against budgets.json; exit 1 on a regression")
    p.add_argument("--profile", default=None, metavar="NAME",
                   help="hardware profile of budgets.json to compare with (default: the one matching this machine)")
    p.add_argument("--tolerance", default=None, metavar="SPEC",
                   help='gate tolerances: "0.3" (ratio and median) or "ratio=0.2,median=0.5,ndcg=0.005" '
                   "(default: those in budgets.json)")
    p.add_argument("--budgets", type=Path, default=None, metavar="FILE",
                   help="budgets file (default: the one packaged with crossrank.bench)")
    p.add_argument("--record-profile", default=None, metavar="NAME",
                   help="write OUT/budgets.json: the budgets file plus this run's figures as profile NAME")
    p.add_argument("--quality-at-budget", action="store_true",
                   help="instead of the latency study: nDCG@10 on TREC DL 2020 (BM25 top-100) against each --budget-ms "
                   "(default 25,50,100,200,400,700,1000) for budget_ms reranking vs reranking the top-k by count, with p99 "
                   "latency; writes OUT/quality_at_budget.md/.json/.png (--quality-queries subsamples)")
    p.add_argument("--smoke", action="store_true", help="few rounds, small counts, short sets (CI)")
    p.add_argument("--hf-model", type=Path, default=None, metavar="PATH",
                   help="source Hugging Face folder for the peers and the PyTorch reference (default: the manifest's source)")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="relevance data folder (default $CROSSRANK_DATA, else <repo>/../shared/data)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="cache for peer ONNX exports and reference scores (default $CROSSRANK_BENCH_CACHE or ~/.cache/crossrank/bench)")
    p.set_defaults(func=run)


class _Progress:
    """One rewritten status line on a terminal; silent when stderr is not a TTY."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.width = 0

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        s = int(time.monotonic() - self.t0)
        line = f"[{s // 60:02d}:{s % 60:02d}] {message}"[:110]
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def done(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def build_config(args: argparse.Namespace) -> Any:
    from .run import BenchConfig  # noqa: PLC0415

    explicit = {
        "counts": args.candidates, "budgets_ms": args.budget_ms, "rounds": args.rounds, "min_rounds": args.min_rounds,
        "warmup": args.warmup, "max_seconds": args.max_seconds, "queries": args.queries,
        "quality_queries": args.quality_queries,
    }
    base = BenchConfig.smoke_defaults() if args.smoke else {}
    values = {**base, **{k: v for k, v in explicit.items() if v is not None}}
    if "rounds" in values and "min_rounds" not in values:
        values["min_rounds"] = min(values["rounds"], 3)
    if values.get("min_rounds", 1) > values.get("rounds", 30):
        values["min_rounds"] = values["rounds"]
    from .peers import PEERS  # noqa: PLC0415

    return BenchConfig(
        model_dir=args.model_dir,
        variants=args.variants,
        provider=args.provider,
        peers=(tuple(args.peer_names) if args.peer_names else tuple(PEERS)) if args.peers else (),
        **({"peer_max_count": args.peer_max_candidates} if args.peer_max_candidates else {}),
        quality=args.quality,
        quality_variants=args.quality_variants,
        dataset=args.dataset,
        startup_probe=args.startup,
        floor=args.floor,
        score_cache=args.cache,
        hf_model=args.hf_model,
        data_dir=args.data,
        cache_dir=args.cache_dir,
        **{"smoke": args.smoke, **values},
    )


def run(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from crossrank.errors import BenchmarkError  # noqa: PLC0415

    from . import budgets as B  # noqa: PLC0415
    from .report import write_outputs  # noqa: PLC0415
    from .run import run_benchmark  # noqa: PLC0415

    log = logging.getLogger("crossrank.bench")
    if not (args.model_dir / "crossrank.json").is_file():
        raise BenchmarkError(f"{args.model_dir} is not a crossrank model folder (no crossrank.json); "
                             "make one with `crossrank export SOURCE DIR --int8`")
    if getattr(args, "quality_at_budget", False):
        return _run_quality_at_budget(args)
    cfg = build_config(args)
    # Read the budgets file and the tolerances before the long run: a typo fails in a second.
    budgets = B.load_budgets(args.budgets) if (args.check or args.record_profile or args.budgets) else None
    tolerances = B.parse_tolerances(args.tolerance, (budgets or {}).get("tolerances")) if args.check else None
    progress = _Progress()
    try:
        results = run_benchmark(cfg, progress=progress)
    finally:
        progress.done()
    gate_result = None
    if args.check:
        gate_result = B.gate(results, budgets, profile=args.profile, tolerances=tolerances)
        results["gate"] = gate_result.to_dict()
    paths = write_outputs(results, args.out)
    if args.record_profile:
        prof = B.profile_from_results(results)
        merged = B.merge_profile(budgets, args.record_profile, prof)
        bpath = Path(args.out) / "budgets.json"
        bpath.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
        paths["budgets"] = bpath
    sys.stdout.write((Path(paths["table"])).read_text(encoding="utf-8"))
    log.info("wrote %s (%.0f s)", ", ".join(str(p) for p in paths.values()), results["elapsed_s"])
    if gate_result is not None:
        print(gate_result.report(), file=sys.stderr)
        gate_result.raise_on_failure()
    return 0


def _run_quality_at_budget(args: argparse.Namespace) -> int:
    from .budget_quality import DEFAULT_BUDGETS_MS, run_quality_at_budget, table, write_quality_at_budget  # noqa: PLC0415

    progress = _Progress()
    try:
        res = run_quality_at_budget(
            args.model_dir,
            budgets_ms=args.budget_ms or DEFAULT_BUDGETS_MS,
            queries=args.quality_queries or (3 if args.smoke else None),
            latency_queries=2 if args.smoke else 18,
            variant=(args.variants or ("auto",))[0],
            data_dir=args.data,
            progress=progress,
        )
    finally:
        progress.done()
    write_quality_at_budget(res, args.out)
    sys.stdout.write(table(res))
    return 0
