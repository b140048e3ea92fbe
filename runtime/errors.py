"""The one exception tree of crossrank.

Every error crossrank raises on purpose derives from :class:`CrossrankError`, so a service can
catch one type. Errors that are also a plain Python category (a bad argument) additionally derive
from the matching builtin (``ValueError``, ``TypeError``, ``FileNotFoundError``) so that generic
handlers keep working. Errors from onnxruntime, tokenizers, torch or optimum are translated at the
boundary with ``raise ... from err``; the original stays available as ``__cause__``.

    CrossrankError
    ├── ModelFolderError            a model folder is missing, corrupt or does not match its manifest
    │   ├── ManifestError           crossrank.json is unreadable, invalid, or from a newer schema
    │   ├── IntegrityError          a file's sha256 differs from the manifest
    │   └── VariantNotFoundError    the asked-for variant is not in the folder (also a ValueError)
    ├── ProviderError               the asked-for execution provider is not usable
    ├── InferenceError              onnxruntime failed while scoring
    ├── SchedulerError              the cross-request scheduler could not serve a request
    │   ├── QueueFullError          its queue is full: shed the request, retry after ``retry_after_s``
    │   ├── RequestTimeoutError     not scored within the server-wide timeout (also a TimeoutError)
    │   └── SchedulerClosedError    the scheduler is closed (shutting down)
    ├── InvalidInputError           bad argument to a public call (also a ValueError)
    ├── InputTypeError              argument of the wrong type, e.g. a non-str document (also a TypeError)
    ├── MissingDependencyError      an optional extra (export, bench, gpu) is not installed (also ImportError)
    ├── ExportError                 crossrank.export failures
    │   ├── SourceModelError        the source model is missing, not a sequence classifier, unsafe weights
    │   ├── ValidationFailedError   a variant missed its parity threshold
    │   └── OutputExistsError       the output folder exists and may not be replaced
    └── BenchmarkError              crossrank.bench failures
        └── RegressionError         a benchmark gate failed
"""
from __future__ import annotations

__all__ = [
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


class CrossrankError(Exception):
    """Base class of every error crossrank raises on purpose."""


class ModelFolderError(CrossrankError):
    """A model folder is missing, corrupt, or does not match its manifest.

    ``path`` names the offending file or folder when one is known.
    """

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class ManifestError(ModelFolderError):
    """crossrank.json is unreadable, fails validation, or uses a newer schema."""


class IntegrityError(ModelFolderError):
    """A file's sha256 differs from the one recorded in the manifest."""


class VariantNotFoundError(ModelFolderError, ValueError):
    """The asked-for variant is not in the model folder."""


class ProviderError(CrossrankError):
    """The asked-for onnxruntime execution provider is not usable."""


class InferenceError(CrossrankError):
    """onnxruntime failed while scoring a batch."""


class SchedulerError(CrossrankError):
    """Base of the cross-request scheduler's failures (:mod:`crossrank.scheduler`)."""


class QueueFullError(SchedulerError):
    """The scheduler's queue holds its maximum of pairs: the request is shed, not queued.

    ``retry_after_s`` estimates when the queue will have drained (seconds, >= 1), from the
    scheduler's measured cost per padded token; a service sends it as ``Retry-After``.
    """

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)


class RequestTimeoutError(SchedulerError, TimeoutError):
    """A request without a deadline was not fully scored within the scheduler's timeout."""


class SchedulerClosedError(SchedulerError):
    """The scheduler was closed before (or while) the request could be served."""


class InvalidInputError(CrossrankError, ValueError):
    """A public call got an argument it cannot use."""


class InputTypeError(CrossrankError, TypeError):
    """A public call got an argument of the wrong type (the message names which item)."""


class MissingDependencyError(CrossrankError, ImportError):
    """An optional extra is not installed; the message names the pip command."""


class ExportError(CrossrankError):
    """Base of crossrank.export failures."""


class SourceModelError(ExportError):
    """The source model is missing, unreadable, not a sequence classifier, or needs unsafe loading."""


class ValidationFailedError(ExportError):
    """One or more variants missed their parity thresholds against PyTorch.

    ``failures`` maps variant name to a human-readable reason with the measured figures.
    """

    def __init__(self, message: str, *, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures or {})


class OutputExistsError(ExportError, FileExistsError):
    """The output folder exists and is not a crossrank folder, or --force was not given."""


class BenchmarkError(CrossrankError):
    """Base of crossrank.bench failures."""


class RegressionError(BenchmarkError):
    """A benchmark gate (latency ratio, absolute median or quality) failed."""
