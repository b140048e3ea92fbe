"""The peers crossrank is measured against: sentence-transformers ``CrossEncoder`` three ways.

* ``st-torch``      PyTorch fp32 (the reference a user has today);
* ``st-onnx``       its ONNX backend, fp32 (``backend="onnx"``, exported through optimum);
* ``st-onnx-int8``  its ONNX backend with the model dynamically quantized the documented way,
  ``sentence_transformers.backend.export_dynamic_quantized_onnx_model(model, config, path)`` with
  the configuration that fits this CPU (``avx512_vnni`` > ``avx512`` > ``avx2``; ``arm64``).

Every peer gets crossrank's ``max_length`` and the same (query, documents) requests, and is timed
through ``CrossEncoder.rank`` (tokenization, scoring with its default batch size 32, sorting),
which is what a user of sentence-transformers calls.

The rest of the CPU field, each on the same trained model in the format it expects
(:mod:`.onnx_peers`, built from the crossrank folder's own fp32 ``model.onnx``, no optimum needed):

* ``fastembed``     fastembed's ``TextCrossEncoder`` on the fp32 graph, timed through its ``rerank``;
* ``flashrank``     FlashRank's ``Ranker`` on the graph dynamically quantized to int8 the way its
  ``*_Q.onnx`` files are (avx2 settings), timed through ``Ranker.rerank``;
* ``st-openvino``, ``st-openvino-int8``  sentence-transformers' OpenVINO backend, fp32 and NNCF static
  int8 calibrated offline on 300 (query, passage) pairs (:mod:`.openvino_peers`), timed through
  ``CrossEncoder.rank``.

Every peer sits behind its own extra (:attr:`PeerSpec.extra`); :func:`peer_unavailable` names what
is missing and the pip command, and ``crossrank bench`` reports such a peer as skipped instead of
failing (``st-onnx``/``st-onnx-int8`` also need optimum's ONNX exporter, which cannot be installed
next to transformers 5).

The ONNX peers are built once per source model into a cache folder keyed by the model's weights
and the library versions; the user's source folder is never written to.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossrank.atomic import mkdtemp
from crossrank.errors import BenchmarkError, MissingDependencyError

log = logging.getLogger("crossrank.bench.peers")

__all__ = ["PEERS", "PeerSpec", "Peer", "quantization_config_for", "prepare_peer_models", "load_peer", "default_cache_dir",
           "weights_key", "peer_unavailable", "publish_staged", "HF_BACKENDS", "CROSSRANK_BACKENDS", "CPU_ONLY_BACKENDS"]


@dataclass(frozen=True)
class PeerSpec:
    name: str
    label: str  # what the table prints
    backend: str  # "torch" | "onnx" | "openvino" (sentence-transformers) | "fastembed" | "flashrank"
    int8: bool
    extra: str = "bench"  # the crossrank extra that installs it: pip install "crossrank[<extra>]"
    modules: tuple[str, ...] = ("sentence_transformers",)  # what must be importable (dotted: a submodule)


# Peers built from the Hugging Face source folder (--hf-model) and from the crossrank folder's fp32 graph.
HF_BACKENDS = frozenset({"torch", "onnx", "openvino"})
CROSSRANK_BACKENDS = frozenset({"fastembed", "flashrank"})
# Peers without a CUDA path (FlashRank's Ranker takes no execution provider; OpenVINO runs on its CPU plugin).
CPU_ONLY_BACKENDS = frozenset({"flashrank", "openvino"})

PEERS: dict[str, PeerSpec] = {
    "st-torch": PeerSpec("st-torch", "sentence-transformers PyTorch fp32", "torch", False),
    "st-onnx": PeerSpec("st-onnx", "sentence-transformers ONNX fp32", "onnx", False, "export-optimum",
                        ("sentence_transformers", "optimum.onnxruntime")),
    "st-onnx-int8": PeerSpec("st-onnx-int8", "sentence-transformers ONNX int8 (dynamic)", "onnx", True, "export-optimum",
                             ("sentence_transformers", "optimum.onnxruntime")),
    "fastembed": PeerSpec("fastembed", "fastembed TextCrossEncoder fp32 ONNX", "fastembed", False, "bench-fastembed",
                          ("fastembed",)),
    "flashrank": PeerSpec("flashrank", "FlashRank Ranker int8 (dynamic, avx2)", "flashrank", True, "bench-flashrank",
                          ("flashrank",)),
    "st-openvino": PeerSpec("st-openvino", "sentence-transformers OpenVINO fp32", "openvino", False, "bench-openvino",
                            ("sentence_transformers", "optimum.intel", "openvino", "nncf")),
    "st-openvino-int8": PeerSpec("st-openvino-int8", "sentence-transformers OpenVINO int8 (NNCF static, 300 pairs)",
                                 "openvino", True, "bench-openvino",
                                 ("sentence_transformers", "optimum.intel", "openvino", "nncf")),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing or broken
        return False


def peer_unavailable(name: str, provider: str = "cpu") -> str | None:
    """Why peer ``name`` cannot run here (the missing modules and the pip command; no CUDA path when
    ``provider="cuda"``), or None.

    Raises:
        BenchmarkError: ``name`` is not a known peer.
    """
    if name not in PEERS:
        raise BenchmarkError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    spec = PEERS[name]
    if provider == "cuda" and spec.backend in CPU_ONLY_BACKENDS:
        return f"{name} runs on the CPU only (no CUDA execution path)"
    missing = [m for m in spec.modules if not _importable(m)]
    if not missing:
        return None
    why = ""
    if "optimum.onnxruntime" in missing:
        why = (" (sentence-transformers' ONNX backend exports through optimum-onnx, which needs transformers<4.58 "
               "and cannot be installed next to transformers 5)")
    return f"{', '.join(missing)} not installed{why}: pip install \"crossrank[{spec.extra}]\""


def default_cache_dir() -> Path:
    if os.environ.get("CROSSRANK_BENCH_CACHE"):
        return Path(os.environ["CROSSRANK_BENCH_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "crossrank" / "bench"


def quantization_config_for(isa_flags: Sequence[str], machine: str = "") -> str:
    """The sentence-transformers dynamic-quantization preset for a CPU with these flags."""
    flags = {f.lower() for f in isa_flags}
    if machine.lower() in ("arm64", "aarch64"):
        return "arm64"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags or "avx512" in flags:
        return "avx512"
    return "avx2"


def _import_st() -> Any:
    try:
        import sentence_transformers  # noqa: F401
        from sentence_transformers import CrossEncoder
    except ImportError as err:
        raise MissingDependencyError(
            'the sentence-transformers peers need the bench extra: pip install "crossrank[bench]"'
        ) from err
    return CrossEncoder


def _hf_files(hf_model: Path) -> list[Path]:
    files = sorted(p for p in hf_model.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".txt"))
    if not any(p.name == "config.json" for p in files):
        raise BenchmarkError(f"{hf_model} holds no Hugging Face model files (no config.json)")
    return files


def weights_key(hf_model: str | os.PathLike) -> str:
    """Digest of a Hugging Face folder's files and the exporting libraries' versions."""
    h = hashlib.sha256()
    for p in _hf_files(Path(hf_model)):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    # The exporting libraries' versions (None when not installed: the transformers 5 stack has no optimum).
    from .machine import dist_version  # noqa: PLC0415

    for dist in ("sentence-transformers", "optimum"):
        h.update((dist_version(dist) or "-").encode())
    return h.hexdigest()[:16]


def publish_staged(tmp: Path, out: Path, meta: dict[str, Any]) -> None:
    """Write a prepared peer's ``crossrank-peers.json`` into its staged folder ``tmp`` and swap
    that folder in for ``out`` (a stale entry is replaced); the caller removes ``tmp`` on failure."""
    (tmp / "crossrank-peers.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def prepare_peer_models(hf_model: str | os.PathLike, *, isa_flags: Sequence[str], machine: str = "",
                        cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Export the sentence-transformers ONNX fp32 model and its dynamic int8 once; return where.

    Returns ``{"source": hf path, "onnx_dir": folder, "int8_file": "onnx/model_....onnx",
    "quantization": preset}``.
    """
    src = Path(hf_model)
    if not src.is_dir():
        raise BenchmarkError(
            f"the peers need the source Hugging Face model folder; {src} is not a folder (pass --hf-model)"
        )
    _hf_files(src)
    CrossEncoder = _import_st()
    preset = quantization_config_for(isa_flags, machine)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / "peers" / f"{src.name}-{weights_key(src)}"
    meta_file = out / "crossrank-peers.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("quantization") == preset and (out / meta["int8_file"]).is_file():
            return {**meta, "source": str(src), "onnx_dir": str(out)}
    log.info("building sentence-transformers ONNX peers of %s (once) in %s", src, out)
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model  # noqa: PLC0415

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = mkdtemp(prefix=out.name + ".", dir=out.parent)  # mkdir's mode under the umask, not 0700
    try:
        model = CrossEncoder(str(src), backend="onnx")  # exports through optimum
        model.save_pretrained(str(tmp))
        export_dynamic_quantized_onnx_model(model, preset, str(tmp))
        int8 = sorted((tmp / "onnx").glob(f"model_*{preset}*.onnx"))
        if len(int8) != 1:
            raise BenchmarkError(f"export_dynamic_quantized_onnx_model wrote {[p.name for p in int8]}, expected one file")
        meta = {"int8_file": f"onnx/{int8[0].name}", "quantization": preset}
        publish_staged(tmp, out, meta)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**meta, "source": str(src), "onnx_dir": str(out)}


def _max_length(model: Any) -> int | None:
    # sentence-transformers 5.x renamed CrossEncoder.max_length to max_seq_length (older: max_length)
    return getattr(model, "max_seq_length", None) if hasattr(model, "max_seq_length") else getattr(model, "max_length", None)


class Peer:
    """One loaded sentence-transformers model; ``rerank``/``score`` like crossrank's."""

    def __init__(self, spec: PeerSpec, model: Any) -> None:
        self.spec = spec
        self.name = spec.name
        self.model = model
        self.max_length = _max_length(model)

    def rerank(self, query: str, docs: Sequence[str]) -> list[dict]:
        return self.model.rank(query, list(docs), show_progress_bar=False)

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        return np.asarray(
            self.model.predict([(query, d) for d in docs], show_progress_bar=False), dtype=np.float32
        )

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.asarray(self.model.predict(list(pairs), show_progress_bar=False), dtype=np.float32)


def load_peer(name: str, *, max_length: int, prepared: dict[str, Any] | None = None,
              hf_model: str | os.PathLike | None = None, provider: str = "cpu") -> Any:
    """Load peer ``name`` (see :data:`PEERS`) with ``max_length`` tokens per pair.

    ``prepared`` holds what :func:`prepare_peer_models` (``onnx_dir``, ``int8_file``: the
    sentence-transformers ONNX peers) and :func:`crossrank.bench.onnx_peers.prepare_onnx_peers`
    (``fastembed_dir``, ``flashrank_cache``) returned, merged. ``provider="cuda"`` puts the peer where
    crossrank runs: PyTorch on ``cuda``, the ONNX peers on onnxruntime's CUDA execution provider
    (FlashRank has none: an error).

    Returns an object with ``name``, ``spec``, ``max_length``, ``rerank(query, docs)`` (the peer's own
    public call), ``score(query, docs)`` and ``score_pairs(pairs)`` (scores in input order).

    Raises:
        BenchmarkError: unknown peer, or its prepared files are missing.
        MissingDependencyError: the peer's extra is not installed.
    """
    if name not in PEERS:
        raise BenchmarkError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    spec = PEERS[name]
    if spec.backend in CROSSRANK_BACKENDS:
        from . import onnx_peers  # noqa: PLC0415

        key = "fastembed_dir" if spec.backend == "fastembed" else "flashrank_cache"
        if not (prepared or {}).get(key):
            raise BenchmarkError(f"peer {name} needs prepare_onnx_peers() first")
        if spec.backend == "fastembed":
            return onnx_peers.FastEmbedPeer(spec, prepared[key], max_length=max_length, provider=provider)
        return onnx_peers.FlashRankPeer(spec, prepared[key], max_length=max_length, provider=provider)
    if spec.backend == "openvino":
        from .openvino_peers import FP32_FILE  # noqa: PLC0415

        if provider != "cpu":
            raise BenchmarkError(f"peer {name} runs on the CPU only (OpenVINO's CPU plugin)")
        if not (prepared or {}).get("openvino_dir") or (spec.int8 and not prepared.get("openvino_int8_file")):
            raise BenchmarkError(f"peer {name} needs prepare_openvino_peers() first")
        file_name = prepared["openvino_int8_file"] if spec.int8 else FP32_FILE
        model = _import_st()(prepared["openvino_dir"], max_length=max_length, backend="openvino",
                             model_kwargs={"file_name": file_name})
    elif spec.backend == "torch":
        src = hf_model if hf_model is not None else (prepared or {}).get("source")
        if src is None:
            raise BenchmarkError("the PyTorch peer needs the source Hugging Face model (--hf-model)")
        model = _import_st()(str(src), max_length=max_length, device="cuda" if provider == "cuda" else "cpu")
    else:
        if not (prepared or {}).get("onnx_dir"):
            raise BenchmarkError(f"peer {name} needs prepare_peer_models() first")
        file_name = prepared["int8_file"] if spec.int8 else "onnx/model.onnx"
        model = _import_st()(
            prepared["onnx_dir"], max_length=max_length, backend="onnx", device="cuda" if provider == "cuda" else "cpu",
            model_kwargs={"file_name": file_name,
                          "provider": "CUDAExecutionProvider" if provider == "cuda" else "CPUExecutionProvider"},
        )
    got = _max_length(model)
    if got != max_length:  # pragma: no cover - a sentence-transformers behaviour change
        raise BenchmarkError(f"peer {name} runs with max_length {got}, not {max_length}")
    return Peer(spec, model)
