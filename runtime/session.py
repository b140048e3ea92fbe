"""One onnxruntime session per Reranker: provider and variant choice, options, input checks, runs.

Provider choice (``provider=``):

* ``"cpu"``  - CPUExecutionProvider.
* ``"cuda"`` - CUDAExecutionProvider, or :class:`~crossrank.errors.ProviderError` when the installed
  onnxruntime has none (``pip install "crossrank[gpu]"``) or the session could not get it.
* ``"auto"`` - CUDA when onnxruntime offers it and the session really gets it, else CPU, saying so
  in the log.

Option names (``provider``, ``variant``, ``graph_optimization``) follow :mod:`crossrank.choices`:
any case, surrounding whitespace ignored (``"CPU"``, ``" Auto "``, ``"INT8"``).

Variant choice (``variant="auto"``): ``int8`` on CPU; ``fp16``, else ``optimized``, else ``fp32`` on
CUDA; on either, the first of those the folder has when the preferred one is missing.

On CUDA, batches go through I/O binding: each input is copied to the device once, the logits are
read back once. onnxruntime's ``InferenceSession.run`` is thread-safe, so one session serves every
thread; all per-call state (feeds, bindings) is local to the call.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .choices import canonical_choice, normalize
from .errors import InferenceError, InvalidInputError, ModelFolderError, ProviderError, VariantNotFoundError
from .manifest import MANIFEST_NAME, Manifest

__all__ = [
    "PROVIDERS",
    "GRAPH_OPTIMIZATION_LEVELS",
    "SessionOptions",
    "OnnxSession",
    "available_providers",
    "resolve_provider",
    "choose_variant",
]

log = logging.getLogger("crossrank.session")

PROVIDERS = ("auto", "cpu", "cuda")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
_ORT_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_GPU_HINT = 'install the GPU build with `pip install "crossrank[gpu]"` (onnxruntime-gpu, which replaces onnxruntime)'
# Variant preference per provider for variant="auto".
AUTO_VARIANTS = {"cpu": ("int8", "optimized", "fp32"), "cuda": ("fp16", "optimized", "fp32")}
_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32", "tensor(float16)": "float16"}


def _ort() -> Any:
    import onnxruntime  # noqa: PLC0415 - imported on first load, not on `import crossrank`

    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers the installed onnxruntime offers, e.g. ``["CPUExecutionProvider"]``."""
    return list(_ort().get_available_providers())


def resolve_provider(provider: str) -> str:
    """``"auto"``/``"cpu"``/``"cuda"`` (any case) -> the provider to try first (``"cpu"`` or ``"cuda"``)."""
    provider = canonical_choice(provider, PROVIDERS, what="provider")
    has_cuda = _ORT_PROVIDER["cuda"] in available_providers()
    if provider == "cuda" and not has_cuda:
        raise ProviderError(
            "provider='cuda' was asked for but this onnxruntime has no CUDAExecutionProvider "
            f"(it offers {', '.join(available_providers())}); {_GPU_HINT}"
        )
    if provider == "auto":
        if not has_cuda:  # the plain CPU build: nothing to fall back from
            log.debug("provider auto: this onnxruntime has no CUDAExecutionProvider, using the CPU")
        return "cuda" if has_cuda else "cpu"
    return provider


def choose_variant(manifest: Manifest, variant: str, provider: str) -> str:
    """The variant name to load: the folder's variant that ``variant`` names (any case, surrounding
    whitespace ignored), or the auto choice for ``"auto"``."""
    have = list(manifest.variants)
    if not isinstance(variant, str):
        raise InvalidInputError(f"variant must be a string such as 'auto' or one of {have}; got {variant!r}")
    key = normalize(variant)
    if key != "auto":
        for name in have:
            if normalize(name) == key:
                return name
        hint = f" (re-export with --{key} to add it)" if key in ("int8", "fp16") else ""
        raise VariantNotFoundError(f"variant {variant!r} is not in this model folder; it has {', '.join(have)} (any case){hint}")
    for name in AUTO_VARIANTS[provider]:
        if name in manifest.variants:
            return name
    # A folder with only unusual variant names: take the first one meant for this provider.
    for name, spec in manifest.variants.items():
        if provider in spec.providers:
            return name
    return have[0]


@dataclass(frozen=True)
class SessionOptions:
    """onnxruntime settings of a Reranker's session (see :meth:`crossrank.Reranker.load`)."""

    threads: int | None = None
    graph_optimization: str = "all"
    spinning: bool = True
    memory_arena: bool = True
    device_id: int = 0
    cache_dir: Path | None = None  # optimized-graph cache (CPU only); None = off

    def __post_init__(self) -> None:
        # One spelling rule (crossrank.choices): "ALL", " basic " name the canonical level.
        if isinstance(self.graph_optimization, str):
            key = normalize(self.graph_optimization)
            if key in GRAPH_OPTIMIZATION_LEVELS:
                object.__setattr__(self, "graph_optimization", key)

    def check(self) -> None:
        t = self.threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise InvalidInputError(f"threads must be None (onnxruntime's default: one per physical core) or an int >= 1; got {t!r}")
        canonical_choice(self.graph_optimization, GRAPH_OPTIMIZATION_LEVELS, what="graph_optimization")
        for name in ("spinning", "memory_arena"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be True or False; got {getattr(self, name)!r}")
        d = self.device_id
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise InvalidInputError(f"device_id must be an int >= 0; got {d!r}")

    def to_ort(self, *, graph_optimization: str | None = None) -> Any:
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization or self.graph_optimization]
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_cpu_mem_arena = self.memory_arena
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        so.log_severity_level = 3  # errors only: ORT's own warnings are not the user's business
        return so


class OnnxSession:
    """An onnxruntime InferenceSession over one variant file, with its inputs checked once."""

    def __init__(
        self,
        model_path: Path,
        *,
        manifest: Manifest,
        sha256: str,
        provider: str,
        options: SessionOptions,
        strict_provider: bool,
    ) -> None:
        ort = _ort()
        self.model_path = Path(model_path)
        self.cached_graph: Path | None = None  # the optimized graph this session was started from, if any
        self.data_files = _data_files(self.model_path, manifest)
        if provider == "cuda":
            providers: list[Any] = [(_ORT_PROVIDER["cuda"], {"device_id": options.device_id}), _ORT_PROVIDER["cpu"]]
        else:
            providers = [_ORT_PROVIDER["cpu"]]
        try:
            sess = None
            if provider == "cpu" and options.cache_dir is not None and options.graph_optimization != "disable":
                sess = self._start_cached(ort, sha256, options, providers)
            if sess is None:
                sess = ort.InferenceSession(str(self.model_path), sess_options=options.to_ort(), providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
            if provider == "cuda" and not strict_provider:
                raise _FellBack(f"the CUDA session failed to start: {err}") from err
            if provider == "cuda" and "CUDA" in str(err):
                raise ProviderError(f"the CUDA execution provider failed to start: {err}; {_GPU_HINT}") from err
            raise ModelFolderError(
                f"{self.model_path}: onnxruntime cannot load this model file ({type(err).__name__}: {err}); "
                "the file is corrupt or not an ONNX model. Re-export the model.",
                path=self.model_path,
            ) from err
        granted = list(sess.get_providers())
        if provider == "cuda" and _ORT_PROVIDER["cuda"] not in granted:
            if strict_provider:
                raise ProviderError(
                    f"onnxruntime did not grant CUDAExecutionProvider for {self.model_path.name} (granted: {', '.join(granted)}); "
                    f"check the CUDA/cuDNN libraries and the GPU, or {_GPU_HINT}"
                )
            raise _FellBack(f"onnxruntime granted only {', '.join(granted)}")
        self.provider = provider
        self.providers = granted
        self._sess = sess
        self._device_id = options.device_id
        self._check_io(manifest)

    def _start_cached(self, ort: Any, sha256: str, options: SessionOptions, providers: list[Any]) -> Any:
        """A CPU session from the cached optimized graph, or from the model while caching its
        optimized graph; None when the cache cannot be used (the caller starts normally)."""
        from . import graph_cache  # noqa: PLC0415

        assert options.cache_dir is not None
        entry = graph_cache.cache_entry(
            options.cache_dir,
            self.model_path,
            sha256=sha256,
            level=options.graph_optimization,
            ort_version=ort.__version__,
            data_files=self.data_files,
        )
        if entry is None:
            return None
        if entry.is_file():
            try:
                sess = ort.InferenceSession(str(entry), sess_options=options.to_ort(graph_optimization="disable"), providers=providers)
                self.cached_graph = entry
                return sess
            except Exception as err:  # a damaged entry: drop it and start from the model
                log.debug("ignoring the cached graph %s: %s", entry, err)
                graph_cache.discard(entry)
        tmp = graph_cache.store_path(entry)
        if tmp is None:
            return None
        so = options.to_ort()
        so.optimized_model_filepath = str(tmp)
        side = tmp.with_name(graph_cache.data_file_for(tmp)) if self.data_files else None
        if side is not None:  # a graph over 2 GB: its optimized copy needs external data too
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", side.name)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            sess = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception:
            graph_cache.discard(tmp)
            if side is not None:
                graph_cache.discard(side)
            raise
        graph_cache.commit(tmp, entry)
        return sess

    def _check_io(self, manifest: Manifest) -> None:
        where = f"{self.model_path.name} vs {MANIFEST_NAME}"
        graph_inputs = {i.name: _ORT_DTYPES.get(i.type, i.type) for i in self._sess.get_inputs()}
        declared = {i.name: i.dtype for i in manifest.inputs}
        if graph_inputs != declared:
            raise ModelFolderError(
                f"{self.model_path}: the graph's inputs {graph_inputs} do not match the manifest's {declared} ({where}); "
                "the folder mixes files from different exports. Re-export the model.",
                path=self.model_path,
            )
        outputs = {o.name: o for o in self._sess.get_outputs()}
        out = outputs.get(manifest.output.name)
        if out is None:
            raise ModelFolderError(
                f"{self.model_path}: the graph has no output {manifest.output.name!r} (it has {sorted(outputs)}; {where})",
                path=self.model_path,
            )
        if out.type not in ("tensor(float)", "tensor(float16)"):
            raise ModelFolderError(f"{self.model_path}: output {out.name!r} has type {out.type}, expected float", path=self.model_path)
        last = out.shape[-1] if out.shape else None
        if isinstance(last, int) and last != manifest.num_labels:
            raise ModelFolderError(
                f"{self.model_path}: output {out.name!r} has {last} labels but the manifest says num_labels={manifest.num_labels} ({where})",
                path=self.model_path,
            )
        # Feed exactly the declared inputs, in the manifest's order, in the declared dtypes (cached once).
        self.input_names: tuple[str, ...] = tuple(i.name for i in manifest.inputs)
        self.input_dtypes: tuple[np.dtype, ...] = tuple(np.dtype(i.dtype) for i in manifest.inputs)
        self.output_name = out.name
        self.num_labels = manifest.num_labels

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch; return float32 logits of shape (batch, num_labels)."""
        rows = len(next(iter(feeds.values())))
        try:
            if self.provider == "cuda":
                binding = self._sess.io_binding()
                for name, arr in feeds.items():
                    binding.bind_cpu_input(name, arr)  # one host->device copy per input
                binding.bind_output(self.output_name, "cuda", self._device_id)
                self._sess.run_with_iobinding(binding)
                out = binding.copy_outputs_to_cpu()[0]  # one device->host read
            else:
                out = self._sess.run([self.output_name], dict(feeds))[0]
        except Exception as err:  # onnxruntime's Fail / RuntimeException / InvalidArgument ...
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise InferenceError(f"onnxruntime failed on a batch of shape {shapes} with {self.model_path.name}: {err}") from err
        out = np.asarray(out)
        if out.ndim == 1:
            out = out[:, None]
        if out.shape != (rows, self.num_labels):
            raise InferenceError(
                f"{self.model_path.name} returned logits of shape {out.shape}; expected ({rows}, {self.num_labels})"
            )
        return out.astype(np.float32, copy=False)


def _data_files(model_path: Path, manifest: Manifest) -> tuple[Path, ...]:
    """The external data files the manifest lists for ``model_path``, each checked to exist."""
    spec = next((v for v in manifest.variants.values() if v.file == model_path.name), None)
    files = tuple(model_path.parent / d.file for d in (spec.data_files if spec is not None else ()))
    for path in files:
        if not path.is_file():
            raise ModelFolderError(
                f"{path}: file named in {MANIFEST_NAME} is missing ({model_path.name} keeps its weights in it); "
                "copy the whole model folder, or re-export the model",
                path=path,
            )
    return files


class _FellBack(Exception):
    """Internal: with provider="auto", the CUDA session could not be had; the caller retries on CPU."""
