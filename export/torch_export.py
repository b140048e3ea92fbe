"""The fp32 ONNX graph through ``torch.onnx`` itself, for stacks where optimum's exporter is absent.

optimum-onnx pins ``transformers<4.58``, so on transformers 5 it cannot be installed (or, left
over from an older environment, cannot import); there crossrank exports the sequence classifier
directly. The graph has the same contract as optimum's (:func:`crossrank.export.onnx_export.read_graph`
checks it): ``input_ids`` + ``attention_mask`` (+ ``token_type_ids`` only where the model has token
types), int64, dynamic ``[batch_size, sequence_length]`` axes, one float ``logits`` output
``[batch_size, num_labels]``.

The TorchScript exporter (``dynamo=False``) is used on purpose: it emits the same operator
patterns optimum's exporter does (optimum calls it too), which onnxruntime's transformer fusions
and :mod:`crossrank.export.prune` recognise; the dynamo exporter's decomposed graph leaves
attention unfused (so no last-layer pruning) and has specialised sequence lengths for some families.
The trace runs the model's eager attention: onnxruntime's attention fusion matches its
MatMul/Softmax pattern, while transformers 5's SDPA path exports as one it does not match
(measured: BERT/XLM-R/ELECTRA unfused and unpruned under SDPA, fused and pruned under eager).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import warnings
from pathlib import Path
from typing import Any, Iterator

from crossrank.errors import ExportError

from .external import adopt
from .onnx_export import DUMMY_SEQUENCE_LENGTH, GraphInfo, dummy_limits, read_graph
from .source import ROBERTA_LIKE, first_line

__all__ = ["DEFAULT_OPSET", "export_fp32_torch", "graph_input_names", "torch_onnx_version"]

# 17 has LayerNormalization as one operator (fewer nodes for onnxruntime's fusions to match)
# and is what every onnxruntime >= 1.14 runs; --opset may ask for another (>= 14).
DEFAULT_OPSET = 17
_BATCH, _SEQ = "batch_size", "sequence_length"


def torch_onnx_version() -> str:
    """The exporter's version recorded in the manifest: torch's, since torch.onnx ships with it."""
    return importlib.metadata.version("torch")


def graph_input_names(model: Any) -> list[str]:
    """The inputs the architecture's ``forward`` takes, in crossrank's order.

    ``token_type_ids`` only when ``forward`` takes it, the config has a token-type table
    (``type_vocab_size`` >= 1; DeBERTa-v3 has 0) and the family is not RoBERTa-like (RoBERTa,
    XLM-R...: one table row that every token reads, and tokenizers that emit no types). That is
    the choice optimum's exporter makes per family, so a folder declares the same inputs whichever
    stack exported it. Decided from the model and its config, never from the values a tokenizer
    happens to emit.
    """
    accepted = inspect.signature(model.forward).parameters
    missing = [name for name in ("input_ids", "attention_mask") if name not in accepted]
    if missing:
        raise ExportError(f"{type(model).__name__}.forward takes no {' or '.join(missing)}; crossrank cannot feed it")
    names = ["input_ids", "attention_mask"]
    types = getattr(model.config, "type_vocab_size", None)
    has_table = isinstance(types, int) and not isinstance(types, bool) and types >= 1
    if "token_type_ids" in accepted and has_table and getattr(model.config, "model_type", "") not in ROBERTA_LIKE:
        names.append("token_type_ids")
    return names


class _Logits:
    """``forward(*inputs) -> logits`` of a Hugging Face classifier, for tracing (positional inputs,
    one tensor out instead of a ModelOutput)."""

    def __new__(cls, model: Any, names: list[str]) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                return self.model(**dict(zip(names, args)), return_dict=True).logits

        return Wrapper().eval()


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Run ``model`` with its eager attention inside the block (see the module docstring), then restore it."""
    previous = getattr(model.config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if previous in (None, "eager") or setter is None:
        yield
        return
    try:
        setter("eager")
    except (ValueError, ImportError, AttributeError):  # a model without an eager path exports as it is
        yield
        return
    try:
        yield
    finally:
        setter(previous)


def _dummy_inputs(model: Any, names: list[str], *, max_length: int) -> tuple[Any, ...]:
    """A padded batch of two pairs inside the model's tables (:func:`dummy_limits`).

    Two rows of different lengths, padded on the right as the runtime pads, so the trace goes
    through the masking a real batch uses.
    """
    import torch

    limits = dummy_limits(model, max_length=max_length)
    seq = limits.sequence_length
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(low=min(5, limits.token_rows - 1), high=limits.token_rows, size=(2, seq), generator=generator)
    mask = torch.ones((2, seq), dtype=torch.int64)
    mask[1, seq // 2 + 1 :] = 0
    arrays = {"input_ids": ids.to(torch.int64), "attention_mask": mask}
    if "token_type_ids" in names:
        types = torch.zeros((2, seq), dtype=torch.int64)
        types[:, seq // 2 :] = 1 if (limits.type_rows or 0) > 1 else 0
        arrays["token_type_ids"] = types
    return tuple(arrays[n] for n in names)


def export_fp32_torch(
    model: Any, work_dir: Path, dst: Path, *, opset: int | None, max_length: int = DUMMY_SEQUENCE_LENGTH
) -> GraphInfo:
    """Export ``model`` (a ``*ForSequenceClassification`` in eval mode) with ``torch.onnx`` to ``dst``.

    Inputs per :func:`graph_input_names`, int64 ``[batch_size, sequence_length]``; output
    ``logits`` float32 ``[batch_size, num_labels]``; ``opset`` defaults to :data:`DEFAULT_OPSET`.
    A graph over 2 GiB keeps its weights in ``dst``'s side file (:mod:`crossrank.export.external`).

    Raises:
        ExportError: torch.onnx failed to trace or convert the model, or the graph it wrote is not
            one the runtime can feed (:func:`read_graph`).
    """
    import torch

    names = graph_input_names(model)
    inputs = _dummy_inputs(model, names, max_length=max_length)
    work_dir.mkdir(parents=True, exist_ok=True)
    produced = work_dir / "model.onnx"
    axes = {name: {0: _BATCH, 1: _SEQ} for name in names}
    axes["logits"] = {0: _BATCH}
    wrapper = _Logits(model, names)
    try:
        with torch.inference_mode(False), torch.no_grad(), _eager_attention(model), warnings.catch_warnings():
            # tracer warnings name Python-side shape checks of the modelling code; the graph is
            # validated against PyTorch afterwards on real pairs of many lengths
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                inputs,
                str(produced),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset or DEFAULT_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except (KeyboardInterrupt, MemoryError):
        raise
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - the tracer and the ONNX converter raise many types
        raise ExportError(f"torch.onnx export of {type(model).__name__} failed: {type(err).__name__}: {first_line(err)}") from err
    if not produced.is_file():
        raise ExportError(f"torch.onnx wrote no model.onnx (found: {sorted(p.name for p in work_dir.iterdir())})")
    adopt(produced, dst)  # weights over 2 GB stay in dst's side file (see crossrank.export.external)
    graph = read_graph(dst, expect_labels=getattr(model.config, "num_labels", None))
    declared = [i.name for i in graph.inputs]
    if declared != names:
        # torch.onnx drops an input the traced graph never reads (e.g. a mask a model ignores)
        raise ExportError(f"torch.onnx's graph declares inputs {declared}, expected {names}: {type(model).__name__} does not use all of them")
    return graph
