"""crossrank.export: turn a Hugging Face cross-encoder into a validated crossrank model folder.

Needs the export extra (``pip install "crossrank[export]"``: torch, transformers, onnx; optimum's
exporter is used where ``crossrank[export-optimum]`` is installed and fits, else ``torch.onnx``). Importing
this package is cheap; the heavy libraries load inside :func:`export_model` and :func:`add_variant`.

    from crossrank.export import export_model, add_variant
    manifest = export_model("cross-encoder/ms-marco-MiniLM-L-6-v2", "./minilm", int8=True)
    manifest = add_variant("./minilm", "fp16")        # add or replace one variant, all or nothing
"""
from crossrank.errors import ExportError, OutputExistsError, SourceModelError, ValidationFailedError

from .options import ExportOptions
from .pairs import PairSet, PairsFileError, read_pairs
from .pipeline import ADDABLE_VARIANTS, VARIANT_FILES, ProgressCallback, add_variant, export_model
from .validate import THRESHOLDS, ValidationResult
from .writer import VariantResult

__all__ = [
    "export_model",
    "add_variant",
    "ExportOptions",
    "ProgressCallback",
    "VARIANT_FILES",
    "ADDABLE_VARIANTS",
    "THRESHOLDS",
    "read_pairs",
    "PairSet",
    "VariantResult",
    "ValidationResult",
    # errors an export raises (all ExportError but PairsFileError, which is also an InvalidInputError)
    "ExportError",
    "SourceModelError",
    "ValidationFailedError",
    "OutputExistsError",
    "PairsFileError",
]
