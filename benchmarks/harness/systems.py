"""The things a benchmark measures, behind one small interface.

A :class:`System` is a loaded reranker with ``rerank(query, docs)`` (what is timed: tokenization,
scoring and ordering, end to end) and ``score(query, docs)`` (scores in input order, for quality):

* ``crossrank-<variant>``: ``crossrank.Reranker.load(folder, variant=..., provider=...)``; the
  timed call is ``Reranker.rerank(query, docs)`` looked up on every call, so a test that patches
  ``crossrank.Reranker.rerank`` (a deliberately slowed build) is measured as such.
* ``st-torch``, ``st-onnx``, ``st-onnx-int8``: the sentence-transformers peers (:mod:`.peers`);
* ``fastembed``, ``flashrank``: fastembed and FlashRank on the crossrank folder's fp32 graph (:mod:`.onnx_peers`);
* ``st-openvino``, ``st-openvino-int8``: sentence-transformers' OpenVINO backend (:mod:`.openvino_peers`).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from crossrank.errors import BenchmarkError

from . import peers as _peers
from .machine import dist_version as _dist_version

__all__ = ["System", "crossrank_name", "load_crossrank", "load_peer_system", "REFERENCE"]

REFERENCE = "st-torch"  # the PyTorch fp32 reference every speedup is stated against first


def crossrank_name(variant: str) -> str:
    return f"crossrank-{variant}"


@dataclass
class System:
    name: str
    kind: str  # "crossrank" | "peer"
    label: str
    rerank: Callable[[str, Sequence[str]], Any]
    score: Callable[[str, Sequence[str]], np.ndarray]
    load_s: float
    info: dict[str, Any] = field(default_factory=dict)


def load_crossrank(model_dir: str | Path, variant: str, *, provider: str = "cpu", threads: int | None = None) -> System:
    from crossrank import Reranker  # noqa: PLC0415 - the runtime under test

    t0 = time.perf_counter()
    rr = Reranker.load(model_dir, variant=variant, provider=provider, threads=threads)
    load_s = time.perf_counter() - t0

    def rerank(query: str, docs: Sequence[str]) -> Any:
        return rr.rerank(query, docs)

    def score(query: str, docs: Sequence[str]) -> np.ndarray:
        return np.asarray(rr.score(query, docs), dtype=np.float32)

    info = {"variant": rr.variant, "providers": list(rr.providers), "max_length": rr.max_length,
            "batch_tokens": getattr(rr, "batch_tokens", None), "max_batch_size": getattr(rr, "max_batch_size", None)}
    spec = rr.manifest.variants[rr.variant]
    info["score_key"] = score_key(
        "crossrank", _runtime_code_hash(), spec.sha256, rr.manifest.tokenizer.sha256, rr.manifest.activation,
        info, _dist_version("onnxruntime"), _dist_version("onnxruntime-gpu"), _dist_version("tokenizers"),
    )
    return System(name=crossrank_name(variant), kind="crossrank", label=f"crossrank {variant}", rerank=rerank,
                  score=score, load_s=load_s, info=info)


def score_key(*parts: Any) -> str:
    """A digest of everything that determines a system's scores (for the quality cache)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@lru_cache(maxsize=1)
def _runtime_code_hash() -> str:
    """Digest of the runtime's own modules: a changed runtime never reuses cached scores."""
    import crossrank  # noqa: PLC0415

    h = hashlib.sha256()
    for p in sorted(Path(crossrank.__file__).parent.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def load_peer_system(name: str, *, max_length: int, prepared: dict[str, Any] | None, hf_model: str | Path | None,
                     weights_key: str | None = None, provider: str = "cpu") -> System:
    t0 = time.perf_counter()
    peer = _peers.load_peer(name, max_length=max_length, prepared=prepared, hf_model=hf_model, provider=provider)
    load_s = time.perf_counter() - t0
    info: dict[str, Any] = {"backend": peer.spec.backend, "int8": peer.spec.int8, "max_length": max_length,
                            "provider": provider,
                            **({"quantization": prepared.get("quantization")} if peer.spec.int8 and prepared
                               and peer.spec.backend == "onnx" else {}),
                            **({"quantization": "avx2 (onnxruntime quantize_dynamic)", "flashrank_slot": "ms-marco-MiniLM-L-12-v2"}
                               if peer.spec.backend == "flashrank" else {}),
                            **({"quantization": "NNCF static int8", "calibration": (prepared or {}).get("openvino_calibration")}
                               if peer.spec.backend == "openvino" and peer.spec.int8 else {})}
    if peer.spec.backend in _peers.CROSSRANK_BACKENDS:  # built from the crossrank folder's fp32 graph, not --hf-model
        weights_key = (prepared or {}).get("onnx_key")
    if weights_key is not None:
        info["score_key"] = score_key(
            name, weights_key, info, *(_dist_version(d) for d in ("torch", "transformers", "sentence-transformers",
                                                                  "optimum", "onnxruntime", "fastembed", "FlashRank",
                                                                  "optimum-intel", "openvino", "nncf")),
        )
    return System(name=name, kind="peer", label=peer.spec.label, rerank=peer.rerank, score=peer.score,
                  load_s=load_s, info=info)


def check_unique(systems: Sequence[System]) -> None:
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"duplicate systems in one run: {names}")
