"""Give infinity's ``--engine optimum`` a model folder it can serve: the HF folder plus one ONNX file.

infinity 0.0.78's optimum cross-encoder does not export: it looks for ``*.onnx`` in the model
folder (``No onnx files found for ...`` otherwise), prefers a file whose name contains
``quantize`` on CPU, and then runs ORTOptimizer (level 99) on it into
``$HF_HUB_CACHE/infinity_onnx/``. This script, run with the **infinity venv's** python (its
optimum/optimum-onnx/onnxruntime), writes into OUT:

* the source folder's tokenizer and config files (copied; the source is only read), and
* ``--variant fp32``: ``model.onnx``, exported with optimum's ``ORTModelForSequenceClassification(export=True)``;
  ``--variant int8``: ``model_quantized.onnx``, that export quantized dynamically with optimum's
  ``AutoQuantizationConfig.avx2(is_static=False, per_channel=False)`` (what infinity's docs and the
  hub's ``onnx/model_quantized.onnx`` files use) — exactly one ONNX file, so infinity's choice is known.

    .cache/venv-infinity/bin/python benchmarks/serve_peers/infinity_onnx.py HF_FOLDER OUT --variant fp32|int8

The folder is built in a temporary sibling and renamed into place.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("hf_model")
    ap.add_argument("out")
    ap.add_argument("--variant", choices=("fp32", "int8"), default="fp32")
    args = ap.parse_args(argv)
    src, out = Path(args.hf_model), Path(args.out)
    if (out / ("model.onnx" if args.variant == "fp32" else "model_quantized.onnx")).is_file():
        print(f"{out} exists")
        return 0
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer  # noqa: PLC0415
    from optimum.onnxruntime.configuration import AutoQuantizationConfig  # noqa: PLC0415

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        for p in src.iterdir():
            if p.is_file() and p.suffix in (".json", ".txt", ".model") and p.name != "model.safetensors.index.json":
                shutil.copy2(p, tmp / p.name)
                (tmp / p.name).chmod(0o644)
        work = tmp / ".export"
        ORTModelForSequenceClassification.from_pretrained(str(src), export=True).save_pretrained(str(work))
        if args.variant == "fp32":
            shutil.move(str(work / "model.onnx"), str(tmp / "model.onnx"))
        else:
            q = ORTQuantizer.from_pretrained(str(work))
            q.quantize(save_dir=str(work / "q"), quantization_config=AutoQuantizationConfig.avx2(is_static=False, per_channel=False))
            shutil.move(str(work / "q" / "model_quantized.onnx"), str(tmp / "model_quantized.onnx"))
        shutil.rmtree(work)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
