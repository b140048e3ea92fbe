"""ONNX external data: graphs whose weights would not fit protobuf's 2 GiB keep them in one side file.

A variant file ``model.X.onnx`` whose weights exceed :data:`EXTERNAL_DATA_BYTES` is written as the
graph (small) plus every weight in ``model.X.onnx.data`` beside it (:func:`data_file_name`);
onnxruntime finds the side file by the name the graph records, relative to the graph. Smaller
graphs stay one file (an XLM-R-large reranker: fp32 and optimized 2.2 GB, two files each; int8
and fp16 one file). The manifest lists the side file with its own sha256 and size
(``VariantSpec.data_files``).

:data:`EXTERNAL_DATA_BYTES` is read at every call, so a test can lower it (e.g. to 0) and send a
tiny model down the same path a 2 GB one takes.

Memory: :func:`adopt` moves optimum's graph and renames its side file without loading the
weights; :func:`save` writes a proto already in memory. Weights are counted from tensor shapes
(:func:`weight_bytes`), never by serializing the proto (which fails over 2 GiB).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from crossrank.errors import ExportError

__all__ = [
    "EXTERNAL_DATA_BYTES",
    "data_file_name",
    "weight_bytes",
    "needs_external_data",
    "data_files",
    "check_data_files",
    "save",
    "adopt",
]

log = logging.getLogger("crossrank.export")

#: Weights (bytes) above which a graph is written with external data; protobuf refuses 2 GiB,
#: and the graph itself and its attributes need some room.
EXTERNAL_DATA_BYTES = 1_800_000_000


def data_file_name(onnx_name: str) -> str:
    """The side file of ``onnx_name``: ``model.onnx`` -> ``model.onnx.data``."""
    return onnx_name + ".data"


def weight_bytes(proto: Any) -> int:
    """Bytes of the graph's initializers (and Constant tensors), from their shapes and element types."""
    import numpy as np
    from onnx import AttributeProto, helper

    def size(t: Any) -> int:
        try:
            item = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            item = 1
        return int(np.prod(list(t.dims), dtype=np.int64)) * item

    total = sum(size(t) for t in proto.graph.initializer)
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                total += size(attr.t)
    return total


def needs_external_data(proto: Any) -> bool:
    """Whether ``proto`` must be written with its weights in a side file (see :data:`EXTERNAL_DATA_BYTES`)."""
    return weight_bytes(proto) > EXTERNAL_DATA_BYTES


def data_files(path: Path) -> list[str]:
    """The side files the graph at ``path`` reads its weights from (names relative to its folder), sorted."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    names = set()
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(names)


def save(proto: Any, path: Path) -> list[Path]:
    """Write ``proto`` to ``path``, with its weights in ``path``'s side file when they need one.

    Returns the files written (the graph first). Note that saving with external data empties the
    tensors of ``proto`` in memory (onnx moves them to the file): reload from ``path`` to use it again.
    """
    import onnx

    path = Path(path)
    side = path.with_name(data_file_name(path.name))
    side.unlink(missing_ok=True)  # onnx appends to an existing side file
    if needs_external_data(proto):
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=side.name, size_threshold=1024)
        return [path, side]
    onnx.save(proto, str(path))
    return [path]


def adopt(produced: Path, dst: Path) -> list[Path]:
    """Move optimum's graph ``produced`` (and any side files it wrote) to ``dst`` with crossrank's layout.

    A graph that came with one side file keeps its weights there, the file renamed to
    ``dst``'s side-file name and the graph's references rewritten, without loading the weights.
    A graph whose weights are spread over several files, or that is inline but above the
    threshold, is loaded whole and saved again. Returns the files now at ``dst``.
    """
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(produced), load_external_data=False)
    external = [t for t in _get_all_tensors(proto) if uses_external_data(t)]
    locations = {e.value for t in external for e in t.external_data if e.key == "location"}
    side = dst.with_name(data_file_name(dst.name))
    if len(locations) == 1:
        (old,) = locations
        for tensor in external:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = side.name
        shutil.move(str(produced.parent / old), str(side))
        onnx.save(proto, str(dst))
        produced.unlink()
        log.debug("fp32 graph keeps its weights in %s (%d tensors)", side.name, len(external))
        return [dst, side]
    if locations or needs_external_data(proto):
        if locations:
            proto = onnx.load(str(produced), load_external_data=True)
        written = save(proto, dst)
        produced.unlink()
        for name in locations:
            (produced.parent / name).unlink(missing_ok=True)
        return written
    shutil.move(str(produced), str(dst))
    return [dst]


def check_data_files(path: Path) -> list[str]:
    """:func:`data_files` of ``path``, each checked to exist beside it; raises :class:`ExportError` otherwise."""
    names = data_files(path)
    for name in names:
        if os.sep in name or "/" in name or not (path.parent / name).is_file():
            raise ExportError(f"{path.name} reads its weights from {name!r}, which is not a file beside it")
    return names
