"""fastembed and FlashRank as peers, on the crossrank folder's own fp32 ONNX graph.

Both libraries run an ONNX cross-encoder through onnxruntime with their own tokenization, batching
and sorting; what differs from crossrank is everything around the matrix products. They are fed the
same trained model, in the format each expects:

* ``fastembed``  ``fastembed.TextCrossEncoder`` on the fp32 graph (``model.onnx``, the crossrank
  folder's ``fp32`` variant, byte for byte) with ``tokenizer.json``, ``tokenizer_config.json``,
  ``special_tokens_map.json`` and ``config.json``, registered with
  ``TextCrossEncoder.add_custom_model`` and loaded from that local folder with
  ``specific_model_path`` (fastembed 0.9: no hub access). Timed call: ``TextCrossEncoder.rerank``
  (scores in input order, default batch size 64) and the sort a user of it writes.
* ``flashrank``  ``flashrank.Ranker`` on the same graph dynamically quantized to int8 as FlashRank
  ships its MiniLM (``*_Q.onnx``: onnxruntime ``quantize_dynamic`` with the avx2 settings that
  sentence-transformers / optimum use, see :func:`quantize_avx2`), laid out in the cache folder
  ``Ranker`` reads (``<cache_dir>/<model_name>/<model file>`` plus the tokenizer files), so that it
  never downloads. ``Ranker`` only accepts the model names of its ``flashrank.Config.model_file_map``,
  so the folder is named after its ``ms-marco-MiniLM-L-12-v2`` slot (a BERT cross-encoder in
  ``*_Q.onnx`` form): the name is FlashRank's, the weights are crossrank's model. Timed call:
  ``Ranker.rerank(RerankRequest(query, passages))`` (tokenizes, scores every passage in one batch,
  sorts).

Tokenizer settings come from the crossrank manifest: the same ``tokenizer.json``, ``model_max_length``
= crossrank's ``max_length``, the pad token and its id. Each library then truncates the pair its own
way (both re-enable truncation with the ``tokenizers`` default ``longest_first`` strategy, where
crossrank truncates the passage only): that is part of what each peer is.

Nothing here needs torch, transformers or optimum, so these peers run on the transformers 5 stack
where sentence-transformers' ONNX backend cannot be installed. The prepared folders are built once per
source graph into the bench cache (staged in a temporary folder, then renamed); the crossrank folder
is only read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossrank.atomic import mkdtemp
from crossrank.errors import BenchmarkError, MissingDependencyError

from .machine import dist_version as _version
from .peers import publish_staged

log = logging.getLogger("crossrank.bench.peers")

__all__ = ["prepare_onnx_peers", "quantize_avx2", "FastEmbedPeer", "FlashRankPeer", "FLASHRANK_SLOT",
           "FLASHRANK_FILE", "PREPARED_FORMAT"]

# The Ranker model name whose cache slot holds our weights, and the file name Ranker opens there
# (flashrank.Config.model_file_map in FlashRank 0.2.10).
FLASHRANK_SLOT = "ms-marco-MiniLM-L-12-v2"
FLASHRANK_FILE = "flashrank-MiniLM-L-12-v2_Q.onnx"
PREPARED_FORMAT = 1  # bump when the prepared layout changes: the cache key includes it

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


def _special_tokens(tokenizer_json: dict[str, Any], pad_token: str) -> dict[str, str]:
    """``special_tokens_map.json`` content: the BERT-style roles found among the tokenizer's special
    added tokens (``[CLS]`` -> cls_token, ...), the pad token always."""
    roles = {"[CLS]": "cls_token", "[SEP]": "sep_token", "[UNK]": "unk_token", "[MASK]": "mask_token",
             "<s>": "bos_token", "</s>": "eos_token", "<unk>": "unk_token", "<mask>": "mask_token"}
    out: dict[str, str] = {"pad_token": pad_token}
    for tok in tokenizer_json.get("added_tokens", []):
        if tok.get("special") and tok.get("content") in roles:
            out.setdefault(roles[tok["content"]], tok["content"])
    return out


def _write_tokenizer_files(model_dir: Path, manifest: Any, out: Path) -> None:
    """The tokenizer files both libraries read, from the crossrank folder's ``tokenizer.json`` and
    manifest (``max_length`` in tokens, pad token and id)."""
    tok_src = model_dir / manifest.tokenizer.file
    tok = json.loads(tok_src.read_text(encoding="utf-8"))
    shutil.copyfile(tok_src, out / "tokenizer.json")
    pad = manifest.tokenizer.pad_token
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": manifest.max_length, "pad_token": pad, "padding_side": "right",
         "truncation_side": "right"}, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(_special_tokens(tok, pad), indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(
        {"model_type": manifest.model_type, "architectures": [manifest.architecture],
         "pad_token_id": manifest.tokenizer.pad_token_id, "num_labels": manifest.num_labels}, indent=2) + "\n")


def quantize_avx2(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of an fp32 graph with the avx2 settings of optimum's
    ``AutoQuantizationConfig.avx2(is_static=False)``, which sentence-transformers'
    ``export_dynamic_quantized_onnx_model(..., "avx2", ...)`` applies and FlashRank's ``*_Q.onnx``
    files come from: onnxruntime ``quantize_dynamic`` (QOperator format, IntegerOps mode), uint8
    activations (asymmetric, scales computed per call), uint8 weights symmetric per output channel,
    full 8-bit range, every operator onnxruntime's dynamic quantizer handles (its
    ``IntegerOpsRegistry``: MatMul, Gather on the embeddings, Attention, ...; optimum's default)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    quantize_dynamic(
        model_input=str(src), model_output=str(dst), per_channel=True, reduce_range=False,
        weight_type=QuantType.QUInt8,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )


def _key(model_dir: Path, manifest: Any) -> str:
    fp32 = manifest.variants["fp32"]
    parts = [PREPARED_FORMAT, fp32.sha256, manifest.tokenizer.sha256, manifest.max_length,
             manifest.tokenizer.pad_token, manifest.tokenizer.pad_token_id, _version("onnxruntime"), _version("onnx")]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def prepare_onnx_peers(model_dir: str | Path, *, cache_dir: str | Path, int8: bool = True) -> dict[str, Any]:
    """Build (once) the fastembed folder and the FlashRank cache folder from ``model_dir``'s fp32 graph.

    Args:
        model_dir: a crossrank model folder with an ``fp32`` variant (read only).
        cache_dir: the bench cache; the result goes to ``<cache_dir>/onnx-peers/<folder>-<key>`` where
            the key digests the fp32 graph's and tokenizer's sha256, ``max_length`` and the
            onnxruntime/onnx versions (the quantizer).
        int8: also build FlashRank's int8 graph (a few seconds for MiniLM-L6 on 2 cores).

    Returns:
        ``{"fastembed_dir": folder, "flashrank_cache": folder holding FLASHRANK_SLOT/, "onnx_key": key}``
        (the FlashRank entry only with ``int8``).

    Raises:
        BenchmarkError: no ``fp32`` variant, or a graph with external data (over 2 GB).
    """
    from crossrank.manifest import load_manifest  # noqa: PLC0415

    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    fp32 = manifest.variants.get("fp32")
    if fp32 is None:
        raise BenchmarkError(f"the fastembed and FlashRank peers need {model_dir}'s fp32 variant (model.onnx); it has "
                             f"{', '.join(manifest.variants)}")
    if fp32.data_files:
        raise BenchmarkError(f"{model_dir}'s fp32 graph keeps its weights in external data; the fastembed and "
                             "FlashRank peers take single-file graphs")
    key = _key(model_dir, manifest)
    root = Path(cache_dir) / "onnx-peers"
    out = root / f"{model_dir.name}-{key}"
    meta_file = out / "crossrank-peers.json"
    result = {"fastembed_dir": str(out / "fastembed"), "onnx_key": key}
    if int8:
        result["flashrank_cache"] = str(out / "flashrank")
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if not int8 or meta.get("flashrank"):
            return result
    log.info("building the fastembed/FlashRank peers of %s (once) in %s", model_dir, out)
    root.mkdir(parents=True, exist_ok=True)
    tmp = mkdtemp(prefix=out.name + ".", dir=root)
    try:
        fe = tmp / "fastembed"
        fe.mkdir()
        shutil.copyfile(model_dir / fp32.file, fe / "model.onnx")
        _write_tokenizer_files(model_dir, manifest, fe)
        if int8:
            fr = tmp / "flashrank" / FLASHRANK_SLOT
            fr.mkdir(parents=True)
            for name in _TOKENIZER_FILES:
                shutil.copyfile(fe / name, fr / name)
            quantize_avx2(fe / "model.onnx", fr / FLASHRANK_FILE)
        meta = {"source": str(model_dir), "fp32_sha256": fp32.sha256, "max_length": manifest.max_length,
                "flashrank": int8, "flashrank_slot": FLASHRANK_SLOT if int8 else None,
                "quantization": "onnxruntime quantize_dynamic, avx2 settings (uint8 weights, symmetric, per channel)"
                if int8 else None, "onnxruntime": _version("onnxruntime")}
        publish_staged(tmp, out, meta)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _import(module: str, extra: str) -> Any:
    import importlib  # noqa: PLC0415

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(f'the {module} peer needs its extra: pip install "crossrank[{extra}]"') from err


class FastEmbedPeer:
    """fastembed's ``TextCrossEncoder`` on the prepared fp32 folder. ``rerank`` returns
    ``[{"corpus_id": i, "score": logit}]`` sorted by score, best first."""

    def __init__(self, spec: Any, folder: str | Path, *, max_length: int, provider: str = "cpu",
                 threads: int | None = None) -> None:
        _import("fastembed", spec.extra)
        from fastembed.common.model_description import ModelSource  # noqa: PLC0415
        from fastembed.rerank.cross_encoder import TextCrossEncoder  # noqa: PLC0415

        folder = Path(folder)
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        if cfg.get("model_max_length") != max_length:
            raise BenchmarkError(f"{folder} was prepared for max_length {cfg.get('model_max_length')}, not {max_length}")
        self.spec, self.name, self.max_length = spec, spec.name, max_length
        # A per-folder name: add_custom_model refuses a name registered before (in this process).
        model_name = f"crossrank-bench/{folder.parent.name}"
        if not any(m["model"].lower() == model_name.lower() for m in TextCrossEncoder.list_supported_models()):
            TextCrossEncoder.add_custom_model(model_name, sources=ModelSource(hf=model_name), model_file="model.onnx",
                                              description="crossrank bench peer (local folder)")
        self.model = TextCrossEncoder(
            model_name, specific_model_path=str(folder), threads=threads,
            providers=["CUDAExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"],
        )

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        """Raw logits in input order (fastembed applies no activation)."""
        return np.fromiter(self.model.rerank(query, list(docs)), dtype=np.float32, count=len(docs))

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.fromiter(self.model.rerank_pairs(list(pairs)), dtype=np.float32, count=len(pairs))

    def rerank(self, query: str, docs: Sequence[str]) -> list[dict]:
        scores = list(self.model.rerank(query, docs))
        order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
        return [{"corpus_id": i, "score": scores[i]} for i in order]


class FlashRankPeer:
    """FlashRank's ``Ranker`` on the prepared int8 cache slot. ``rerank`` returns FlashRank's own
    result: the passages ``{"id": i, "text": doc, "score": sigmoid(logit)}`` sorted best first."""

    def __init__(self, spec: Any, cache: str | Path, *, max_length: int, provider: str = "cpu") -> None:
        if provider != "cpu":
            raise BenchmarkError("FlashRank runs on the CPU only (Ranker takes no execution provider)")
        _import("flashrank", spec.extra)
        from flashrank import Ranker, RerankRequest  # noqa: PLC0415

        slot = Path(cache) / FLASHRANK_SLOT
        if not (slot / FLASHRANK_FILE).is_file():  # Ranker would try to download it
            raise BenchmarkError(f"{slot / FLASHRANK_FILE} is missing: prepare_onnx_peers(..., int8=True) first")
        self.spec, self.name, self.max_length = spec, spec.name, max_length
        self._request = RerankRequest
        self.model = Ranker(model_name=FLASHRANK_SLOT, cache_dir=str(cache), max_length=max_length, log_level="WARNING")

    def rerank(self, query: str, docs: Sequence[str]) -> list[dict]:
        return self.model.rerank(self._request(query=query, passages=[{"id": i, "text": d} for i, d in enumerate(docs)]))

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        """FlashRank's scores (sigmoid of the logit) in input order."""
        out = np.empty(len(docs), dtype=np.float32)
        for p in self.rerank(query, docs):
            out[p["id"]] = p["score"]
        return out

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.asarray([self.score(q, [d])[0] for q, d in pairs], dtype=np.float32)
