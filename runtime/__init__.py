"""crossrank: fast cross-encoder reranking on ONNX Runtime.

The runtime needs only onnxruntime, tokenizers and numpy; it never imports torch, transformers
or optimum. The exporter lives in :mod:`crossrank.export` (``pip install "crossrank[export]"``).

What a runtime user needs is importable from here (``__all__``): :class:`Reranker` and what its
calls return (:class:`Result`, :class:`ScoreInfo`), :class:`Scheduler` (several callers sharing one
Reranker, as ``crossrank serve`` does; imported on first use, so ``import crossrank`` stays lean),
the model folder's manifest (:func:`load_manifest`, :func:`resolve_variant`), and every error of
:mod:`crossrank.errors`.
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
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest, load_manifest, resolve_variant
from .reranker import Reranker, Result, ScoreInfo

__all__ = [
    "__version__",
    "Reranker",
    "Result",
    "ScoreInfo",
    "Scheduler",
    "apply_activation",
    "load_manifest",
    "resolve_variant",
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


def __getattr__(name: str) -> object:
    # The scheduler pulls in asyncio and a thread pool: loaded when first asked for (PEP 562).
    if name == "Scheduler":
        from .scheduler import Scheduler  # noqa: PLC0415

        return Scheduler
    raise AttributeError(f"module 'crossrank' has no attribute {name!r}")
