"""crossrank.export: turn a Hugging Face cross-encoder into a validated crossrank model folder.

Needs the export extra (``pip install "crossrank[export]"``: torch, transformers, optimum). Importing
this package is cheap; the heavy libraries load inside :func:`export_model`.

    from crossrank.export import export_model
    manifest = export_model("cross-encoder/ms-marco-MiniLM-L-6-v2", "./minilm", int8=True)
"""
from .pairs import PairSet, read_pairs
from .pipeline import VARIANT_FILES, ProgressCallback, export_model
from .validate import THRESHOLDS

__all__ = ["export_model", "ProgressCallback", "VARIANT_FILES", "THRESHOLDS", "read_pairs", "PairSet"]
