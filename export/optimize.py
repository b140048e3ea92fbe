"""The ``optimized`` variant: onnxruntime's transformer graph fusions, counts recorded.

onnxruntime's optimizer fuses BERT-style encoders (BERT, RoBERTa/XLM-R, ELECTRA, MiniLM...) into
Attention, SkipLayerNormalization, BiasGelu and EmbedLayerNormalization nodes. For families its
attention fusion does not recognise (DeBERTa-v2's disentangled attention, ModernBERT's rotary
attention) only the layer-norm/GELU fusions apply, and the settings say so. If the Python fusions
fail outright, the variant falls back to onnxruntime's provider-independent basic graph
optimizations and records the reason. The provider-specific levels (extended, layout) are left to
the runtime's session, so the file stays valid for CPU and CUDA alike.

When attention was fused and the classification head reads only the first token, the last layer
is then pruned to that token (:mod:`crossrank.export.prune`): chosen because it cuts MiniLM-L6's
weight multiply-adds by 14% at the same scores; timings in ``docs/graph-fusions.md``.
``last_layer_pruned`` and ``last_layer_note`` in the settings say whether it was, and why not.

A source graph with external data (over 2 GB) is read with it by onnxruntime's optimizer; the
optimized graph is written the same way (``model.opt.onnx`` + ``model.opt.onnx.data``) when its
weights still exceed :data:`crossrank.export.external.EXTERNAL_DATA_BYTES`. The side file is
named ``<file>.data`` by onnxruntime's ``save_model_to_file``, as crossrank names every side file.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .external import needs_external_data
from .source import first_line

__all__ = ["optimize_graph", "OPTIMIZER_MODEL_TYPE"]

log = logging.getLogger("crossrank.export")

OPTIMIZER_MODEL_TYPE = "bert"  # onnxruntime's fusion set for encoder-only transformers
OPT_LEVEL = 1  # basic (provider-independent) onnxruntime passes before the Python fusions


def _heads_and_hidden(config: Any) -> tuple[int, int]:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    return int(heads), int(hidden)


def _prune(proto: Any) -> tuple[bool, str]:
    """Prune a copy and adopt it only when the rewrite completed: a failure keeps the fused graph."""
    import onnx

    from .prune import prune_last_layer as prune

    candidate = onnx.ModelProto()
    candidate.CopyFrom(proto)
    try:
        done, note = prune(candidate)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - an unforeseen graph must not cost the fusions
        log.warning("last-layer pruning failed (%s); keeping the fused graph as it is", first_line(err))
        return False, f"pruning failed: {first_line(err)}"
    if done:
        proto.CopyFrom(candidate)
    return done, note


def optimize_graph(src: Path, dst: Path, *, model_type: str, config: Any, prune_last_layer: bool = True) -> dict[str, Any]:
    """Write the fused graph of ``src`` to ``dst``; return the settings to record.

    ``prune_last_layer`` computes the last layer for the [CLS] position only, where the graph
    allows it (see the module docstring).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _heads_and_hidden(config)
    settings: dict[str, Any] = {
        "optimizer": "onnxruntime.transformers.optimizer",
        "optimizer_model_type": OPTIMIZER_MODEL_TYPE,
        "num_heads": heads,
        "hidden_size": hidden,
        "opt_level": OPT_LEVEL,
        "use_gpu": False,
    }
    try:
        model = optimize_model(
            str(src), model_type=OPTIMIZER_MODEL_TYPE, num_heads=heads, hidden_size=hidden, opt_level=OPT_LEVEL, use_gpu=False
        )
        stats = {k: int(v) for k, v in (model.get_fused_operator_statistics() or {}).items() if v}
        pruned, prune_note = _prune(model.model) if prune_last_layer else (False, "not requested (prune_last_layer=False)")
        model.save_model_to_file(str(dst), use_external_data_format=needs_external_data(model.model))
    except (KeyboardInterrupt, MemoryError, OSError):
        raise
    except Exception as err:  # noqa: BLE001 - the fusion scripts raise assorted errors on unknown graphs
        reason = first_line(err)
        log.warning("onnxruntime's transformer fusions failed for %s (%s); using its basic graph optimizations", model_type, reason)
        model = optimize_model(str(src), opt_level=1, only_onnxruntime=True, use_gpu=False)
        model.save_model_to_file(str(dst), use_external_data_format=needs_external_data(model.model))
        return {
            "optimizer": "onnxruntime (basic graph optimizations only)",
            "opt_level": 1,
            "fused_operators": {},
            "attention_fused": False,
            "fallback_reason": f"transformer fusions failed: {reason}",
            "last_layer_pruned": False,
            "last_layer_note": "no fused attention to prune",
        }
    attention = sum(v for k, v in stats.items() if "Attention" in k)
    settings["fused_operators"] = stats
    settings["attention_fused"] = attention > 0
    settings["last_layer_pruned"] = pruned
    settings["last_layer_note"] = prune_note
    log.info("optimized variant: %s", prune_note if pruned else f"last layer not pruned: {prune_note}")
    if not attention:
        settings["note"] = (
            f"onnxruntime's optimizer does not fuse {model_type} attention; "
            + (f"only {', '.join(sorted(stats))} were fused" if stats else "no fusions applied")
        )
        log.info("optimized variant: %s", settings["note"])
    return settings
