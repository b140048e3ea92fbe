"""Settings of the pytest-benchmark suite in ``benchmarks/`` (full or smoke mode).

Smoke mode (``CROSSRANK_BENCH_SMOKE=1``, used by CI) keeps the suite alive in a few minutes: small
candidate counts, three rounds, the first queries of each relevance set. The full mode measures
every count with enough rounds for stable medians (about 20 minutes on 2 cores, most of it scoring
the full TREC DL and SciFact sets for the quality test).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SuiteSettings", "suite_settings", "smoke_requested", "cached_export"]


@dataclass(frozen=True)
class SuiteSettings:
    smoke: bool
    counts: tuple[int, ...]  # crossrank variants
    peer_counts: tuple[int, ...]  # sentence-transformers peers
    speedup_counts: tuple[int, ...]  # the interleaved same-run comparison
    rounds: int
    warmup: int
    quality_queries: int | None  # per relevance set (None: all)

    def rounds_for(self, count: int, *, slow: bool = False) -> int:
        """Fewer rounds for big requests: about 2000 pairs per crossrank test, 1000 per peer test."""
        if self.smoke:
            return self.rounds
        budget_pairs = 1000 if slow else 2000
        return max(5, min(self.rounds, budget_pairs // count))


def smoke_requested(environ: dict | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("CROSSRANK_BENCH_SMOKE", "").strip().lower() not in ("", "0", "false", "no")


def suite_settings(environ: dict | None = None) -> SuiteSettings:
    if smoke_requested(environ):
        return SuiteSettings(smoke=True, counts=(10, 50), peer_counts=(10, 50), speedup_counts=(10, 50),
                             rounds=3, warmup=1, quality_queries=6)
    return SuiteSettings(smoke=False, counts=(1, 10, 50, 100, 200, 500), peer_counts=(10, 50, 100),
                         speedup_counts=(10, 50, 100), rounds=30, warmup=2, quality_queries=None)


def cached_export(hf_model: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """``hf_model`` exported once with int8 into ``cache_dir`` (shared by the suite and the tests).

    The folder is keyed by the source files and by crossrank's exporter and manifest code, so a
    changed model or exporter is exported afresh; an interrupted export leaves nothing behind
    (``export_model`` stages its output).
    """
    import crossrank.export  # noqa: PLC0415
    from crossrank import manifest  # noqa: PLC0415
    from crossrank.export import export_model  # noqa: PLC0415

    src = Path(hf_model)
    files = [p for p in src.iterdir() if p.is_file()]
    files += sorted(Path(crossrank.export.__file__).parent.glob("*.py")) + [Path(manifest.__file__)]
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    out = Path(cache_dir) / f"bench-model-{h.hexdigest()[:12]}"
    if not (out / "crossrank.json").is_file():
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        export_model(src, out, int8=True, force=True)
    return out
