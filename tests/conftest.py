"""Shared fixtures.

* ``shared_dir``: the ../shared folder beside the repository (or $CROSSRANK_SHARED).
* ``real_hf_model``: the trained cross-encoder from ../shared/models/crossrank-minilm-l6, built
  once into a cache folder ($CROSSRANK_TEST_CACHE, default <repo>/.cache/tests) and reused while
  its inputs (build.py, adapter, overrides) are unchanged.
* ``data_file(name)``: path of a relevance set in ../shared/data.
* every test runs with ``$CROSSRANK_CACHE`` set to a private folder (the runtime's graph cache).

The real model and data are required: their absence is an error, not a skip.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("CROSSRANK_SHARED", REPO.parent / "shared")).resolve()


def _cache_dir() -> Path:
    d = Path(os.environ.get("CROSSRANK_TEST_CACHE", REPO / ".cache" / "tests"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session", autouse=True)
def _private_graph_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the runtime's optimized-graph cache of every test out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CROSSRANK_CACHE", str(tmp_path_factory.mktemp("graph-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared_dir()
    if not (d / "models" / "crossrank-minilm-l6" / "build.py").is_file():
        pytest.fail(f"../shared is missing or incomplete at {d}; set CROSSRANK_SHARED to its location")
    return d


@pytest.fixture(scope="session")
def real_hf_model(shared_dir: Path) -> Path:
    """A standard HF folder of the trained MiniLM-L6 cross-encoder (built once, cached)."""
    src = shared_dir / "models" / "crossrank-minilm-l6"
    h = hashlib.sha256()
    for name in ("build.py", "adapter.safetensors", "config_overrides.json"):
        h.update((src / name).read_bytes())
    out = _cache_dir() / f"crossrank-minilm-l6-{h.hexdigest()[:12]}"
    if not (out / "model.safetensors").is_file():
        tmp = out.with_name(out.name + ".partial")
        subprocess.run([sys.executable, str(src / "build.py"), str(tmp)], check=True)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def data_file(shared_dir: Path):
    def get(name: str) -> Path:
        p = shared_dir / "data" / name
        if not p.is_file():
            pytest.fail(f"relevance data {p} is missing")
        return p

    return get


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT cross-encoder (1 label, sigmoid) exported with every variant incl. int8 and fp16."""
    from crossrank.export import export_model
    from tiny_models import build_tiny_model, write_small_validation

    root = tmp_path_factory.mktemp("tiny-bert")
    hf = build_tiny_model("bert", root / "hf", num_labels=1)
    out = root / "crossrank"
    export_model(hf, out, int8=True, fp16=True, validation=write_small_validation(root / "val.jsonl"))
    return out


@pytest.fixture(scope="session")
def real_model_folder(real_hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crossrank folder of the real model with all variants (exported once per test session)."""
    from crossrank.export import export_model

    out = tmp_path_factory.mktemp("real-export") / "crossrank-minilm-l6"
    export_model(real_hf_model, out, int8=True, fp16=True)
    return out
