"""The ``fp16`` variant for the CUDA execution provider.

Converted from the optimized (fused) graph with onnxruntime's float16 converter and
``keep_io_types=True``: the int64 token inputs and the float32 logits output stay as they are at
the graph boundary, so the runtime feeds and reads it exactly like the fp32 variants. It is
validated on CUDA when the exporting machine has it, else on the CPU provider (slower, same maths
up to kernel differences); the threshold is max |Δ logit| ≤ 2e-2. Half the fp32 size, it is one
file up to 3.6 GB of fp32 weights, else ``model.fp16.onnx`` + ``model.fp16.onnx.data``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from crossrank.errors import ExportError

from .external import needs_external_data

__all__ = ["convert_fp16", "fp16_validation_providers"]


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))  # external data, if any, is read from beside src
    model.convert_float_to_float16(keep_io_types=True)
    proto = model.model
    out_types = [o.type.tensor_type.elem_type for o in proto.graph.output]
    in_types = [i.type.tensor_type.elem_type for i in proto.graph.input]
    model.save_model_to_file(str(dst), use_external_data_format=needs_external_data(proto))
    if any(t != onnx.TensorProto.FLOAT for t in out_types) or any(t not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) for t in in_types):
        raise ExportError("the float16 conversion changed the graph's boundary types (inputs must stay int, logits float32)")
    return {
        "converter": "onnxruntime.transformers float16 (convert_float_to_float16)",
        "converted_from": "optimized",
        "keep_io_types": True,
        "target_provider": "cuda",
    }


def fp16_validation_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
