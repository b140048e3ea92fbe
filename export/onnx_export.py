"""The fp32 ONNX graph, through optimum's exporter (task text-classification, dynamic axes).

optimum decides the inputs from the architecture (no ``token_type_ids`` for RoBERTa-family or
DeBERTa-v3 models); :func:`read_graph` reads back what the graph really declares and checks it is
something the runtime can feed: ``input_ids`` + ``attention_mask`` (+ ``token_type_ids``),
integer dtypes, dynamic batch and sequence axes, one float logits output of width ``num_labels``.
A graph whose weights exceed protobuf's 2 GiB keeps them in ``model.onnx.data``
(:mod:`crossrank.export.external`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossrank.errors import ExportError, SourceModelError
from crossrank.manifest import InputSpec, OutputSpec

from .external import adopt
from .source import first_line

__all__ = ["GraphInfo", "DummyLimits", "TASK", "check_exportable", "clamp_dummy_inputs", "dummy_limits", "export_fp32", "read_graph"]

TASK = "text-classification"
ALLOWED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DUMMY_SEQUENCE_LENGTH = 16  # optimum's default trace length
_ONNX_INT_DTYPES = {7: "int64", 6: "int32"}
_ONNX_FLOAT_DTYPES = {1: "float32", 10: "float16"}


@dataclass(frozen=True)
class GraphInfo:
    inputs: tuple[InputSpec, ...]
    output: OutputSpec
    opset: int


def check_exportable(model_type: str, ident: str) -> None:
    """Refuse early when optimum cannot export this model type for text classification."""
    import optimum.exporters.onnx.model_configs  # noqa: F401 - registers the ONNX configs
    from optimum.exporters.tasks import TasksManager

    supported = TasksManager._SUPPORTED_MODEL_TYPE.get(model_type.replace("_", "-"), {}).get("onnx", {})
    if not supported:
        supported = TasksManager._SUPPORTED_MODEL_TYPE.get(model_type, {}).get("onnx", {})
    if TASK not in supported:
        raise SourceModelError(
            f"{ident!r} is a {model_type!r} model, which optimum's ONNX exporter cannot export for {TASK}"
            + (f" (it supports {', '.join(sorted(supported))})" if supported else "")
            + "; exporter='torch' (--exporter torch) exports it with torch.onnx"
        )


@dataclass(frozen=True)
class DummyLimits:
    """What the model's tables can index: the trace inputs must stay inside them.

    ``token_rows``: rows of the word-embedding table (``input_ids`` < this); ``type_rows``: rows of
    the token-type table (0 or None: no table, ``token_type_ids`` all 0); ``sequence_length``:
    tokens per dummy pair (at most the positions the model holds).
    """

    token_rows: int
    type_rows: int | None
    sequence_length: int


def dummy_limits(model: Any, *, max_length: int) -> DummyLimits:
    """The :class:`DummyLimits` of ``model`` (a PyTorch classifier) read from its tables, not its config."""
    rows = int(model.get_input_embeddings().num_embeddings)
    types = getattr(model.config, "type_vocab_size", None)
    types = int(types) if isinstance(types, int) and not isinstance(types, bool) else None
    return DummyLimits(token_rows=rows, type_rows=types, sequence_length=max(2, min(DUMMY_SEQUENCE_LENGTH, max_length)))


def clamp_dummy_inputs(inputs: dict[str, Any], limits: DummyLimits) -> dict[str, Any]:
    """Fold optimum's random trace inputs into the ranges the model can index (in place; returned).

    optimum draws ``input_ids`` below ``config.vocab_size`` and ``token_type_ids`` from {0, 1}
    whatever the model's tables hold, so a model with one token type (or an embedding table
    smaller than its config says) failed to trace with "index out of range in self".
    """
    ids = inputs.get("input_ids")
    if ids is not None:
        inputs["input_ids"] = ids.remainder(limits.token_rows)
    types = inputs.get("token_type_ids")
    if types is not None:
        inputs["token_type_ids"] = types.remainder(limits.type_rows) if limits.type_rows and limits.type_rows > 0 else types * 0
    return inputs


def _onnx_config(model: Any, limits: DummyLimits) -> Any:
    """optimum's own ONNX config for ``model``, its dummy inputs folded into ``limits``."""
    from optimum.exporters.tasks import TasksManager

    constructor = TasksManager.get_exporter_config_constructor(
        exporter="onnx", model=model, task=TASK, library_name="transformers"
    )
    config = constructor(model.config, int_dtype="int64", float_dtype="fp32")
    generate = config.generate_dummy_inputs

    def generate_within_limits(framework: str = "pt", **kwargs: Any) -> dict[str, Any]:
        return clamp_dummy_inputs(generate(framework=framework, **kwargs), limits)

    config.generate_dummy_inputs = generate_within_limits
    return config


def export_fp32(model: Any, work_dir: Path, dst: Path, *, opset: int | None, max_length: int = DUMMY_SEQUENCE_LENGTH) -> GraphInfo:
    """Export ``model`` with optimum into ``work_dir`` and move the graph to ``dst``.

    The trace runs on dummy inputs kept inside the model's own tables (:func:`dummy_limits`):
    token ids below the embedding's row count, token types below the type table's, at most
    ``max_length`` tokens (the folder's max_length, itself within the position embeddings).
    """
    from optimum.exporters.onnx import onnx_export_from_model

    work_dir.mkdir(parents=True, exist_ok=True)
    limits = dummy_limits(model, max_length=max_length)
    try:
        onnx_export_from_model(
            model,
            work_dir,
            task=TASK,
            opset=opset,
            do_validation=False,  # crossrank validates every variant itself, on real pairs
            no_post_process=True,
            device="cpu",
            custom_onnx_configs={"model": _onnx_config(model, limits)},
            sequence_length=limits.sequence_length,
        )
    except (KeyboardInterrupt, MemoryError):
        raise
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.onnx and optimum raise many types
        raise ExportError(f"optimum's ONNX export of {type(model).__name__} failed: {first_line(err)}") from err
    produced = work_dir / "model.onnx"
    if not produced.is_file():
        raise ExportError(f"optimum's ONNX export wrote no model.onnx (found: {sorted(p.name for p in work_dir.iterdir())})")
    adopt(produced, dst)  # weights over 2 GB stay in dst's side file (see crossrank.export.external)
    graph = read_graph(dst, expect_labels=getattr(model.config, "num_labels", None))
    accepted = inspect.signature(model.forward).parameters
    foreign = [i.name for i in graph.inputs if i.name not in accepted]
    if foreign:
        raise ExportError(f"the exported graph declares inputs {foreign} that {type(model).__name__}.forward does not take")
    return graph


def read_graph(path: Path, *, expect_labels: int | None = None) -> GraphInfo:
    """Read a graph's declared inputs/output/opset and check the runtime can feed it."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf decode errors
        raise ExportError(f"{path.name}: cannot read the ONNX graph: {first_line(err)}") from err
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    problems: list[str] = []
    inputs: list[InputSpec] = []
    for value in graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        dtype = _ONNX_INT_DTYPES.get(ttype.elem_type)
        if value.name not in ALLOWED_INPUTS:
            problems.append(f"unexpected input {value.name!r}")
        if dtype is None:
            problems.append(f"input {value.name!r} has element type {ttype.elem_type}, not an integer")
        dims = list(ttype.shape.dim)
        if len(dims) != 2 or any(d.HasField("dim_value") for d in dims):
            shape = [d.dim_param or d.dim_value for d in dims]
            problems.append(f"input {value.name!r} has shape {shape}; expected dynamic [batch, sequence]")
        inputs.append(InputSpec(name=value.name, dtype=dtype or "int64"))
    names = [i.name for i in inputs]
    for required in ("input_ids", "attention_mask"):
        if required not in names:
            problems.append(f"no {required!r} input")
    if len(graph.output) != 1:
        problems.append(f"{len(graph.output)} outputs; expected one (logits)")
    out = graph.output[0] if graph.output else None
    width = None
    output = OutputSpec()
    if out is not None:
        ttype = out.type.tensor_type
        odtype = _ONNX_FLOAT_DTYPES.get(ttype.elem_type)
        if odtype is None:
            problems.append(f"output {out.name!r} has element type {ttype.elem_type}, not a float")
        dims = list(ttype.shape.dim)
        if len(dims) != 2 or dims[0].HasField("dim_value"):
            problems.append(f"output {out.name!r} has shape {[d.dim_param or d.dim_value for d in dims]}; expected [batch, labels]")
        elif dims[1].HasField("dim_value"):
            width = int(dims[1].dim_value)
            if expect_labels is not None and width != expect_labels:
                problems.append(f"output {out.name!r} has {width} columns but the model has {expect_labels} labels")
        output = OutputSpec(name=out.name, dtype=odtype or "float32")
    if problems:
        raise ExportError(f"{path.name}: the exported graph is not usable: " + "; ".join(problems))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return GraphInfo(inputs=tuple(inputs), output=output, opset=int(opset))
