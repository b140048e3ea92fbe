"""crossrank: fast cross-encoder reranking on ONNX Runtime.

The runtime needs only onnxruntime, tokenizers and numpy; it never imports torch, transformers
or optimum. The exporter lives in :mod:`crossrank.export` (``pip install "crossrank[export]"``).
"""
from ._version import __version__
from .activation import apply_activation
from .errors import (
    BenchmarkError,
    CrossrankError,
    ExportError,
    InferenceError,
    InputTypeError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    MissingDependencyError,
    ModelFolderError,
    OutputExistsError,
    ProviderError,
    QueueFullError,
    RequestTimeoutError,
    SchedulerClosedError,
    SchedulerError,
    RegressionError,
    SourceModelError,
    ValidationFailedError,
    VariantNotFoundError,
)
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest, load_manifest
from .reranker import Reranker, Result, ScoreInfo

__all__ = [
    "__version__",
    "Reranker",
    "Result",
    "ScoreInfo",
    "apply_activation",
    "load_manifest",
    "Manifest",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "CrossrankError",
    "ModelFolderError",
    "ManifestError",
    "IntegrityError",
    "VariantNotFoundError",
    "ProviderError",
    "InferenceError",
    "SchedulerError",
    "QueueFullError",
    "RequestTimeoutError",
    "SchedulerClosedError",
    "InvalidInputError",
    "InputTypeError",
    "MissingDependencyError",
    "ExportError",
    "SourceModelError",
    "ValidationFailedError",
    "OutputExistsError",
    "BenchmarkError",
    "RegressionError",
]
