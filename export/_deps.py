"""Check that the export extra is installed before any heavy work starts."""
from __future__ import annotations

import importlib
import importlib.metadata

from crossrank.errors import InvalidInputError, MissingDependencyError

__all__ = ["EXPORTERS", "choose_exporter", "exporter_version", "optimum_status", "require_export_deps", "library_versions"]

# (import name, distribution name) of everything `crossrank export` needs beyond the runtime.
# optimum-onnx is not among them: without it (transformers 5) the torch.onnx path exports.
_REQUIRED = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("onnx", "onnx"),
    ("safetensors", "safetensors"),
)

#: exporter= / --exporter choices: "auto" picks optimum when usable, else torch.onnx.
EXPORTERS = ("auto", "optimum", "torch")
#: what the manifest's fp32 settings call each exporter
EXPORTER_NAMES = {"optimum": "optimum.exporters.onnx", "torch": "torch.onnx"}
_EXPORTER_DIST = {"optimum": "optimum-onnx", "torch": "torch"}


def optimum_status() -> tuple[bool, str]:
    """(usable, why): whether optimum-onnx is installed, declares the installed transformers
    compatible, and imports.

    The declared range is checked before importing: optimum-onnx 0.1.0 beside transformers 5 (a
    leftover of an upgrade) may import and then fail inside the trace.
    """
    try:
        installed = importlib.metadata.version("optimum-onnx")
    except importlib.metadata.PackageNotFoundError:
        return False, 'optimum-onnx is not installed (pip install "crossrank[export-optimum]" where transformers allows it)'
    try:
        from packaging.requirements import Requirement

        transformers_version = importlib.metadata.version("transformers")
        for line in importlib.metadata.requires("optimum-onnx") or ():
            req = Requirement(line)
            if req.name.lower() == "transformers" and (req.marker is None or req.marker.evaluate()):
                if req.specifier and not req.specifier.contains(transformers_version, prereleases=True):
                    return False, f"optimum-onnx {installed} requires transformers{req.specifier}, but {transformers_version} is installed"
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        pass  # transformers missing (reported by require_export_deps) or unreadable metadata: let the import decide
    try:
        importlib.import_module("optimum.exporters.onnx")
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
        return False, f"optimum-onnx {installed} does not import: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return True, f"optimum-onnx {installed} is installed and compatible"


def choose_exporter(requested: str = "auto") -> tuple[str, str]:
    """(exporter, why): "optimum" or "torch" for ``requested`` ("auto", "optimum" or "torch").

    "auto" takes optimum's exporter where it is usable (:func:`optimum_status`), else torch.onnx.

    Raises:
        InvalidInputError: ``requested`` is not one of :data:`EXPORTERS`.
        MissingDependencyError: "optimum" was forced but optimum-onnx is not usable (says why).
    """
    if requested not in EXPORTERS:
        raise InvalidInputError(f"exporter {requested!r} is not one of {', '.join(EXPORTERS)}")
    if requested == "torch":
        return "torch", "forced with exporter='torch'"
    usable, why = optimum_status()
    if requested == "optimum":
        if not usable:
            raise MissingDependencyError(f"exporter='optimum' was forced but {why}; use exporter='auto' or 'torch' (--exporter)")
        return "optimum", "forced with exporter='optimum'"
    if usable:
        return "optimum", why
    return "torch", why


def exporter_version(exporter: str) -> str | None:
    """The version of the distribution that provides ``exporter`` (optimum-onnx, or torch for torch.onnx)."""
    try:
        return importlib.metadata.version(_EXPORTER_DIST[exporter])
    except importlib.metadata.PackageNotFoundError:
        return None


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
