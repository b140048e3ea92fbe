"""Give infinity's ``--engine optimum`` a model folder it can serve: the HF folder plus one ONNX file.

infinity 0.0.78's optimum cross-encoder does not export: it looks for ``*.onnx`` in the model
folder (``No onnx files found for ...`` otherwise), prefers a file whose name contains
``quantize`` on CPU, and then runs ORTOptimizer (``optimization_level=99``, CPU, no fp16) on it.
With optimum 2.x — the only optimum that imports beside torch 2.13 — that last step fails
(``OptimizationConfig.__init__() got an unexpected keyword argument 'optimize_with_onnxruntime_only'``)
and infinity falls back to the unoptimized graph. So this script, run with the **infinity venv's**
python (its optimum/optimum-onnx/onnxruntime), does infinity's own steps ahead of time and writes
into OUT:

* the source folder's tokenizer and config files (copied; the source is only read), and
* exactly one ONNX file, so infinity's choice is known, already optimized the way infinity
  optimizes (same ``OptimizationConfig`` less the dropped argument); infinity's optimization
  attempt then fails as before and it serves this graph as it is:
  ``--variant fp32``: ``model_optimized.onnx``, the export of optimum's
  ``ORTModelForSequenceClassification(export=True)``, optimized;
  ``--variant int8``: ``model_quantized_optimized.onnx``, that export quantized dynamically with
  optimum's ``AutoQuantizationConfig.avx2(is_static=False, per_channel=False)`` (how the hub's
  ``onnx/model_quantized.onnx`` files are made), then optimized as infinity would optimize it.

    .cache/venv-infinity/bin/python benchmarks/serve_peers/infinity_onnx.py HF_FOLDER OUT --variant fp32|int8

The folder is built in a temporary sibling and renamed into place.
"""
from __future__ import annotations

import argparse
import os
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
    if any(out.glob("*.onnx")):
        print(f"{out} exists")
        return 0
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer  # noqa: PLC0415
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, OptimizationConfig  # noqa: PLC0415

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    # mkdtemp makes 0700; give the folder what mkdir would (this venv has no crossrank.atomic).
    umask = os.umask(0o022)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        for p in src.iterdir():
            if p.is_file() and p.suffix in (".json", ".txt", ".model") and p.name != "model.safetensors.index.json":
                shutil.copy2(p, tmp / p.name)
                (tmp / p.name).chmod(0o644)
        work = tmp / ".export"
        ORTModelForSequenceClassification.from_pretrained(str(src), export=True).save_pretrained(str(work))
        src_dir, name = work, "model.onnx"
        if args.variant == "int8":
            q = ORTQuantizer.from_pretrained(str(work))
            q.quantize(save_dir=str(work / "q"), quantization_config=AutoQuantizationConfig.avx2(is_static=False, per_channel=False))
            (work / "q" / "config.json").write_text((work / "config.json").read_text())
            src_dir, name = work / "q", "model_quantized.onnx"
        final = name.replace(".onnx", "_optimized.onnx")
        try:  # infinity's utils_optimum.optimize_model, less optimize_with_onnxruntime_only
            model = ORTModelForSequenceClassification.from_pretrained(str(src_dir), file_name=name)
            ORTOptimizer.from_pretrained(model).optimize(
                optimization_config=OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False),
                save_dir=str(work / "opt"), one_external_file=True)
            shutil.move(str(work / "opt" / final), str(tmp / final))
        except Exception as err:  # noqa: BLE001 - infinity itself falls back to the unoptimized graph
            print(f"optimization failed ({type(err).__name__}: {err}); serving the unoptimized graph", file=sys.stderr)
            shutil.move(str(src_dir / name), str(tmp / name))
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
