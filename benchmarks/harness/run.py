"""One benchmark run, end to end: latency, budgets, start-up, quality, gate -> one results dict.

:func:`run_benchmark` is what ``crossrank bench`` calls; :class:`BenchConfig` holds every knob with
the defaults of a full run, :meth:`BenchConfig.smoke_defaults` those of the CI smoke run.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from crossrank.errors import BenchmarkError
from crossrank.manifest import Manifest, load_manifest, resolve_variant

from . import budgets as _budgets
from .data import DATASETS, latency_workload, load_dataset
from .latency import LatencyPlan, measure_latency
from .machine import describe_machine
from .peers import CROSSRANK_BACKENDS, HF_BACKENDS, PEERS, default_cache_dir, peer_unavailable, prepare_peer_models, weights_key
from .systems import REFERENCE, System, check_unique, load_crossrank, load_peer_system

log = logging.getLogger("crossrank.bench")

__all__ = ["BenchConfig", "run_benchmark", "DEFAULT_COUNTS", "DEFAULT_BUDGETS_MS", "default_variants"]

DEFAULT_COUNTS = (1, 10, 25, 50, 100, 200, 500)
DEFAULT_BUDGETS_MS = (50.0, 100.0, 200.0)
CPU_VARIANTS = ("fp32", "optimized", "int8")
CUDA_VARIANTS = ("fp32", "optimized", "fp16")
QUALITY_DATASETS = ("trec-dl-2020", "wikiqa", "scifact")


@dataclass(frozen=True)
class BenchConfig:
    model_dir: Path
    counts: tuple[int, ...] = DEFAULT_COUNTS
    budgets_ms: tuple[float, ...] = DEFAULT_BUDGETS_MS
    variants: tuple[str, ...] | None = None  # None: every default variant the folder has
    provider: str = "cpu"
    peers: tuple[str, ...] = tuple(PEERS)  # () = no peers; a peer whose extra is missing is reported skipped
    peer_max_count: int | None = 200  # peers are measured up to this many candidates (None: all counts)
    quality: bool = True
    quality_datasets: tuple[str, ...] = QUALITY_DATASETS
    # Variants scored for quality: None = the provider's default variant (int8 on CPU); ("all",) = every
    # measured variant. Scoring ~14k pairs takes minutes per fp32 variant on 2 cores, so the default
    # scores what users run, next to the PyTorch fp32 reference (cached), which is the fp32 baseline.
    quality_variants: tuple[str, ...] | None = None
    quality_queries: int | None = None  # first N queries of each set (None: all)
    dataset: str = "trec-dl-2020"
    queries: int | None = None  # distinct queries the latency requests cycle through (None: all)
    rounds: int = 30
    min_rounds: int = 3
    warmup: int = 2
    max_seconds: float = 8.0
    startup_probe: bool = True
    floor: bool = True  # distance to the compute floor + one profiled call per crossrank variant (crossrank.bench.floor)
    score_cache: bool = True  # reuse quality scores whose every input is unchanged (see quality.py)
    smoke: bool = False
    hf_model: Path | None = None
    data_dir: Path | None = None
    cache_dir: Path | None = None
    headline_count: int = 50

    @staticmethod
    def smoke_defaults() -> dict[str, Any]:
        """Few rounds, small counts, short sets: keeps the code alive in CI in a few minutes."""
        return {"counts": (1, 10, 50), "rounds": 3, "min_rounds": 2, "warmup": 1, "max_seconds": 3.0,
                "quality_queries": 3, "queries": 8, "smoke": True}


def default_variants(manifest_variants: Sequence[str], provider: str) -> tuple[str, ...]:
    wanted = CUDA_VARIANTS if provider == "cuda" else CPU_VARIANTS
    return tuple(v for v in wanted if v in manifest_variants)


def _token_counts(model_dir: Path, manifest: Any, requests: list[tuple[str, list[str]]]) -> list[int]:
    """Tokens per request as the runtime feeds them (its own PairEncoder: same truncation rules)."""
    from crossrank.tokenize import PairEncoder  # noqa: PLC0415 - loads `tokenizers`

    encoder = PairEncoder(model_dir / manifest.tokenizer.file, max_length=manifest.max_length,
                          num_special_tokens_pair=manifest.tokenizer.num_special_tokens_pair)
    return [int(encoder.encode([(query, d) for d in docs]).lengths.sum()) for query, docs in requests]


def _quality_variants(cfg: BenchConfig, variants: Sequence[str], manifest: Manifest) -> tuple[str, ...]:
    if cfg.quality_variants is None:  # what variant="auto" loads, among the measured variants
        return (resolve_variant(manifest, "auto", provider=cfg.provider, among=variants),)
    if tuple(cfg.quality_variants) == ("all",):
        return tuple(variants)
    unknown = [v for v in cfg.quality_variants if v not in variants]
    if unknown:
        raise BenchmarkError(f"--quality-variants {', '.join(unknown)} not among the measured variants {', '.join(variants)}")
    return tuple(cfg.quality_variants)


def _hf_model_for(cfg: BenchConfig, manifest: Any) -> Path | None:
    if cfg.hf_model is not None:
        return Path(cfg.hf_model)
    src = manifest.source or {}
    if src.get("local") and src.get("id") and Path(src["id"]).is_dir():
        return Path(src["id"])
    return None


@contextmanager
def _quiet_per_call_logs() -> Iterator[None]:
    """The runtime logs truncated pairs at INFO on every call: thousands of lines over SciFact."""
    logger = logging.getLogger("crossrank.reranker")
    old = logger.level
    logger.setLevel(max(old, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(old)


def run_benchmark(cfg: BenchConfig, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure everything ``cfg`` asks for; returns the results dict written to ``results.json``."""
    with _quiet_per_call_logs():
        return _run(cfg, progress)


def _run(cfg: BenchConfig, progress: Callable[[str], None] | None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    model_dir = Path(cfg.model_dir)
    manifest = load_manifest(model_dir)
    # Named variants go through the runtime's resolution (same spelling rule, same error listing
    # what the folder has).
    if cfg.variants:
        variants = tuple(resolve_variant(manifest, v, provider=cfg.provider) for v in cfg.variants)
    else:
        variants = default_variants(list(manifest.variants), cfg.provider)
    if not variants:
        raise BenchmarkError(f"{model_dir} holds none of the variants {', '.join(CPU_VARIANTS)}")
    if cfg.quality:
        _quality_variants(cfg, variants, manifest)
    unknown = [d for d in (cfg.dataset, *cfg.quality_datasets) if d not in DATASETS]
    if unknown:
        raise BenchmarkError(f"unknown dataset {unknown[0]!r}; expected one of {', '.join(DATASETS)}")
    # An unknown name is a typo (an error); a known peer whose extra is not installed (or, on CUDA, that
    # has no CUDA path) is skipped, with the reason (and the pip command) in the report.
    skipped = {p: why for p in cfg.peers if (why := peer_unavailable(p, cfg.provider)) is not None}
    peers = tuple(p for p in cfg.peers if p not in skipped)
    for p, why in skipped.items():
        log.warning("peer %s skipped: %s", p, why)
    max_length = manifest.max_length
    hf_model = _hf_model_for(cfg, manifest)
    if any(PEERS[p].backend in HF_BACKENDS for p in peers) and hf_model is None:
        raise BenchmarkError(
            f"the peers need the source Hugging Face model and {model_dir}'s manifest names "
            f"{manifest.source.get('id')!r}, which is not a local folder: pass --hf-model PATH or --no-peers"
        )
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir is not None else default_cache_dir()

    say("describing the machine")
    machine = describe_machine()
    load_start = _loadavg()

    # -- systems -----------------------------------------------------------------------------------
    systems: list[System] = []
    for v in variants:
        say(f"loading crossrank {v}")
        systems.append(load_crossrank(model_dir, v, provider=cfg.provider))
    prepared: dict[str, Any] | None = None
    if any(PEERS[p].backend == "onnx" for p in peers):
        say("preparing sentence-transformers ONNX peers (cached after the first run)")
        prepared = prepare_peer_models(hf_model, isa_flags=machine.get("isa", []), machine=machine.get("arch", ""),
                                       cache_dir=cache_dir)
    if any(PEERS[p].backend in CROSSRANK_BACKENDS for p in peers):
        from .onnx_peers import prepare_onnx_peers  # noqa: PLC0415

        say("preparing the fastembed/FlashRank peers from the fp32 graph (cached after the first run)")
        prepared = {**(prepared or {}), **prepare_onnx_peers(model_dir, cache_dir=cache_dir,
                                                             int8=any(PEERS[p].backend == "flashrank" for p in peers))}
    wkey = weights_key(hf_model) if peers and hf_model is not None else None
    if any(PEERS[p].backend == "openvino" for p in peers):
        from .openvino_peers import prepare_openvino_peers  # noqa: PLC0415

        say("preparing the OpenVINO peers (fp32 export, NNCF int8 calibration; cached after the first run)")
        prepared = {**(prepared or {}), **prepare_openvino_peers(
            hf_model, key=wkey, max_length=max_length, cache_dir=cache_dir,
            int8=any(PEERS[p].backend == "openvino" and PEERS[p].int8 for p in peers))}
    for p in peers:
        say(f"loading peer {p}")
        systems.append(load_peer_system(p, max_length=max_length, prepared=prepared, hf_model=hf_model, weights_key=wkey,
                                        provider=cfg.provider))
    check_unique(systems)
    labels = {s.name: s.label for s in systems}

    # -- latency -----------------------------------------------------------------------------------
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    pool = ds.head(cfg.queries)
    plan = LatencyPlan(counts=tuple(sorted(set(cfg.counts))), rounds=cfg.rounds, min_rounds=cfg.min_rounds,
                       warmup=cfg.warmup, max_seconds=cfg.max_seconds)
    n_req = min(plan.warmup + plan.rounds, max(len(pool.queries), plan.warmup + 1))
    requests = {c: latency_workload(pool, c, n_req) for c in plan.counts}
    say("counting tokens")
    tokens = {c: _token_counts(model_dir, manifest, reqs) for c, reqs in requests.items()}

    def counts_for(s: System) -> Sequence[int]:
        if s.kind == "peer" and cfg.peer_max_count is not None:
            return [c for c in plan.counts if c <= cfg.peer_max_count]
        return plan.counts

    phases: dict[str, float] = {"setup_s": round(time.perf_counter() - started, 1)}
    t_phase = time.perf_counter()
    log.info("latency: %d systems x counts %s (up to %d rounds each)", len(systems),
             ",".join(map(str, plan.counts)), plan.rounds)
    latency = measure_latency(systems, requests, plan, tokens=tokens, counts_for=counts_for, progress=say)
    phases["latency_s"] = round(time.perf_counter() - t_phase, 1)
    latency = {k: v for k, v in latency.items() if v}
    budget_answers = _budgets.budget_answers(latency, cfg.budgets_ms)

    # -- distance to the compute floor, op-type breakdown of one call ------------------------------
    floor: dict[str, Any] = {}
    t_phase = time.perf_counter()
    if cfg.floor:
        floor = _floor(cfg, model_dir, manifest, systems, latency, requests, plan, say)
    phases["floor_s"] = round(time.perf_counter() - t_phase, 1)

    # -- start-up and memory, one fresh process per system ----------------------------------------
    startup: dict[str, Any] = {}
    t_phase = time.perf_counter()
    if cfg.startup_probe:
        log.info("start-up probes: one fresh process per system")
        from .probe import probe_in_subprocess  # noqa: PLC0415

        first_count = cfg.headline_count if cfg.headline_count in plan.counts else plan.counts[len(plan.counts) // 2]
        # Smoke mode probes crossrank only: a PyTorch cold start costs more than the rest of a smoke run.
        for s in [s for s in systems if s.kind == "crossrank" or not cfg.smoke]:
            say(f"start-up probe: {s.name} (fresh process)")
            spec = {"kind": s.kind, "name": s.name, "dataset": cfg.dataset,
                    "data_dir": str(cfg.data_dir) if cfg.data_dir else None,
                    "first_count": first_count, "peak_count": max(counts_for(s) or plan.counts),
                    "max_length": max_length}
            if s.kind == "crossrank":
                spec.update(model_dir=str(model_dir), variant=s.info["variant"], provider=cfg.provider)
            else:
                spec.update(prepared=prepared, hf_model=str(hf_model) if hf_model else None, provider=cfg.provider)
            try:
                startup[s.name] = probe_in_subprocess(spec)
            except BenchmarkError as err:
                log.warning("%s", err)
                startup[s.name] = {"error": str(err)}

    # -- quality -----------------------------------------------------------------------------------
    phases["startup_s"] = round(time.perf_counter() - t_phase, 1)
    quality: dict[str, Any] = {}
    t_phase = time.perf_counter()
    if cfg.quality:
        log.info("quality: nDCG@10 and MRR@10 on %s", ", ".join(cfg.quality_datasets))
        from .quality import quality_table  # noqa: PLC0415

        qvariants = _quality_variants(cfg, variants, manifest)
        qsystems = [s for s in systems if (s.kind == "crossrank" and s.info["variant"] in qvariants) or s.name == REFERENCE]
        dsets = [load_dataset(d, cfg.data_dir).head(cfg.quality_queries) for d in cfg.quality_datasets]
        quality = quality_table(qsystems, dsets, cache_dir=cache_dir if cfg.score_cache else None, progress=say)
        labels["first-stage"] = "first stage (as given)"
    phases["quality_s"] = round(time.perf_counter() - t_phase, 1)

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    settings.update(max_length=max_length, variants=list(variants), peers=list(peers), peers_skipped=dict(skipped),
                    counts=list(plan.counts), budgets_ms=list(cfg.budgets_ms))
    return {
        "schema_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"dir": str(model_dir), "source": dict(manifest.source), "hf_model": str(hf_model) if hf_model else None,
                  "variants": {v: {"file": manifest.variants[v].file, "bytes": manifest.variants[v].bytes,
                                   "sha256": manifest.variants[v].sha256, "settings": dict(manifest.variants[v].settings)}
                               for v in variants}},
        "machine": machine,
        "settings": settings,
        "labels": labels,
        "systems": {s.name: {"kind": s.kind, "label": s.label, "load_s": s.load_s, **s.info} for s in systems},
        "latency": {"dataset": cfg.dataset, "description": DATASETS[cfg.dataset].description,
                    "distinct_queries": min(len(pool.queries), n_req), "systems": latency},
        "budgets": budget_answers,
        "startup": startup,
        "quality": quality,
        "floor": floor,
        # skipped: peer -> why and the pip command (asked for, not installed); the gate reports them skipped
        "peers": {**({"prepared": prepared} if prepared else {}), **({"skipped": dict(skipped)} if skipped else {})},
        "elapsed_s": round(time.perf_counter() - started, 1),
        "phases": phases,
        # Other processes competing for the cores make absolute figures slower (ratios hold better).
        "load_average": {"start": load_start, "end": _loadavg(), "usable_cores": machine.get("usable_cores")},
    }


def _floor(cfg: BenchConfig, model_dir: Path, manifest: Manifest, systems: Sequence[System], latency: dict[str, Any],
           requests: dict[int, list[tuple[str, list[str]]]], plan: LatencyPlan, say: Callable[[str], None]) -> dict[str, Any]:
    """Per crossrank variant: one profiled call at the headline count, the kernel rate of its
    precision (int8: u8 x s8 ``MatMulIntegerToFloat``; else fp32 ``MatMul``) and the floor ratio
    per measured count (:mod:`crossrank.bench.floor`)."""
    from .floor import floor_table, kernel_rate, profile_call  # noqa: PLC0415

    count = cfg.headline_count if cfg.headline_count in plan.counts else plan.counts[len(plan.counts) // 2]
    query, docs = requests[count][0]
    out: dict[str, Any] = {"count": count, "variants": {}}
    rates: dict[tuple[str, int, int], float] = {}
    for s in systems:
        if s.kind != "crossrank" or s.name not in latency:
            continue
        variant = s.info["variant"]
        kind = "int8" if manifest.variants[variant].precision == "int8" else "fp32"
        say(f"floor: profiling one {count}-candidate call of crossrank {variant}")
        prof = profile_call(model_dir, variant, query, docs)
        key = (kind, *prof.widest_weight)
        if key not in rates:
            say(f"floor: measuring the {kind} kernel rate at {prof.widest_weight[0]}x{prof.widest_weight[1]}")
            rates[key] = kernel_rate(k=prof.widest_weight[0], n=prof.widest_weight[1], kind=kind)
        rate = rates[key]
        out["variants"][s.name] = {
            "kernel": {"kind": kind, "m": 2048, "k": prof.widest_weight[0], "n": prof.widest_weight[1],
                       "gmacs_per_s": round(rate / 1e9, 2)},
            "profile": prof.as_dict(),
            # the weight operators' own time against the kernel rate on the MACs they ran (padding included)
            "weight_op_efficiency": round(prof.executed_weight_macs / rate * 1e3 / prof.weight_op_ms, 3)
            if prof.weight_op_ms > 0 else None,
            "counts": floor_table(latency[s.name], prof, rate),
        }
    return out


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def with_smoke(cfg: BenchConfig, **explicit: Any) -> BenchConfig:
    """``cfg`` with the smoke defaults, except for the settings given explicitly."""
    return replace(cfg, **{**BenchConfig.smoke_defaults(), **explicit})

