"""sentence-transformers' OpenVINO backend as peers: fp32 and static int8 calibrated offline.

* ``st-openvino``       ``CrossEncoder(..., backend="openvino")``: the Hugging Face model exported to
  OpenVINO IR through optimum-intel (``openvino/openvino_model.xml``), fp32;
* ``st-openvino-int8``  the same IR post-training statically quantized to int8 by NNCF through
  optimum-intel's ``OVQuantizer`` with an ``OVQuantizationConfig`` (its defaults: 8-bit activations
  and weights, NNCF's default preset and its SmoothQuant-style scale migration for transformers),
  which is what sentence-transformers'
  ``export_static_quantized_openvino_model`` runs, saved as ``openvino/openvino_model_qint8_quantized.xml``
  as that helper names it. That helper calibrates on a hub data set (``glue``/``sst2`` sentences),
  unreachable offline and not pairs; here the calibration set is :data:`CALIBRATION_PAIRS` (query,
  passage) pairs from crossrank's built-in ``calibration.jsonl`` then ``validation.jsonl``
  (:func:`crossrank.export.pairs.read_pairs`), each tokenized as a pair exactly as the peer's own
  tokenizer does at crossrank's ``max_length`` (no padding, one pair per calibration sample).

Both are timed through ``CrossEncoder.rank`` like the other sentence-transformers peers, with
crossrank's ``max_length``. Built once per source model into the bench cache (staged, then renamed);
the Hugging Face folder is only read. The ``bench-openvino`` extra installs them; it stays out of
``dev`` (OpenVINO and NNCF are heavy), so CI does not measure these two.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from crossrank.atomic import mkdtemp
from crossrank.errors import BenchmarkError, MissingDependencyError

from .machine import dist_version
from .peers import publish_staged

log = logging.getLogger("crossrank.bench.peers")

__all__ = ["prepare_openvino_peers", "calibration_pairs", "CALIBRATION_PAIRS", "FP32_FILE", "INT8_FILE"]

CALIBRATION_PAIRS = 300  # the size of sentence-transformers' / OVQuantizationConfig's default calibration set
FP32_FILE = "openvino/openvino_model.xml"
INT8_FILE = "openvino/openvino_model_qint8_quantized.xml"
PREPARED_FORMAT = 1


def calibration_pairs(n: int = CALIBRATION_PAIRS) -> list[tuple[str, str]]:
    """The first ``n`` (query, passage) pairs of crossrank's built-in calibration set, then its
    built-in validation set (fewer when both together hold fewer)."""
    from crossrank.export.pairs import read_pairs  # noqa: PLC0415

    pairs = list(read_pairs(None, what="calibration").pairs) + list(read_pairs(None, what="validation").pairs)
    return pairs[:n]


def _versions() -> dict[str, str | None]:
    return {dist: dist_version(dist) for dist in ("sentence-transformers", "optimum-intel", "openvino", "nncf", "transformers")}


def prepare_openvino_peers(hf_model: str | Path, *, key: str, max_length: int, cache_dir: str | Path,
                           int8: bool = True) -> dict[str, Any]:
    """Export the OpenVINO fp32 IR and (``int8``) its NNCF static int8 once; return where.

    Args:
        hf_model: the Hugging Face source folder (read only).
        key: digest of its weights (:func:`crossrank.bench.peers.weights_key`).
        max_length: tokens per pair, used to tokenize the calibration pairs.
        cache_dir: the bench cache; the result goes to ``<cache_dir>/openvino-peers/<name>-<key>-<max_length>``.
        int8: also build the static int8 model (NNCF calibration: a minute or two for MiniLM-L6 on 2 cores).

    Returns:
        ``{"openvino_dir": folder, "openvino_int8_file": INT8_FILE or None, "openvino_calibration": {...}}``.

    Raises:
        MissingDependencyError: optimum-intel / openvino / nncf are not installed.
        BenchmarkError: the quantizer wrote no model.
    """
    try:
        import nncf  # noqa: PLC0415
        from optimum.intel.openvino import OVConfig, OVQuantizationConfig, OVQuantizer  # noqa: PLC0415
        from sentence_transformers import CrossEncoder  # noqa: PLC0415
    except ImportError as err:
        raise MissingDependencyError('the OpenVINO peers need their extra: pip install "crossrank[bench-openvino]"') from err

    src = Path(hf_model)
    root = Path(cache_dir) / "openvino-peers"
    out = root / f"{src.name}-{key}-{max_length}"
    meta_file = out / "crossrank-peers.json"
    result = {"openvino_dir": str(out), "openvino_int8_file": INT8_FILE if int8 else None}
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("versions") == _versions() and (not int8 or (out / INT8_FILE).is_file()):
            return {**result, "openvino_calibration": meta.get("calibration")}
    log.info("building the OpenVINO peers of %s (once) in %s", src, out)
    root.mkdir(parents=True, exist_ok=True)
    tmp = mkdtemp(prefix=out.name + ".", dir=root)
    try:
        model = CrossEncoder(str(src), backend="openvino", max_length=max_length)  # exports through optimum-intel
        model.save_pretrained(str(tmp))
        if not (tmp / FP32_FILE).is_file():
            raise BenchmarkError(f"CrossEncoder(backend='openvino').save_pretrained wrote no {FP32_FILE}")
        calibration = None
        if int8:
            pairs = calibration_pairs()
            samples = []
            for q, p in pairs:
                enc = model.tokenizer(q, p, truncation=True, max_length=max_length, return_tensors="np")
                samples.append({k: v for k, v in enc.items()})
            qcfg = OVQuantizationConfig(num_samples=len(samples))
            quantizer = OVQuantizer.from_pretrained(model.model)
            qdir = tmp / "int8-save"
            quantizer.quantize(calibration_dataset=nncf.Dataset(samples), save_directory=str(qdir),
                               ov_config=OVConfig(quantization_config=qcfg))
            written = sorted(qdir.rglob("openvino_model.xml"))
            if len(written) != 1:
                raise BenchmarkError(f"OVQuantizer.quantize wrote {[str(p) for p in written]}, expected one openvino_model.xml")
            shutil.move(written[0], tmp / INT8_FILE)
            shutil.move(written[0].with_suffix(".bin"), (tmp / INT8_FILE).with_suffix(".bin"))
            shutil.rmtree(qdir)
            calibration = {"pairs": len(samples), "source": "crossrank built-in calibration.jsonl + validation.jsonl",
                           "config": "OVQuantizationConfig defaults (NNCF static int8)"}
        meta = {"source": str(src), "max_length": max_length, "int8": int8, "calibration": calibration,
                "versions": _versions()}
        publish_staged(tmp, out, meta)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**result, "openvino_calibration": calibration}
