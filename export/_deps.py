"""Check that the export extra is installed before any heavy work starts."""
from __future__ import annotations

import importlib
import importlib.metadata

from crossrank.errors import MissingDependencyError

__all__ = ["require_export_deps", "library_versions"]

# (import name, distribution name) of everything `crossrank export` needs beyond the runtime.
_REQUIRED = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("optimum.exporters.onnx", "optimum-onnx"),
    ("onnx", "onnx"),
    ("safetensors", "safetensors"),
)


def require_export_deps() -> None:
    """Raise :class:`MissingDependencyError` naming the pip command when the export extra is missing."""
    missing = []
    for module, dist in _REQUIRED:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise MissingDependencyError(
            f"crossrank export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            'pip install "crossrank[export]"'
        )


def library_versions() -> dict[str, str]:
    """Versions recorded in the manifest: crossrank and the libraries that made the files."""
    from crossrank import __version__

    out = {"crossrank": __version__}
    for dist in ("onnx", "onnxruntime", "optimum", "optimum-onnx", "transformers", "torch", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if dist == "onnxruntime":  # the GPU wheel provides the same module
                try:
                    out[dist] = importlib.metadata.version("onnxruntime-gpu")
                except importlib.metadata.PackageNotFoundError:
                    pass
    return out
