"""Fixtures of the pytest-benchmark suite.

    pytest benchmarks/ --benchmark-only                                   # full suite
    CROSSRANK_BENCH_SMOKE=1 pytest benchmarks/ --benchmark-only           # CI smoke: few rounds, small counts
    pytest benchmarks/ --benchmark-only --benchmark-autosave              # save a run under .benchmarks/
    pytest benchmarks/ --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%

* ``bench_model``: the crossrank model folder measured: ``$CROSSRANK_BENCH_MODEL``, else the real
  trained MiniLM-L6 exported once with ``crossrank.export.export_model(..., int8=True)`` into
  ``$CROSSRANK_TEST_CACHE`` (default ``<repo>/.cache/tests``, shared with tests/); the cached folder
  is keyed by the source model and the exporter's own source code (see ``cached_export``).
* ``hf_model``: the source Hugging Face folder for the peers (``$CROSSRANK_BENCH_HF_MODEL``, else
  the manifest's local source, else the real model built from ``../shared`` the way tests do).
* ``bench_settings``: counts and rounds for full or smoke mode.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossrank.bench.suite import cached_export, suite_settings

REPO = Path(__file__).resolve().parents[1]
SETTINGS = suite_settings()


def pytest_report_header(config):
    return f"crossrank benchmarks: {'SMOKE' if SETTINGS.smoke else 'full'} mode {SETTINGS}"


def _shared_dir() -> Path:
    return Path(os.environ.get("CROSSRANK_SHARED", REPO.parent / "shared")).resolve()


def _cache_dir() -> Path:
    # tests/conftest.py's cache folder: the real model and its export are built once for both.
    return Path(os.environ.get("CROSSRANK_TEST_CACHE", REPO / ".cache" / "tests"))


def _real_hf_model() -> Path:
    # The same recipe and cache folder as tests/conftest.py's real_hf_model, so both reuse one build.
    src = _shared_dir() / "models" / "crossrank-minilm-l6"
    if not (src / "build.py").is_file():
        pytest.fail(f"../shared is missing or incomplete at {src.parent.parent}; set CROSSRANK_SHARED")
    h = hashlib.sha256()
    for name in ("build.py", "adapter.safetensors", "config_overrides.json"):
        h.update((src / name).read_bytes())
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"crossrank-minilm-l6-{h.hexdigest()[:12]}"
    if not (out / "model.safetensors").is_file():
        tmp = out.with_name(out.name + f".partial{os.getpid()}")
        subprocess.run([sys.executable, str(src / "build.py"), str(tmp)], check=True)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def bench_settings():
    return SETTINGS


@pytest.fixture(scope="session")
def bench_model() -> Path:
    if os.environ.get("CROSSRANK_BENCH_MODEL"):
        p = Path(os.environ["CROSSRANK_BENCH_MODEL"])
        if not (p / "crossrank.json").is_file():
            pytest.fail(f"CROSSRANK_BENCH_MODEL={p} is not a crossrank model folder")
        return p
    return cached_export(_real_hf_model(), _cache_dir())


@pytest.fixture(scope="session")
def hf_model(bench_model) -> Path:
    if os.environ.get("CROSSRANK_BENCH_HF_MODEL"):
        return Path(os.environ["CROSSRANK_BENCH_HF_MODEL"])
    from crossrank.manifest import load_manifest

    src = load_manifest(bench_model).source
    if src.get("local") and Path(str(src.get("id"))).is_dir():
        return Path(src["id"])
    return _real_hf_model()


@pytest.fixture(scope="session")
def max_length(bench_model) -> int:
    from crossrank.manifest import load_manifest

    return load_manifest(bench_model).max_length


@pytest.fixture(scope="session")
def trec():
    from crossrank.bench.data import load_dataset

    return load_dataset("trec-dl-2020", _shared_dir() / "data" if not os.environ.get("CROSSRANK_DATA") else None)


@pytest.fixture(scope="session")
def requests_for(trec, bench_settings):
    """``requests_for(count, n)``: n real TREC DL requests of ``count`` candidates (cached)."""
    from crossrank.bench.data import latency_workload

    cache: dict = {}

    def get(count: int, n: int):
        if (count, n) not in cache:
            cache[count, n] = latency_workload(trec, count, n)
        return cache[count, n]

    return get


@pytest.fixture(scope="session")
def crossrank_variants(bench_model):
    from crossrank.manifest import load_manifest

    have = load_manifest(bench_model).variants
    return [v for v in ("fp32", "optimized", "int8") if v in have]


@pytest.fixture(scope="session")
def peer_models(hf_model):
    """The sentence-transformers ONNX exports, built once per machine (cached, see crossrank.bench.peers)."""
    import platform

    from crossrank.bench.machine import cpu_flags
    from crossrank.bench.peers import prepare_peer_models

    return prepare_peer_models(hf_model, isa_flags=cpu_flags(), machine=platform.machine())

